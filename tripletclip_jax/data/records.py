"""TripletData records: `tf.train.Example` protos in TFRecord shards, without TensorFlow.

A shard `NAME-00000-of-00064.tfrecord` has an index sidecar
`NAME-00000-of-00064.tfrecord.index.npy` (int64 [N, 2]: offset, length of each
record) for random access. Framing is TFRecord's: uint64 length, masked
CRC32C of the length, payload, masked CRC32C of the payload. The Example
message classes are built with the protobuf library from a descriptor that is
wire-identical to tensorflow/core/example/example.proto, so files are
byte-compatible with TensorFlow both ways.
"""

import io
import json
import os
import shutil
import struct
import tempfile
from typing import Iterator

import google_crc32c
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from tripletclip_jax import fileio

SCHEMA_VERSION = 1
REQUIRED = ("key", "image", "caption", "neg_image", "neg_caption")
OPTIONAL = ("neg_type", "neg_source", "source", "clip_score")
INDEX_SUFFIX = ".index.npy"
MANIFEST = "manifest.json"


class RecordError(Exception):
  """A record that cannot be read; `reason` is one of the bad-data categories."""

  def __init__(self, reason: str, message: str):
    super().__init__(message)
    self.reason = reason


def _build_example_classes():
  f = descriptor_pb2.FileDescriptorProto(
    name="tripletclip_jax/example.proto", package="tripletclip_jax", syntax="proto3"
  )
  T = descriptor_pb2.FieldDescriptorProto

  def msg(name, fields, nested=(), oneof=None):
    m = f.message_type.add(name=name)
    for n in nested:
      m.nested_type.add().CopyFrom(n)
    if oneof:
      m.oneof_decl.add(name=oneof)
    for number, (fname, ftype, label, type_name, packed) in enumerate(fields, 1):
      fd = m.field.add(name=fname, number=number, type=ftype, label=label)
      if type_name:
        fd.type_name = type_name
      if packed:
        fd.options.packed = True
      if oneof:
        fd.oneof_index = 0
    return m

  rep, opt = T.LABEL_REPEATED, T.LABEL_OPTIONAL
  msg("BytesList", [("value", T.TYPE_BYTES, rep, None, False)])
  msg("FloatList", [("value", T.TYPE_FLOAT, rep, None, True)])
  msg("Int64List", [("value", T.TYPE_INT64, rep, None, True)])
  msg(
    "Feature",
    [
      ("bytes_list", T.TYPE_MESSAGE, opt, ".tripletclip_jax.BytesList", False),
      ("float_list", T.TYPE_MESSAGE, opt, ".tripletclip_jax.FloatList", False),
      ("int64_list", T.TYPE_MESSAGE, opt, ".tripletclip_jax.Int64List", False),
    ],
    oneof="kind",
  )
  entry = descriptor_pb2.DescriptorProto(name="FeatureEntry")
  entry.field.add(name="key", number=1, type=T.TYPE_STRING, label=opt)
  entry.field.add(
    name="value", number=2, type=T.TYPE_MESSAGE, label=opt, type_name=".tripletclip_jax.Feature"
  )
  entry.options.map_entry = True
  msg(
    "Features",
    [("feature", T.TYPE_MESSAGE, rep, ".tripletclip_jax.Features.FeatureEntry", False)],
    nested=[entry],
  )
  msg("Example", [("features", T.TYPE_MESSAGE, opt, ".tripletclip_jax.Features", False)])
  pool = descriptor_pool.DescriptorPool()
  pool.Add(f)
  return message_factory.GetMessageClass(pool.FindMessageTypeByName("tripletclip_jax.Example"))


Example = _build_example_classes()


