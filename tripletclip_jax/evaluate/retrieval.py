"""Image-text retrieval R@1/5/10 on a Karpathy split (COCO 5k test, Flickr30k 1k test).

The split file is Karpathy's `dataset_coco.json` / `dataset_flickr30k.json`:
{"images": [{"filename", "filepath"?, "split", "sentences": [{"raw"}]}]}.
"""

import json

import numpy as np

from tripletclip_jax import fileio
from tripletclip_jax.data import image_ops


def load(split_json: str, image_dir: str, split: str = "test"):
  if not fileio.exists(split_json):
    raise FileNotFoundError(f"Karpathy split file {split_json} is missing.")
  with fileio.open(split_json) as f:
    entries = [e for e in json.load(f)["images"] if e.get("split") == split]
  if not entries:
    raise ValueError(f"{split_json} has no images in split {split!r}.")
  images, captions, owner = [], [], []
  missing = []  # absent or unreadable: skipped and counted
  paths = [fileio.join(image_dir, e.get("filepath", ""), e["filename"]) for e in entries]
  for e, (image, why) in zip(entries, image_ops.try_load_all(paths)):
    if why:
      missing.append(e["filename"])
      continue
    images.append(image)
    for s in e["sentences"]:
      captions.append(s["raw"])
      owner.append(len(images) - 1)
  if not images:
    raise FileNotFoundError(
      f"None of the {len(entries)} images is readable under {image_dir} (first: {missing[0]})."
    )
  return images, captions, np.asarray(owner), missing


def recall(img: np.ndarray, txt: np.ndarray, owner: np.ndarray, ks=(1, 5, 10)) -> dict:
  """img [I, D], txt [T, D], owner [T] (image index of each caption) -> R@k (%) both ways.

  The rank of a match is how many non-matching items score at least as high: ties count against it.
  """
  sim = img @ txt.T
  own = owner[None, :] == np.arange(len(img))[:, None]  # [I, T]
  best_own = np.where(own, sim, -np.inf).max(axis=1)  # image -> its best caption
  rank_i2t = np.sum(~own & (sim >= best_own[:, None]), axis=1)
  own_score = sim[owner, np.arange(len(txt))]  # caption -> its image
  rank_t2i = np.sum(~own & (sim >= own_score[None, :]), axis=0)
  out = {}
  for k in ks:
    out[f"i2t_R@{k}"] = 100.0 * float(np.mean(rank_i2t < k))
    out[f"t2i_R@{k}"] = 100.0 * float(np.mean(rank_t2i < k))
  return out


def evaluate(model, split_json: str, image_dir: str, split: str = "test") -> dict:
  images, captions, owner, missing = load(split_json, image_dir, split)
  out = recall(model.encode_images(images), model.encode_texts(captions), owner)
  out.update(n_images=len(images), n_captions=len(captions), skipped_missing_images=len(missing))
  return out
