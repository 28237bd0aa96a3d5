"""SugarCrepe: is s(image, caption) > s(image, negative_caption), strictly?

Reads the real files: one JSON per subset, an object keyed by string indices
(with gaps), values {filename, caption, negative_caption}; images from
`image_dir` (COCO val2017 for the real benchmark). Ties count as wrong.
"""

import json

import numpy as np

from tripletclip_jax import fileio
from tripletclip_jax.data import image_ops
from tripletclip_jax.evaluate import multihost

SUBSETS = (
  "add_att",
  "add_obj",
  "replace_att",
  "replace_obj",
  "replace_rel",
  "swap_att",
  "swap_obj",
)


def load_subset(sugarcrepe_dir: str, subset: str) -> list[dict]:
  path = fileio.join(sugarcrepe_dir, f"{subset}.json")
  if not fileio.exists(path):
    raise FileNotFoundError(
      f"SugarCrepe file {path} is missing: --sugarcrepe_dir must hold {subset}.json."
    )
  with fileio.open(path) as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(
        f"{path}: malformed JSON at line {e.lineno}, column {e.colno} ({e.msg})."
      ) from None
  if not isinstance(data, dict):
    raise ValueError(
      f"{path}: expected an object keyed by index, got a JSON {type(data).__name__}."
    )
  entries = list(data.values())  # keys are string indices with gaps: use the values
  for e in entries:
    missing = (
      {"filename", "caption", "negative_caption"} - set(e)
      if isinstance(e, dict)
      else {"(not an object)"}
    )
    if missing:
      raise ValueError(f"{path}: entry {str(e):.200} lacks {sorted(missing)}.")
  return entries


def _text_ok(t) -> bool:
  return isinstance(t, str) and bool(t.strip())


def score_subset(model, entries: list[dict], image_dir: str) -> dict:
  """Accuracy (%) over one subset. Entries with a missing or unreadable image, or a null or empty
  caption, are counted and skipped, not scored. Each process scores its own slice of the entries."""
  mine = multihost.local_slice(entries)
  ok = [
    e
    for e in mine
    if _text_ok(e["caption"]) and _text_ok(e["negative_caption"]) and isinstance(e["filename"], str)
  ]
  images, kept, missing, unreadable, bad = [], [], [], 0, len(mine) - len(ok)
  for e, (image, why) in zip(
    ok, image_ops.try_load_all([fileio.join(image_dir, e["filename"]) for e in ok])
  ):
    if why == "missing":
      missing.append(e["filename"])
    elif why == "unreadable":
      unreadable += 1
    else:
      images.append(image)
      kept.append(e)
  # Every process encodes, even an empty slice: the encoders are collective on a mesh.
  img = model.encode_images(images)
  pos = model.encode_texts([e["caption"] for e in kept])
  neg = model.encode_texts([e["negative_caption"] for e in kept])
  correct = np.sum(img * pos, axis=1) > np.sum(img * neg, axis=1)
  n = multihost.summed(
    {
      "correct": int(correct.sum()),
      "n": len(kept),
      "missing_images": len(missing),
      "unreadable_images": unreadable,
      "bad_entries": bad,
    }
  )
  if not n["n"]:
    raise FileNotFoundError(
      f"None of the {len(entries)} entries has a readable image under {image_dir} and two "
      f"captions ({n['missing_images']} images missing, {n['unreadable_images']} unreadable, "
      f"{n['bad_entries']} bad entries; first: {entries[0]['filename'] if entries else '-'}); "
      "point to COCO val2017 with launch/eval.py --coco_image_dir or "
      "the evaluator's image_dir option (--config.evals.NAME.image_dir)."
    )
  return {"accuracy": 100.0 * n.pop("correct") / n["n"], **n}


def evaluate(model, sugarcrepe_dir: str, image_dir: str | None = None, subsets=SUBSETS) -> dict:
  """{subset: accuracy %, ..., 'mean': mean of the subsets, 'n': entries scored,
  'skipped_{missing_images, unreadable_images,bad_entries}': counts}."""
  image_dir = image_dir or fileio.join(sugarcrepe_dir, "images")
  out, skipped, n = {}, {"missing_images": 0, "unreadable_images": 0, "bad_entries": 0}, 0
  for s in subsets:
    r = score_subset(model, load_subset(sugarcrepe_dir, s), image_dir)
    out[s] = r["accuracy"]
    n += r["n"]
    for k in skipped:
      skipped[k] += r[k]
  out["mean"] = float(np.mean([out[s] for s in subsets]))
  out["n"] = n  # summed over processes: each scored its own slice
  out.update({f"skipped_{k}": v for k, v in skipped.items()})
  return out