def encode_example(features: dict) -> bytes:
  """dict -> serialized Example. bytes/str -> bytes_list, float -> float_list, int -> int64_list."""
  ex = Example()
  for name, value in features.items():
    if value is None:
      continue
    feat = ex.features.feature[name]
    values = value if isinstance(value, (list, tuple)) else [value]
    if all(isinstance(v, (bytes, str)) for v in values):
      feat.bytes_list.value.extend(v.encode("utf-8") if isinstance(v, str) else v for v in values)
    elif all(isinstance(v, (bool, int, np.integer)) for v in values):
      feat.int64_list.value.extend(int(v) for v in values)
    elif all(isinstance(v, (float, int, np.floating, np.integer)) for v in values):
      feat.float_list.value.extend(float(v) for v in values)
    else:
      raise TypeError(f"feature {name!r}: unsupported value {value!r}")
  return ex.SerializeToString(deterministic=True)


def decode_example(data: bytes) -> dict:
  """Serialized Example -> {name: bytes | float | int | list}; single values are unwrapped."""
  ex = Example.FromString(data)
  out = {}
  for name, feat in ex.features.feature.items():
    kind = feat.WhichOneof("kind")
    values = list(getattr(feat, kind).value) if kind else []
    out[name] = values[0] if len(values) == 1 else values
  return out


_BYTES_FIELDS = (
  "key",
  "image",
  "caption",
  "neg_image",
  "neg_caption",
  "neg_type",
  "neg_source",
  "source",
)
_TEXT_FIELDS = ("key", "caption", "neg_caption", "neg_type", "neg_source", "source")


def check_example(ex: dict) -> str | None:
  """None if every present field has its declared type and count, else what is wrong (naming the
  field).

  Bytes fields hold exactly one value (text ones valid UTF-8); clip_score holds one float.
  """
  for name in _BYTES_FIELDS:
    if name not in ex:
      continue
    v = ex[name]
    if not isinstance(v, bytes):
      what = f"{len(v)} values" if isinstance(v, list) else type(v).__name__
      return f"field {name!r} must be one bytes value, got {what}"
    if name in _TEXT_FIELDS:
      try:
        v.decode("utf-8")
      except UnicodeDecodeError as e:
        return f"field {name!r} is not valid UTF-8 ({e.reason} at byte {e.start})"
  if "clip_score" in ex and not isinstance(ex["clip_score"], float):
    return f"field 'clip_score' must be one float, got {ex['clip_score']!r:.40}"
  return None


def _masked_crc(data: bytes) -> int:
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(payload: bytes) -> bytes:
  """TFRecord framing of one record."""
  length = struct.pack("<Q", len(payload))
  return (
    length
    + struct.pack("<I", _masked_crc(length))
    + payload
    + struct.pack("<I", _masked_crc(payload))
  )


# index lengths: a record cut off by the end of the shard; bytes with no valid framing
TRUNCATED, LOST = (
  -1,
  -2,
)


def _header(head: bytes) -> int | None:
  """The record length in a 12-byte header, or None if the header's CRC does not match."""
  if len(head) < 12 or struct.unpack("<I", head[8:12])[0] != _masked_crc(head[:8]):
    return None
  return struct.unpack("<Q", head[:8])[0]


class Reader:
  """Positional reads of a shard: pread on a local file, ranged GETs on an object in a bucket.

  Neither shares a file offset, so threads may read one shard at once.
  """

  def __init__(self, path: str):
    self.path = path
    if fileio.is_remote(path):
      self._fs, self._fd = fileio.fsspec_fs(path), None
    else:
      self._fs, self._fd = None, os.open(path, os.O_RDONLY)

  def pread(self, n: int, offset: int) -> bytes:
    if self._fd is not None:
      return os.pread(self._fd, n, offset)
    try:
      return self._fs.cat_file(self.path, start=offset, end=offset + n)
    except (ValueError, OSError):  # a range past the end of the object: what a short pread returns
      return b""

  def close(self) -> None:
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None


