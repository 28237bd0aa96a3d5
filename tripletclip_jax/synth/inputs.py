"""Inputs of the negatives tool: JSONL / CSV / TSV tables, webdataset tars, or our own shards.

Every reader yields one entry per input position, in input order: (where, item) with item
{'key', 'caption', 'image': bytes}, or (where, reason) for an input that cannot be used (a bad line,
a missing field, an image that does not decode). Positions, not readable items, decide which chunk a
key lands in, so an input that becomes readable between runs never moves another key.
"""

import csv
import io
import json
import os

from tripletclip_jax import fileio
from tripletclip_jax.data import image_ops, records

IMAGE_COLUMNS = ("image", "image_path", "filepath", "path", "url_local")
WDS_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "image")
WDS_TEXT_EXTS = ("txt", "caption")


def _table_rows(path: str):
  with (
    fileio.open(path, "rb") as raw,
    io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="") as f,
  ):
    if path.endswith(".jsonl"):  # streamed, local or gs://
      for n, line in enumerate(f, 1):
        if line.strip():
          try:
            row = json.loads(line)
          except json.JSONDecodeError as e:
            row = f"bad JSON ({e.msg})"
          yield (
            n,
            row if isinstance(row, (dict, str)) else f"not a JSON object ({type(row).__name__})",
          )
      return
    delim = "\t" if path.endswith(".tsv") else ","
    for n, row in enumerate(csv.DictReader(f, delimiter=delim), 2):
      yield n, row


def _checked(key, caption, image: bytes, what: str):
  """The item, or why it cannot be used: an image that does not decode never reaches a shard."""
  try:
    image_ops.decode(image)
  except Exception as e:  # noqa: BLE001 - PIL raises many types for bad images
    return f"{what} is not a decodable image ({type(e).__name__})"
  return {"key": str(key), "caption": caption.strip(), "image": image}


def read_table(path: str):
  """[(where, item or reason)] from JSONL / CSV / TSV with key, caption and an image path column.

  A relative image path is relative to the table's folder (local or gs://); an absolute one or a URL
  is used as it is.
  """
  base = os.path.dirname(fileio.absolute(path))
  for n, row in _table_rows(path):
    where = f"{os.path.basename(path)}:{n}"
    if isinstance(row, str):
      yield where, row
      continue
    col = next((c for c in IMAGE_COLUMNS if isinstance(row.get(c), str) and row[c]), None)
    caption = row.get("caption")
    if not row.get("key") or not isinstance(caption, str) or not caption.strip() or col is None:
      yield where, f"needs key, caption and one of {IMAGE_COLUMNS}"
      continue
    image_path = (
      row[col]
      if os.path.isabs(row[col]) or fileio.is_remote(row[col])
      else fileio.join(base, row[col])
    )
    try:
      image = fileio.read_bytes(image_path)
    except OSError as e:
      yield where, f"unreadable image {image_path}: {e.strerror or e}"
      continue
    yield where, _checked(row["key"], caption, image, image_path)


def read_wds(path: str):
  """[(where, item or reason)] from an img2dataset-style tar: KEY.jpg + KEY.txt (+ KEY.json)."""
  from tripletclip_jax.data.wds import iter_samples

  for key, sample in iter_samples(path):
    where = f"{os.path.basename(path)}:{key}"
    image = next((sample[e] for e in WDS_IMAGE_EXTS if e in sample), None)
    text = next((sample[e] for e in WDS_TEXT_EXTS if e in sample), None)
    if image is None or text is None or not text.strip():
      yield where, "needs an image and a caption member"
      continue
    yield (
      where,
      _checked(os.path.basename(key), text.decode("utf-8", "replace"), image, "the image member"),
    )


def read_shards(pattern: str):
  """[(where, item or reason)] from our shards, one entry per indexed record (a bad one is skipped
  alone)."""
  for shard in records.resolve_shards(pattern):
    reader = records.Reader(shard)
    try:
      for r, (offset, length) in enumerate(records.load_index(shard)):
        where = f"{os.path.basename(shard)}:{r}"
        try:
          ex = records.decode_example(
            records.read_at(reader, int(offset), shard, length=int(length))
          )
        except Exception as e:  # noqa: BLE001 - RecordError, or a payload that does not parse
          yield where, str(e)
          continue
        problem = records.check_example(ex)
        if problem or not all(isinstance(ex.get(f), bytes) for f in ("key", "caption", "image")):
          yield where, problem or "needs key, caption and image"
          continue
        yield where, _checked(ex["key"].decode(), ex["caption"].decode(), ex["image"], "the image")
    finally:
      reader.close()


def read_inputs(spec: str) -> list:
  """[(where, item or reason)] over a comma-separated list of sources, in order. Keys must be
  unique."""
  entries = []
  for part in [p.strip() for p in spec.split(",") if p.strip()]:
    if not any(ch in part for ch in "*?[") and not fileio.exists(part):
      raise FileNotFoundError(
        f"Input {part!r} does not exist: pass a .jsonl/.csv/.tsv table, .tar shards or our shards."
      )
    if part.endswith((".jsonl", ".csv", ".tsv")):
      entries += read_table(part)
    elif part.endswith(".tar"):
      entries += read_wds(part)
    else:
      entries += read_shards(part)
  seen = set()
  for where, it in entries:
    if isinstance(it, dict):
      if it["key"] in seen:
        raise ValueError(
          f"Duplicate key {it['key']!r} in the input ({where}): keys must be unique."
        )
      seen.add(it["key"])
  return entries
