"""Winoground: text, image and group scores over (image_0, image_1, caption_0, caption_1).

Reads the dataset as the `datasets` library saves it (`save_to_disk`, or a
folder of parquet / arrow files), or the original release: `examples.jsonl`
plus an image folder (`image_0` / `image_1` name files, with or without .png).
"""

import glob
import json
import os

import numpy as np

from tripletclip_jax import fileio
from tripletclip_jax.data import image_ops
from tripletclip_jax.evaluate import multihost


def load(path: str, image_dir: str | None = None) -> list[dict]:
  """-> [{'image_0': PIL, 'image_1': PIL, 'caption_0': str, 'caption_1': str}]."""
  if not fileio.exists(path):
    raise FileNotFoundError(
      f"Winoground data {path} is missing: pass a `datasets` folder or examples.jsonl."
    )
  if path.endswith(".jsonl"):
    image_dir = image_dir or fileio.join(os.path.dirname(path), "images")
    rows = []
    with fileio.open(path) as f:
      for i, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}: malformed JSON on line {i} ({e.msg}).") from None
        if not isinstance(rows[-1], dict) or not {"image_0", "image_1"} <= set(rows[-1]):
          raise ValueError(f"{path}: line {i} is not an object with image_0 and image_1.")

    def img(name):
      for candidate in (name, f"{name}.png", f"{name}.jpg"):
        image, why = image_ops.try_load(fileio.join(image_dir, candidate))
        if why != "missing":
          return image  # None when unreadable: the example is skipped and counted
      raise FileNotFoundError(f"Winoground image {name!r} not found in {image_dir}.")

    names = list(dict.fromkeys(r[k] for r in rows for k in ("image_0", "image_1")))
    loaded = dict(zip(names, image_ops.map_threads(img, names)))
    return [dict(r, image_0=loaded[r["image_0"]], image_1=loaded[r["image_1"]]) for r in rows]
  import datasets

  if os.path.exists(os.path.join(path, "dataset_info.json")) or os.path.exists(
    os.path.join(path, "dataset_dict.json")
  ):
    ds = datasets.load_from_disk(path)
  else:
    files = sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))
    kind = "parquet"
    if not files:
      files, kind = sorted(glob.glob(os.path.join(path, "**", "*.arrow"), recursive=True)), "arrow"
    if not files:
      raise FileNotFoundError(f"{path} holds no saved dataset, parquet or arrow files.")
    ds = datasets.load_dataset(kind, data_files=files, split="train")
  if isinstance(ds, datasets.DatasetDict):
    ds = ds["test"] if "test" in ds else next(iter(ds.values()))
  return [dict(r) for r in ds]


def score_counts(sim: np.ndarray) -> dict:
  """sim [N, 2 images, 2 captions] -> how many examples pass the text / image / group test, and
  'n'."""
  text = (sim[:, 0, 0] > sim[:, 0, 1]) & (sim[:, 1, 1] > sim[:, 1, 0])
  image = (sim[:, 0, 0] > sim[:, 1, 0]) & (sim[:, 1, 1] > sim[:, 0, 1])
  return {
    "text": int(text.sum()),
    "image": int(image.sum()),
    "group": int((text & image).sum()),
    "n": len(sim),
  }


def percentages(counts: dict) -> dict:
  """score_counts (possibly summed over processes) -> text / image / group score (%) and 'n'."""
  n = counts["n"]
  return {**{k: 100.0 * counts[k] / n for k in ("text", "image", "group")}, "n": n}


def scores(sim: np.ndarray) -> dict:
  """sim [N, 2 images, 2 captions] -> text / image / group score (%)."""
  return percentages(score_counts(sim))


def _usable(r: dict) -> bool:
  return all(r.get(k) is not None for k in ("image_0", "image_1")) and all(
    isinstance(r.get(k), str) and r[k].strip() for k in ("caption_0", "caption_1")
  )


def evaluate(model, path: str, image_dir: str | None = None) -> dict:
  """Scores (%) and 'n'; examples with an unreadable image or a null / empty caption are skipped and
  counted in 'skipped_bad_examples'. Each process scores its own slice of the examples."""
  all_rows = multihost.local_slice(load(path, image_dir))
  rows = [r for r in all_rows if _usable(r)]
  img = model.encode_images([r[k] for r in rows for k in ("image_0", "image_1")]).reshape(
    len(rows), 2, -1
  )
  txt = model.encode_texts([r[k] for r in rows for k in ("caption_0", "caption_1")]).reshape(
    len(rows), 2, -1
  )
  n = multihost.summed(
    dict(
      score_counts(np.einsum("nid,ncd->nic", img, txt)),
      skipped_bad_examples=len(all_rows) - len(rows),
    )
  )
  if not n["n"]:
    raise ValueError(
      f"None of the {n['skipped_bad_examples']} Winoground examples in {path} has two images and "
      "two captions."
    )
  return dict(percentages(n), skipped_bad_examples=n["skipped_bad_examples"])