def read_at(
  reader: Reader, offset: int, path: str = "", verify: bool = True, length: int | None = None
) -> bytes:
  """Reads the framed record at byte `offset` through `reader`; raises RecordError.

  `length` is the index's entry: LOST marks bytes that a scan could not frame. A known length reads
  header, payload and CRC in one request (one GET on a bucket).
  """
  if length == LOST:
    raise RecordError(
      "corrupt_framing",
      f"{path}: no valid record framing from byte {offset} (a corrupt length "
      "header); the scan resynchronised at the next valid record",
    )
  whole = reader.pread(16 + length, offset) if length is not None and length >= 0 else None
  head = whole[:12] if whole is not None else reader.pread(12, offset)
  if len(head) < 12:
    raise RecordError("truncated", f"{path}: truncated record header at byte {offset}")
  (length,) = struct.unpack("<Q", head[:8])
  if verify and struct.unpack("<I", head[8:])[0] != _masked_crc(head[:8]):
    raise RecordError("crc_mismatch", f"{path}: length CRC mismatch at byte {offset}")
  if whole is not None and len(whole) >= 16 and struct.unpack("<Q", whole[:8])[0] == length:
    body = whole[12:]
  else:
    body = reader.pread(length + 4, offset + 12)
  if len(body) < length + 4:
    raise RecordError("truncated", f"{path}: truncated record at byte {offset} (shard cut short)")
  payload = body[:length]
  if verify and struct.unpack("<I", body[length:])[0] != _masked_crc(payload):
    raise RecordError("crc_mismatch", f"{path}: data CRC mismatch at byte {offset}")
  return payload


def _resync(f, start: int, size: int) -> int:
  """The first offset after `start` where a whole, CRC-valid record begins, or `size` if none
  does."""
  block = 1 << 20
  pos = start + 1
  while pos + 16 <= size:
    f.seek(pos)
    buf = f.read(block + 12)
    for i in range(max(len(buf) - 11, 0)):
      n = struct.unpack_from("<Q", buf, i)[0]
      if pos + i + 16 + n > size or _header(buf[i : i + 12]) is None:
        continue  # the length check first: nearly every random position fails it at once
      f.seek(pos + i + 12)
      body = f.read(n + 4)
      if struct.unpack("<I", body[n:])[0] == _masked_crc(body[:n]):
        return pos + i
    pos += block
  return size


def scan(path: str, log=None) -> np.ndarray:
  """Offsets and lengths [N, 2] of the records in `path`, found by walking the framing.

  Every header's CRC is checked. A cut-off tail becomes a last row of length TRUNCATED; bytes with
  no valid framing (a corrupt length header) are skipped up to the next valid record and stand in
  the index as LOST rows, about as many as records fit in them, so that what is lost is counted, not
  silently dropped with the rest of the shard. `log(message)` hears about each lost range.
  """
  rows, offset, size = [], 0, fileio.getsize(path)
  with fileio.open(path, "rb") as f:
    while offset < size:
      f.seek(offset)
      head = f.read(12)
      length = _header(head)
      if length is not None and offset + 16 + length <= size:
        rows.append((offset, length))
        offset += 16 + length
      elif length is not None or len(head) < 12:
        rows.append((offset, TRUNCATED))
        break
      else:
        nxt = _resync(f, offset, size)
        sizes = [n + 16 for _, n in rows if n >= 0]
        lost = max(1, round((nxt - offset) / (sum(sizes) / len(sizes)))) if sizes else 1
        rows += [(offset, LOST)] * lost
        if log:
          log(
            f"{path}: bytes {offset}-{nxt} have no valid record framing (a corrupt length header); about "
            f"{lost} record(s) lost, resynchronised at byte {nxt}"
          )
        offset = nxt
  return np.asarray(rows, np.int64).reshape(-1, 2)


def iter_records(path: str, verify: bool = True) -> Iterator[bytes]:
  """Sequential read of a shard's payloads (raises RecordError at a bad record)."""
  reader = Reader(path)
  try:
    for offset, length in load_index(path):
      yield read_at(reader, int(offset), path, verify, int(length))
  finally:
    reader.close()


