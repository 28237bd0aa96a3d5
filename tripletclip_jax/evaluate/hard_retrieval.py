"""Retrieval with the hard negatives in the gallery, on held-out TripletData.

Plain retrieval asks whether an image finds its caption among the other captions. Here the gallery
also holds every hard negative caption (and, text to image, every hard negative image): x_i must
rank y_i first among Y ∪ Y', and y_i must rank x_i first among X ∪ X'. `*_hardneg_top1` is how often
the winner is the item's own hard negative, the specific mistake TripletCLIP trains against.
"""

import numpy as np

from tripletclip_jax.evaluate import multihost, triplet


def evaluate(model, pattern: str, batch_size: int = 64) -> dict:
  """Held-out TripletData shards -> i2t_R@1, t2i_R@1, i2t_hardneg_top1, t2i_hardneg_top1 (%), n."""
  parts = list(triplet.encoded(model, pattern, batch_size))
  # Every process encodes its slice; the ranking needs the whole gallery, so every process gathers
  # it.
  x, xn, y, yn = (
    multihost.gathered(np.concatenate([getattr(p, f) for p in parts]))
    for f in ("image", "neg_image", "text", "neg_text")
  )
  bad = multihost.summed({"bad": sum(p.bad for p in parts)})["bad"]
  n = len(x)
  if not n:
    raise triplet.no_records(pattern)
  idx = np.arange(n)
  i2t = np.argmax(x @ np.concatenate([y, yn]).T, axis=1)  # [n] winner among 2n captions
  t2i = np.argmax(y @ np.concatenate([x, xn]).T, axis=1)
  pct = lambda hit: 100.0 * float(np.mean(hit))
  return {
    "i2t_R@1": pct(i2t == idx),
    "t2i_R@1": pct(t2i == idx),
    "i2t_hardneg_top1": pct(i2t == idx + n),
    "t2i_hardneg_top1": pct(t2i == idx + n),
    "n": n,
    "skipped_bad_records": bad,
  }
