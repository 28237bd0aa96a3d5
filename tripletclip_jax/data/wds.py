"""Webdataset tar shards (TripletCLIP's released format) -> our record shards.

A sample is the tar members that share a key (the name before the first dot):
`.image`, `.neg_image`, `.caption`, `.neg_caption`, as in the authors'
TripletCLIP-High-Quality release. Tars are read as streams.
"""

import os
import tarfile
from typing import Iterator

from tripletclip_jax import fileio
from tripletclip_jax.data import records

MEMBERS = {
  "image": "image",
  "neg_image": "neg_image",
  "caption": "caption",
  "neg_caption": "neg_caption",
  "neg_type": "neg_type",
  "clip_score": "clip_score",
  "source": "source",
}
TEXT = ("caption", "neg_caption", "neg_type", "source")


def iter_samples(tar_path: str) -> Iterator[tuple[str, dict]]:
  """(key, {member suffix: bytes}) for each sample of a tar, streamed in order."""
  key, sample = None, {}
  with fileio.open(tar_path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
    for member in tar:
      if not member.isfile():
        continue
      base = os.path.basename(member.name)
      dot = base.find(".")
      if dot <= 0:
        continue
      k = os.path.join(os.path.dirname(member.name), base[:dot])
      if k != key and sample:
        yield key, sample
        sample = {}
      key = k
      sample[base[dot + 1 :]] = tar.extractfile(member).read()
  if sample:
    yield key, sample


def sample_to_features(key: str, sample: dict, source: str) -> dict:
  """Raises KeyError naming the missing members."""
  missing = [m for m in ("image", "neg_image", "caption", "neg_caption") if m not in sample]
  if missing:
    raise KeyError(f"sample {key!r} lacks {missing}")
  out = {"key": key, "source": source}
  for member, feature in MEMBERS.items():
    if member in sample:
      v = sample[member]
      if member == "clip_score":
        v = float(v.decode())
      elif member in TEXT:
        v = v.decode("utf-8").strip()
      out[feature] = v
  return out


def convert_tar(tar_path: str, out_path: str) -> dict:
  """One tar -> one shard (atomic; either may be in a bucket). Returns {'written', 'skipped',
  'skipped_keys'}."""
  source = os.path.basename(tar_path)
  skipped = []
  with records.ShardWriter(out_path) as w:
    for key, sample in iter_samples(tar_path):
      try:
        w.write(sample_to_features(key, sample, source))
      except (KeyError, ValueError, UnicodeDecodeError) as e:
        skipped.append(f"{key}: {e}")
  return {
    "tar": tar_path,
    "written": w.count,
    "skipped": len(skipped),
    "skipped_keys": skipped[:20],
  }