def shard_name(prefix: str, index: int, count: int) -> str:
  return f"{prefix}-{index:05d}-of-{count:05d}.tfrecord"


class ShardWriter:
  """Writes one shard atomically: a temporary file renamed into place on close.

  A writer killed mid-way leaves only `*.tmp-PID` files, never a shard or
  index that looks complete. A shard for a bucket is written to a local
  temporary file and uploaded on close, index first.
  """

  def __init__(self, path: str):
    self.path = path
    self._remote = fileio.is_remote(path)
    if self._remote:
      self._tmp_dir = tempfile.mkdtemp(prefix="tripletclip-shard-")
      self._local = os.path.join(self._tmp_dir, os.path.basename(path))
    else:
      self._local = path
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self._tmp = f"{self._local}.tmp-{os.getpid()}"
    self._f = open(self._tmp, "wb")
    self._index = []
    self.count = 0

  def write(self, features: dict) -> None:
    self.write_payload(encode_example(features))

  def write_payload(self, payload: bytes) -> None:
    """One record as it is (normally a serialized tf.train.Example)."""
    self._index.append((self._f.tell(), len(payload)))
    self._f.write(frame(payload))
    self.count += 1

  def close(self) -> None:
    self._f.flush()
    os.fsync(self._f.fileno())
    self._f.close()
    index_tmp = f"{self._local}{INDEX_SUFFIX}.tmp-{os.getpid()}.npy"
    np.save(index_tmp, np.asarray(self._index, np.int64).reshape(-1, 2))
    os.replace(index_tmp, self._local + INDEX_SUFFIX)  # index first: a shard never lacks its index
    os.replace(self._tmp, self._local)
    if self._remote:
      fileio.upload(self._local + INDEX_SUFFIX, self.path + INDEX_SUFFIX)
      fileio.upload(self._local, self.path)
      shutil.rmtree(self._tmp_dir, ignore_errors=True)

  def abort(self) -> None:
    self._f.close()
    if os.path.exists(self._tmp):
      os.remove(self._tmp)
    if self._remote:
      shutil.rmtree(self._tmp_dir, ignore_errors=True)

  def __enter__(self):
    return self

  def __exit__(self, exc_type, *_):
    self.abort() if exc_type else self.close()


def write_manifest(
  directory: str,
  name: str,
  shards: list[str],
  counts: list[int],
  per_shard: list[dict] | None = None,
  **how_made,
) -> str:
  """Writes `manifest.json`: counts per shard (plus `per_shard`'s fields, such as a checksum),
  schema version and how the data was made. Written last, it says the folder is complete: a reader
  takes exactly its shards."""
  manifest = {
    "name": name,
    "schema_version": SCHEMA_VERSION,
    "num_examples": int(sum(counts)),
    "shards": [
      {"file": os.path.basename(s), "num_examples": int(c), **extra}
      for s, c, extra in zip(shards, counts, per_shard or [{}] * len(shards))
    ],
    "features": {"required": list(REQUIRED), "optional": list(OPTIONAL)},
    "created_by": how_made,
  }
  path = fileio.join(directory, MANIFEST)
  fileio.write_bytes(path, json.dumps(manifest, indent=2).encode())
  return path


def resolve_shards(pattern: str) -> list[str]:
  """A directory, a glob or a comma-separated list -> sorted shard paths; clear error if none."""
  paths = []
  for part in pattern.split(","):
    part = part.strip()
    if fileio.isdir(part):
      part = fileio.join(part, "*.tfrecord")
    found = fileio.glob(part)
    if not found:
      raise FileNotFoundError(
        f"No TFRecord shards match {part!r}: check the path (a directory, a glob "
        "such as data/train-*.tfrecord, or a comma-separated list)."
      )
    paths.extend(found)
  return paths


