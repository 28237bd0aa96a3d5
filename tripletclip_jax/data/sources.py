"""Random-access sources of TripletData records: `source[i]` -> SourceItem, for the Grain pipeline.

A source never raises for a bad record: it returns the item with `example=None` and the reason, so
the pipeline can count it and go on. Sources are picklable (Grain's worker processes get a copy):
files open lazily in each process.
"""

import bisect
import logging
import os
from typing import Any, NamedTuple

import numpy as np

from tripletclip_jax.data import records

log = logging.getLogger(__name__)


class SourceItem(NamedTuple):
  """One record as a source returns it."""

  shard: str  # the file's name, for messages
  example: dict | None  # the decoded features, or None when the record could not be read
  reason: str | None  # why not (a `pipeline.BAD_REASONS` entry), or None
  detail: str  # what exactly, for the log


def decoded(shard: str, index: int, payload: bytes) -> SourceItem:
  """A serialized tf.train.Example (record `index` of `shard`) as a SourceItem."""
  try:
    return SourceItem(shard, records.decode_example(payload), None, "")
  except Exception as e:  # noqa: BLE001 - a corrupt payload that passed no CRC check
    return SourceItem(shard, None, "malformed", f"record {index}: not a tf.train.Example ({e})")


class ShardSource:
  """Random access over every record of every shard, through the index sidecars.

  `source[i]` -> SourceItem.
  Picklable: file handles open lazily in each worker process.
  """

  def __init__(self, paths: list[str], verify_crc: bool = True):
    self.paths = list(paths)
    self.verify_crc = verify_crc
    # Loaded here with warnings, reloaded lazily (and identically) in workers.
    self._indexes = {s: records.load_index(p, log=log.warning) for s, p in enumerate(self.paths)}
    records.check_manifest(self.paths, [len(x) for x in self._indexes.values()])
    self.starts = np.concatenate([[0], np.cumsum([len(x) for x in self._indexes.values()])]).astype(
      np.int64
    )
    self._files: dict[int, Any] = {}
    self._pid = None

  def __len__(self) -> int:
    return int(self.starts[-1])

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k not in ("_files", "_indexes")}

  def __setstate__(self, state):
    self.__dict__.update(state, _files={}, _indexes={})

  def _locate(self, i: int) -> tuple[int, int, int, int]:
    s = bisect.bisect_right(self.starts, i) - 1
    if s not in self._indexes:
      self._indexes[s] = records.load_index(self.paths[s])
    offset, length = self._indexes[s][i - self.starts[s]]
    return s, int(offset), int(length), i - int(self.starts[s])

  def __getitem__(self, i: int):
    if self._pid != os.getpid():  # descriptors and clients are per process: reopen after a fork
      self._files, self._pid = {}, os.getpid()
    s, offset, length, local = self._locate(int(i))
    if s not in self._files:
      self._files[s] = records.Reader(self.paths[s])
    shard = os.path.basename(self.paths[s])
    try:
      payload = records.read_at(self._files[s], offset, self.paths[s], self.verify_crc, length)
    except records.RecordError as e:  # a lost byte range logs once, not once per record it held
      return SourceItem(
        shard, None, e.reason, str(e) if e.reason == "corrupt_framing" else f"record {local}: {e}"
      )
    return decoded(shard, local, payload)


class UnionSource:
  """Real and negative pairs as one set of ordinary pairs (the release's "LaCLIP+HN" control).

  Item i < len(source) is record i's (image, caption); item len(source) + i is its (neg_image,
  neg_caption) under the positive names, keyed KEY#neg. Shuffled globally, a record's two pairs
  rarely share a batch, so the negatives are extra data, not hard negatives.
  """

  def __init__(self, source):
    self.source = source

  def __len__(self) -> int:
    return 2 * len(self.source)

  def __getitem__(self, i: int):
    n = len(self.source)
    shard, ex, reason, detail = self.source[int(i) % n]
    if ex is not None and i >= n:
      ex = dict(
        ex,
        image=ex.get("neg_image", []),
        caption=ex.get("neg_caption", []),
        key=bytes(ex.get("key", b"?")) + b"#neg",
      )
    return SourceItem(shard, ex, reason, detail)


class ShuffledPartners:
  """Every record with another record's negative pair (neg_image, neg_caption, neg_type): the
  negatives' data and loss terms without their pairing, a control for TripletCLIP.

  The partners form one random cycle over the records (from `seed`), so no record keeps its own.
  """

  def __init__(self, source, seed: int):
    n = len(source)
    if n < 2:
      raise ValueError("Shuffled partners need at least 2 records.")
    order = np.random.default_rng(seed).permutation(n)
    self.partner = np.empty(n, np.int64)
    self.partner[order] = np.roll(order, -1)
    self.source = source

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int):
    item = self.source[int(i)]
    if item.example is None:
      return item
    other = self.source[int(self.partner[int(i)])]
    if other.example is None:  # without its partner's pair the record is unusable: counted as bad
      return other
    neg = {
      k: other.example[k] for k in ("neg_image", "neg_caption", "neg_type") if k in other.example
    }
    return item._replace(example=dict(item.example, **neg))


class TFDSSource:
  """Adapts `tfds.data_source(...)` of the TripletData builder to the same item layout."""

  def __init__(self, data_source, name: str):
    self.data_source, self.name = data_source, name

  def __len__(self) -> int:
    return len(self.data_source)

  def __getitem__(self, i: int):
    return SourceItem(self.name, dict(self.data_source[int(i)]), None, "")
