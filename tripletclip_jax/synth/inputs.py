"""Inputs of the negatives tool: JSONL / CSV / TSV tables, webdataset tars, or our own shards.

Every reader yields items {'key', 'caption', 'image': bytes}; a bad line or an
unreadable image is skipped with a reason, never a crash.
"""

import csv
import json
import os

from tripletclip_jax.data import records

IMAGE_COLUMNS = ("image", "image_path", "filepath", "path", "url_local")
WDS_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "image")
WDS_TEXT_EXTS = ("txt", "caption")


def _table_rows(path: str):
  if path.endswith(".jsonl"):
    with open(path, encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        if line.strip():
          try:
            yield n, json.loads(line)
          except json.JSONDecodeError as e:
            yield n, ValueError(f"bad JSON ({e.msg})")
    return
  delim = "\t" if path.endswith(".tsv") else ","
  with open(path, newline="", encoding="utf-8") as f:
    for n, row in enumerate(csv.DictReader(f, delimiter=delim), 2):
      yield n, row


def read_table(path: str):
  """(items, skipped) from JSONL / CSV / TSV with key, caption and an image path column."""
  base = os.path.dirname(os.path.abspath(path))
  items, skipped = [], []
  for n, row in _table_rows(path):
    where = f"{os.path.basename(path)}:{n}"
    if isinstance(row, Exception):
      skipped.append((where, str(row)))
      continue
    col = next((c for c in IMAGE_COLUMNS if row.get(c)), None)
    if not row.get("key") or not (row.get("caption") or "").strip() or col is None:
      skipped.append((where, f"needs key, caption and one of {IMAGE_COLUMNS}"))
      continue
    image_path = row[col] if os.path.isabs(row[col]) else os.path.join(base, row[col])
    try:
      with open(image_path, "rb") as f:
        image = f.read()
    except OSError as e:
      skipped.append((where, f"unreadable image {image_path}: {e.strerror}"))
      continue
    items.append({"key": str(row["key"]), "caption": row["caption"].strip(), "image": image})
  return items, skipped


def read_wds(path: str):
  """(items, skipped) from an img2dataset-style tar: KEY.jpg + KEY.txt (+ KEY.json)."""
  from tripletclip_jax.data.wds import iter_samples
  items, skipped = [], []
  for key, sample in iter_samples(path):
    image = next((sample[e] for e in WDS_IMAGE_EXTS if e in sample), None)
    text = next((sample[e] for e in WDS_TEXT_EXTS if e in sample), None)
    if image is None or text is None or not text.strip():
      skipped.append((f"{os.path.basename(path)}:{key}", "needs an image and a caption member"))
      continue
    items.append({"key": os.path.basename(key), "caption": text.decode("utf-8").strip(), "image": image})
  return items, skipped


def read_shards(pattern: str):
  items, skipped = [], []
  for shard in records.resolve_shards(pattern):
    try:
      for payload in records.iter_records(shard):
        ex = records.decode_example(payload)
        items.append({"key": ex["key"].decode(), "caption": ex["caption"].decode(), "image": ex["image"]})
    except records.RecordError as e:
      skipped.append((os.path.basename(shard), str(e)))
  return items, skipped


def read_inputs(spec: str):
  """Dispatch by extension; a comma-separated list mixes sources. Keys must be unique."""
  items, skipped = [], []
  for part in [p.strip() for p in spec.split(",") if p.strip()]:
    if not os.path.exists(part) and not any(ch in part for ch in "*?["):
      raise FileNotFoundError(f"Input {part!r} does not exist: pass a .jsonl/.csv/.tsv table, .tar shards or our shards.")
    if part.endswith((".jsonl", ".csv", ".tsv")):
      got = read_table(part)
    elif part.endswith(".tar"):
      got = read_wds(part)
    else:
      got = read_shards(part)
    items += got[0]
    skipped += got[1]
  seen = set()
  for it in items:
    if it["key"] in seen:
      raise ValueError(f"Duplicate key {it['key']!r} in the input: keys must be unique.")
    seen.add(it["key"])
  return items, skipped
