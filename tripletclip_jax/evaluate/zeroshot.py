"""Zero-shot classification with CLIP's class names and its 80 prompt templates.

Datasets: any image folder with one subfolder per class, or ImageNet-1k /
CIFAR-10 / CIFAR-100 through tensorflow-datasets when their data is present
locally (`tfds:imagenet2012`, `tfds:cifar10`, `tfds:cifar100`).
"""

import json
import os

import numpy as np

from tripletclip_jax import fileio
from tripletclip_jax.data import image_ops

_META = os.path.join(os.path.dirname(__file__), "imagenet_metadata.json")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def imagenet_metadata() -> tuple[list[str], list[str]]:
  """(CLIP's 1000 ImageNet class names, its 80 templates with '{}' for the name)."""
  with open(_META) as f:
    meta = json.load(f)
  return meta["imagenet_classnames"], meta["templates"]


def classifier(model, classnames, templates) -> np.ndarray:
  """[C, D]: per class, the normalised mean of the normalised prompt embeddings."""
  emb = model.encode_texts([t.format(c) for c in classnames for t in templates])
  emb = emb.reshape(len(classnames), len(templates), -1).mean(1)
  return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def accuracy(img: np.ndarray, weights: np.ndarray, labels: np.ndarray) -> dict:
  logits = img @ weights.T
  top5 = np.argsort(-logits, axis=1)[:, :5]
  return {
    "top1": 100.0 * float(np.mean(top5[:, 0] == labels)),
    "top5": 100.0 * float(np.mean(np.any(top5 == labels[:, None], axis=1))),
    "n": int(len(labels)),
  }


def load_folder(root: str):
  """(PIL images, labels, class names) from ROOT/CLASS/*.jpg; unreadable images are skipped and
  counted."""
  if not fileio.isdir(root):
    raise FileNotFoundError(
      f"Zero-shot image folder {root} is missing: it needs one subfolder per class."
    )
  classes = sorted(d for d in fileio.listdir(root) if fileio.isdir(fileio.join(root, d)))
  if not classes:
    raise FileNotFoundError(f"{root} has no class subfolders.")
  files = [
    (i, fileio.join(root, c, name))
    for i, c in enumerate(classes)
    for name in sorted(fileio.listdir(fileio.join(root, c)))
    if name.lower().endswith(IMAGE_EXTS)
  ]
  images, labels, skipped = [], [], 0
  for (i, _), (image, why) in zip(files, image_ops.try_load_all([path for _, path in files])):
    if why:
      skipped += 1
    else:
      images.append(image)
      labels.append(i)
  return images, np.asarray(labels), [c.replace("_", " ") for c in classes], skipped


def load_tfds(name: str, data_dir: str | None, split: str | None = None):
  """(uint8 images, labels, class names) from a locally prepared TFDS dataset; never downloads."""
  import tensorflow_datasets as tfds

  split = split or ("validation" if name == "imagenet2012" else "test")
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    raise FileNotFoundError(
      f"TFDS dataset {name} is not prepared under {builder.data_dir}; prepare it first "
      "(tfds build), or pass an image folder with a subfolder per class (launch/eval.py --zeroshot DIR)."
    )
  source = tfds.data_source(name, split=split, data_dir=data_dir)
  images = [source[i]["image"] for i in range(len(source))]
  labels = np.asarray([source[i]["label"] for i in range(len(source))])
  names = builder.info.features["label"].names
  if name == "imagenet2012":
    names = imagenet_metadata()[0]  # CLIP's curated names, in the same synset order
  return images, labels, [n.replace("_", " ") for n in names]


def evaluate(model, dataset: str, data_dir: str | None = None, templates=None) -> dict:
  """`dataset` is an image folder or 'tfds:NAME'. Returns top-1 / top-5 (%)."""
  skipped = 0
  if dataset.startswith("tfds:"):
    images, labels, names = load_tfds(dataset[5:], data_dir)
  else:
    images, labels, names, skipped = load_folder(dataset)
  templates = templates or imagenet_metadata()[1]
  out = accuracy(model.encode_images(images), classifier(model, names, templates), labels)
  out["skipped_unreadable_images"] = skipped
  return out
