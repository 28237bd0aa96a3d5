"""TripletData as a test set (the paper's Table 9): text, image and group scores over (x, y, x',
y')."""

from typing import NamedTuple

import jax
import numpy as np

from tripletclip_jax.data import formats, pipeline
from tripletclip_jax.evaluate import multihost, winoground


class Encoded(NamedTuple):
  """One batch of held-out triplets, embedded: L2-normalised float32 [n, D] each."""

  image: np.ndarray  # x
  neg_image: np.ndarray  # x'
  text: np.ndarray  # y
  neg_text: np.ndarray  # y'
  bad: int  # records of this batch skipped as bad


def encoded(model, pattern: str, batch_size: int = 64):
  """Yields an `Encoded` per batch of this process's slice of the records; every process yields the
  same number of times (an empty batch when its slice has run out)."""
  ds = pipeline.make_dataset(
    pattern,
    batch_size=batch_size,
    image_size=model.image_size,
    context_length=model.config.text.context_length,
    train=False,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    max_bad_fraction=1.0,
  )
  size, length = model.image_size, model.config.text.context_length
  nothing = {
    "image": np.zeros((0, size, size, 3), np.float32),
    "text": np.zeros((0, length), np.int32),
    "bad_counts": np.zeros(1, np.int64),
  }
  nothing.update(neg_image=nothing["image"], neg_text=nothing["text"])
  batches = iter(ds)
  while True:
    b = next(batches, None)
    # Slices differ by a batch at most; the encoders are collective.
    if not multihost.any_process(b is not None):
      return
    b = nothing if b is None else b
    yield Encoded(
      model.encode_preprocessed(b["image"]),
      model.encode_preprocessed(b["neg_image"]),
      model.encode_token_ids(b["text"]),
      model.encode_token_ids(b["neg_text"]),
      int(b["bad_counts"].sum()),
    )


def no_records(pattern: str) -> ValueError:
  return ValueError(
    f"No readable records in {pattern!r} ({len(formats.resolve(pattern)[1])} files)."
  )


def evaluate(model, pattern: str, batch_size: int = 64) -> dict:
  """Held-out records in our shard format -> scores (%); bad records are skipped and counted. Each
  process scores its own slice of the records."""
  counts = {"text": 0, "image": 0, "group": 0, "n": 0, "bad": 0}
  for x, xn, y, yn, bad in encoded(model, pattern, batch_size):  # an Encoded, unpacked
    img, txt = np.stack([x, xn], 1), np.stack([y, yn], 1)  # [N, 2, D]: (x, y) and (x', y') pairs
    for k, v in winoground.score_counts(np.einsum("nid,ncd->nic", img, txt)).items():
      counts[k] += v
    counts["bad"] += bad
  counts = multihost.summed(counts)
  if not counts["n"]:
    raise no_records(pattern)
  return dict(winoground.percentages(counts), skipped_bad_records=counts["bad"])
