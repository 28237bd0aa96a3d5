"""SugarCrepe: is s(image, caption) > s(image, negative_caption), strictly?

Reads the real files: one JSON per subset, an object keyed by string indices
(with gaps), values {filename, caption, negative_caption}; images from
`image_dir` (COCO val2017 for the real benchmark). Ties count as wrong.
"""

import json
import os

import numpy as np
from PIL import Image

SUBSETS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")


def load_subset(sugarcrepe_dir: str, subset: str) -> list[dict]:
  path = os.path.join(sugarcrepe_dir, f"{subset}.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"SugarCrepe file {path} is missing: --sugarcrepe_dir must hold {subset}.json.")
  with open(path) as f:
    entries = list(json.load(f).values())  # keys are string indices with gaps: use the values
  for e in entries:
    missing = {"filename", "caption", "negative_caption"} - set(e)
    if missing:
      raise ValueError(f"{path}: entry {e} lacks {sorted(missing)}.")
  return entries


def score_subset(model, entries: list[dict], image_dir: str) -> dict:
  """Accuracy (%) over one subset; images that are missing are counted, not scored."""
  images, kept, missing = [], [], []
  for e in entries:
    p = os.path.join(image_dir, e["filename"])
    if not os.path.exists(p):
      missing.append(e["filename"])
      continue
    with Image.open(p) as im:
      images.append(im.convert("RGB"))
    kept.append(e)
  if not kept:
    raise FileNotFoundError(f"None of the {len(entries)} images exist under {image_dir} "
                            f"(first: {entries[0]['filename'] if entries else '-'}); pass --coco_image_dir.")
  img = model.encode_images(images)
  pos = model.encode_texts([e["caption"] for e in kept])
  neg = model.encode_texts([e["negative_caption"] for e in kept])
  correct = np.sum(img * pos, axis=1) > np.sum(img * neg, axis=1)
  return {"accuracy": 100.0 * float(np.mean(correct)), "n": len(kept), "missing_images": len(missing)}


def evaluate(model, sugarcrepe_dir: str, image_dir: str | None = None, subsets=SUBSETS) -> dict:
  """{subset: accuracy %, ..., 'mean': mean of the subsets, 'skipped_missing_images': count}."""
  image_dir = image_dir or os.path.join(sugarcrepe_dir, "images")
  out, skipped = {}, 0
  for s in subsets:
    r = score_subset(model, load_subset(sugarcrepe_dir, s), image_dir)
    out[s] = r["accuracy"]
    skipped += r["missing_images"]
  out["mean"] = float(np.mean([out[s] for s in subsets]))
  out["skipped_missing_images"] = skipped
  return out
