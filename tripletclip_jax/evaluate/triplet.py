"""TripletData as a test set (the paper's Table 9): text, image and group scores over (x, y, x', y')."""

import numpy as np

from tripletclip_jax.data import pipeline, records
from tripletclip_jax.evaluate import winoground


def evaluate(model, pattern: str, batch_size: int = 64) -> dict:
  """Held-out records in our shard format -> scores (%); bad records are skipped and counted."""
  ds = pipeline.make_dataset(pattern, batch_size=batch_size, image_size=model.image_size,
                             context_length=model.config.text.context_length, train=False,
                             process_index=0, process_count=1, max_bad_fraction=1.0)
  sims, bad = [], 0
  for b in ds:
    x, xn = model.encode_preprocessed(b["image"]), model.encode_preprocessed(b["neg_image"])
    y, yn = model.encode_token_ids(b["text"]), model.encode_token_ids(b["neg_text"])
    img, txt = np.stack([x, xn], 1), np.stack([y, yn], 1)  # [N, 2, D]: (x, y) and (x', y') pairs
    sims.append(np.einsum("nid,ncd->nic", img, txt))
    bad += int(b["bad_counts"].sum())
  if not sims:
    raise ValueError(f"No readable records in {pattern!r} ({len(records.resolve_shards(pattern))} shards).")
  return dict(winoground.scores(np.concatenate(sims)), skipped_bad_records=bad)
