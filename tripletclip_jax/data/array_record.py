"""TripletData in Grain's native ArrayRecord format: the same tf.train.Example payloads as our
TFRecord shards, one record each, in `.array_record` files (random access without our index
sidecars; riegeli checksums).

    python launch/convert_array_record.py --input 'data/train/*.tfrecord' --output_dir data/train_ar

ArrayRecord files are read from a local (or mounted) file system.
"""

import os
import zlib

import numpy as np

from tripletclip_jax import fileio
from tripletclip_jax.data import records
from tripletclip_jax.data.sources import SourceItem, decoded

SUFFIX = ".array_record"


def _reader(path: str):
  from array_record.python.array_record_module import ArrayRecordReader

  # No read-ahead: records are read in shuffled order, one at a time.
  return ArrayRecordReader(path, "readahead_buffer_size:0")


class ArrayRecordSource:
  """Random access over every record of every `.array_record` file: `source[i]` -> SourceItem."""

  def __init__(self, paths: list[str]):
    self.paths = list(paths)
    remote = [p for p in self.paths if fileio.is_remote(p)]
    if remote:
      raise ValueError(
        f"{remote[0]}: ArrayRecord files are read from a local or mounted file system; copy them "
        "to local disk (or mount the bucket) or use the TFRecord shards."
      )
    sizes = []
    for p in self.paths:
      try:
        r = _reader(p)
        sizes.append(r.num_records())
        r.close()
      except Exception as e:  # noqa: BLE001 - the C++ reader raises RuntimeError / ValueError
        raise ValueError(
          f"{p} is not a readable ArrayRecord file ({str(e).splitlines()[0][:120]}): convert it "
          "again."
        ) from None
    _check_folders(self.paths)
    records.check_manifest(self.paths, sizes)
    self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    self._readers, self._pid = {}, None

  def __len__(self) -> int:
    return int(self.starts[-1])

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k != "_readers"}

  def __setstate__(self, state):
    self.__dict__.update(state, _readers={})

  def __getitem__(self, i: int) -> SourceItem:
    if self._pid != os.getpid():  # readers are per process: reopen after a fork
      self._readers, self._pid = {}, os.getpid()
    s = int(np.searchsorted(self.starts, int(i), side="right")) - 1
    local, shard = int(i) - int(self.starts[s]), os.path.basename(self.paths[s])
    if s not in self._readers:
      self._readers[s] = _reader(self.paths[s])
    try:
      payload = self._readers[s].read([local])[0]
    except Exception as e:  # noqa: BLE001 - a damaged chunk fails its riegeli checksum
      return SourceItem(
        shard, None, "corrupt_framing", f"record {local}: {str(e).splitlines()[0][:160]}"
      )
    return decoded(shard, local, payload)


def _check_folders(paths: list[str]) -> None:
  """Refuses, in one line, a folder that a conversion left unfinished (a `.tmp` file and no
  manifest)."""
  for d in sorted({os.path.dirname(os.path.abspath(p)) for p in paths}):
    if os.path.exists(os.path.join(d, records.MANIFEST)):
      continue
    left = sorted(n for n in os.listdir(d) if n.endswith(SUFFIX + ".tmp"))
    if left:
      raise ValueError(
        f"{os.path.join(d, left[0])} was left by a conversion that did not finish, and {d} has no "
        f"{records.MANIFEST}: convert again (launch/convert_array_record.py --replace)."
      )


def _clear(output_dir: str, replace: bool) -> None:
  """Makes `output_dir` an empty folder for a conversion, or refuses in one line."""
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise ValueError(f"--output_dir {output_dir} is a file: name a folder.")
  existing = sorted(os.listdir(output_dir)) if os.path.isdir(output_dir) else []
  if existing and not replace:
    raise ValueError(
      f"--output_dir {output_dir} is not empty ({len(existing)} entries, first: {existing[0]}): "
      "name an empty folder, or pass --replace to delete its ArrayRecord files and manifest first."
    )
  for name in existing:  # the manifest first: a folder without one is never read as complete
    if name == records.MANIFEST or name.endswith((SUFFIX, SUFFIX + ".tmp")):
      os.remove(os.path.join(output_dir, name))
  os.makedirs(output_dir, exist_ok=True)


def _crc32(path: str) -> int:
  crc = 0
  with open(path, "rb") as f:
    while chunk := f.read(1 << 20):
      crc = zlib.crc32(chunk, crc)
  return crc


def convert(tfrecord_pattern: str, output_dir: str, replace: bool = False, log=print) -> list[str]:
  """Writes each TFRecord shard of `tfrecord_pattern` as `output_dir/NAME.array_record`, record for
  record (the same payload bytes, in the same order), then `manifest.json` (each file's name, record
  count, size and CRC32), last and atomically; returns the paths written. `output_dir` must be
  empty, or `replace` deletes its ArrayRecord files and manifest first. A record that fails its CRC
  stops the conversion with records.RecordError naming the shard (nothing half-written is left as a
  shard); an input with no records is converted and warned of through `log`."""
  from array_record.python.array_record_module import ArrayRecordWriter

  inputs = records.resolve_shards(tfrecord_pattern)
  _clear(output_dir, replace)
  out, counts, per_file = [], [], []
  for path in inputs:
    name = os.path.basename(path).rsplit(".", 1)[0] + SUFFIX
    target = os.path.join(output_dir, name)
    # one record per chunk: cheap random reads
    writer = ArrayRecordWriter(target + ".tmp", "group_size:1")
    n = 0
    try:
      for payload in records.iter_records(path):
        writer.write(payload)
        n += 1
    finally:
      writer.close()
    os.replace(target + ".tmp", target)
    if n == 0:
      log(f"warning: {path} holds no records; {target} is empty.")
    out.append(target)
    counts.append(n)
    per_file.append({"bytes": os.path.getsize(target), "crc32": _crc32(target)})
  records.write_manifest(
    output_dir,
    os.path.basename(os.path.abspath(output_dir)),
    out,
    counts,
    per_file,
    converted_from=[os.path.abspath(p) for p in inputs],
  )
  return out