def _stale(path: str, index: np.ndarray) -> str | None:
  """Why the index sidecar no longer describes the shard (grown, rewritten), or None.

  A shard cut short still fits its index: the missing records read as truncated.
  """
  size = fileio.getsize(path)
  if len(index) == 0:
    return None if size == 0 else f"the index is empty but the shard has {size} bytes"
  end = int(index[-1, 0] + 16 + index[-1, 1])
  if end < size:
    return f"the shard has {size - end} bytes past the index's last record (it grew)"
  rows = {0, len(index) // 2, len(index) - 1}
  with fileio.open(path, "rb") as f:
    for r in sorted(rows):
      offset, length = int(index[r, 0]), int(index[r, 1])
      if offset + 12 > size:
        continue
      f.seek(offset)
      if _header(f.read(12)) != length:
        return f"record {r} is not where the index says (the shard was rewritten)"
  return None


def load_index(path: str, log=None) -> np.ndarray:
  """The shard's record index [N, 2], from its sidecar or by scanning (shards written by
  TensorFlow).

  A sidecar that is unreadable (corrupt, or not a plain int64 array: nothing is ever unpickled) or
  stale (the shard grew or was rewritten after it) is ignored and the shard scanned instead;
  `log(message)` hears why. Records past the end of a cut-off shard stay in the index; reading them
  raises RecordError('truncated').
  """
  side = path + INDEX_SUFFIX
  if not fileio.exists(side):
    return scan(path, log)
  try:
    index = np.load(io.BytesIO(fileio.read_bytes(side)), allow_pickle=False)
    if index.dtype != np.int64 or index.ndim != 2 or index.shape[1] != 2:
      raise ValueError(f"an array of {index.dtype} {index.shape}, not int64 [N, 2]")
    why = _stale(path, index)
  except ValueError as e:  # numpy's own message would suggest allow_pickle: name the file instead
    why = (
      f"it is not a valid index ({str(e).split('. ')[0][:120]})"
      if "pickle" not in str(e)
      else "it holds Python objects, which are never loaded"
    )
  if why is None:
    return index
  if log:
    log(
      f"Ignored the index {side}: {why}; scanned the shard instead (delete or rewrite the index to silence this)"
    )
  return scan(path, log)


def check_manifest(paths: list[str], counts: list[int]) -> None:
  """Checks shards against the `manifest.json` of their directory, where there is one.

  Raises ValueError in one line when the manifest lists a shard that is missing, when a shard read
  is not listed (left by another conversion or run), or when a record count differs from the
  shard's.
  """
  by_dir: dict[str, list[int]] = {}
  for i, p in enumerate(paths):
    by_dir.setdefault(os.path.dirname(fileio.absolute(p)), []).append(i)
  for d, idx in by_dir.items():
    mpath = fileio.join(d, MANIFEST)
    if not fileio.exists(mpath):
      continue
    try:
      listed = {
        s["file"]: int(s["num_examples"]) for s in json.loads(fileio.read_bytes(mpath))["shards"]
      }
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(
        f"{mpath} is not a valid manifest ({type(e).__name__}: {e}): fix or delete it."
      ) from None
    present = {os.path.basename(p) for p in fileio.glob(fileio.join(d, "*"))}
    missing = sorted(n for n in listed if n not in present)
    if missing:
      raise ValueError(
        f"{mpath} lists {len(missing)} shard(s) missing from {d} (first: {missing[0]}): restore "
        "them, or regenerate the manifest if they are gone for good."
      )
    unlisted = sorted(os.path.basename(paths[i]) for i in idx)
    unlisted = [n for n in unlisted if n not in listed]
    if unlisted:
      raise ValueError(
        f"{fileio.join(d, unlisted[0])} is not listed in {mpath} ({len(unlisted)} such file(s)): it "
        "belongs to another conversion or run; move it away, or write the folder again."
      )
    for i in idx:
      name = os.path.basename(paths[i])
      if listed[name] != counts[i]:
        raise ValueError(
          f"{paths[i]} has {counts[i]} records but {mpath} says {listed[name]}: the shard was "
          "changed or cut short after the manifest was written; regenerate it or its manifest."
        )
