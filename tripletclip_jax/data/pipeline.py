"""The Grain input pipeline: shards -> shuffled, per-process, decoded, batched numpy.

    ds = make_dataset("data/train-*.tfrecord", batch_size=256, image_size=224, seed=0)
    it = iter(ds)            # batches {image, neg_image, text, neg_text, key, bad_counts}
    state = it.get_state()   # checkpointable, also with worker processes

Bad records (undecodable image, missing feature, empty caption, CRC mismatch,
truncated shard) are skipped, counted by reason in each batch's `bad_counts`
and logged once with shard and key. Too many in a window stops the run.
"""

import collections
import logging
import re
from typing import NamedTuple

import grain
import numpy as np

from tripletclip_jax.data import formats, image_ops, records
from tripletclip_jax.data.sources import ShuffledPartners, SourceItem, UnionSource
from tripletclip_jax.data.tokenizer import tokenize

# New reasons go at the end: checkpoints store the counts in this order.
BAD_REASONS = (
  "undecodable_image",
  "missing_feature",
  "empty_caption",
  "crc_mismatch",
  "truncated",
  "malformed_feature",
  "corrupt_framing",
  "malformed",  # the payload is not a tf.train.Example at all
)
MIN_EVIDENCE = 100  # records seen before the bad fraction so far is held to max_bad_fraction
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
log = logging.getLogger(__name__)


class BadRecord(NamedTuple):
  """What the pipeline passes on for a record it cannot use: counted by reason, logged once,
  skipped."""

  reason: str  # one of BAD_REASONS
  where: str  # "shard:key", or the shard alone when the record's bytes could not be read
  detail: str


FIELDS = ("image", "neg_image", "text", "neg_text")
PARTNERS = ("paired", "shuffled")  # whose negative pair a record carries: its own, or another's
# center_crop: the release's training transform
AUGMENTATIONS = (
  "random_resized_crop",
  "center_crop",
)


class Preprocess:
  """Record -> numpy arrays for `fields` (of FIELDS) plus 'key', or a bad-record marker.

  Every record is checked for all required features and non-empty captions; only the
  requested images are decoded, so a plain CLIP baseline does not pay for the negative
  images (nor notices an undecodable one).
  """

  def __init__(
    self,
    image_size: int,
    context_length: int,
    train: bool,
    crop_scale=(0.9, 1.0),
    fields=FIELDS,
    augment: str = "random_resized_crop",
    uint8: bool = False,
  ):
    self.image_size, self.context_length, self.uint8 = image_size, context_length, uint8
    self.crop_scale, self.fields = tuple(crop_scale), tuple(fields)
    unknown = set(self.fields) - set(FIELDS)
    if unknown:
      raise ValueError(f"Unknown fields {sorted(unknown)}; choose from {FIELDS}.")
    if augment not in AUGMENTATIONS:
      raise ValueError(f"Unknown augment {augment!r}; choose one of {AUGMENTATIONS}.")
    self.random_crop = train and augment == "random_resized_crop"

  def __call__(self, item: SourceItem, rng: np.random.Generator | None = None):
    shard, ex, reason, detail = item
    if ex is None:
      return BadRecord(reason, shard, detail)
    key = ex.get("key", b"?")
    key = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
    where = f"{shard}:{key}"
    missing = [f for f in records.REQUIRED if f not in ex or ex[f] == []]
    if missing:
      return BadRecord("missing_feature", where, f"missing {missing}")
    # a wrong type or count must be skipped here, not crash a worker
    problem = records.check_example(ex)
    if problem:
      return BadRecord("malformed_feature", where, problem)
    caps = {"text": ex["caption"].decode("utf-8"), "neg_text": ex["neg_caption"].decode("utf-8")}
    if not all(c.strip() for c in caps.values()):
      return BadRecord("empty_caption", where, "empty caption or neg_caption")
    out = {"key": np.bytes_(key)}
    for f in ("image", "neg_image"):
      if f not in self.fields:
        continue
      try:
        out[f] = (
          image_ops.train_transform(ex[f], self.image_size, rng, self.crop_scale, self.uint8)
          if self.random_crop
          else image_ops.eval_transform(ex[f], self.image_size, self.uint8)
        )
      except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt images
        # PIL's messages can hold an object's address: drop it, so one fault logs once.
        return BadRecord(
          "undecodable_image", where, f"{f}: {type(e).__name__}: {_ADDRESS.sub('', str(e))}"
        )
    texts = [f for f in ("text", "neg_text") if f in self.fields]
    if texts:
      out.update(zip(texts, tokenize([caps[f] for f in texts], self.context_length)))
    return out


class TooManyBadRecords(RuntimeError):
  pass


class _SkipBadBatchIterator(grain.DatasetIterator):
  def __init__(
    self, parent, batch_size: int, drop_remainder: bool, max_bad_fraction: float, window: int
  ):
    super().__init__(parent)
    self._batch_size, self._drop_remainder = batch_size, drop_remainder
    self._max_bad, self._window = max_bad_fraction, collections.deque(maxlen=window)
    self._logged = set()
    self._seen = self._bad_seen = 0

  def __next__(self):
    good, counts = [], np.zeros(len(BAD_REASONS), np.int64)
    while len(good) < self._batch_size:
      try:
        el = next(self._parent)
      except StopIteration:
        break
      self._seen += 1
      if isinstance(el, BadRecord):
        self._bad_seen += 1
        counts[BAD_REASONS.index(el.reason)] += 1
        if (el.where, el.detail) not in self._logged:
          self._logged.add((el.where, el.detail))
          log.warning("Skipped bad record (%s) %s: %s", el.reason, el.where, el.detail)
        self._window.append(el.where.split(":")[0])
        self._check_window()
      else:
        good.append(el)
        self._window.append(None)
    if not good or (self._drop_remainder and len(good) < self._batch_size):
      raise StopIteration
    batch = {k: np.stack([g[k] for g in good]) for k in good[0]}
    batch["bad_counts"] = counts
    return batch

  def _check_window(self):
    """Over the last `window` records once it is full, and over all records so far once there is
    evidence (MIN_EVIDENCE), so that a short run, or the start of a long one, is held to the limit
    too."""
    bad = [s for s in self._window if s is not None]
    if len(self._window) == self._window.maxlen and len(bad) > self._max_bad * len(self._window):
      what = f"{len(bad)} of the last {len(self._window)} records are bad"
    elif self._seen >= MIN_EVIDENCE and self._bad_seen > self._max_bad * self._seen:
      what = f"{self._bad_seen} of the first {self._seen} records are bad"
    else:
      return
    raise TooManyBadRecords(
      f"{what} (limit max_bad_fraction={self._max_bad}) in shards {sorted(set(bad))}: "
      "check or regenerate them, or raise max_bad_fraction."
    )

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    self._parent.set_state(state)


class SkipBadBatch(grain.IterDataset):
  """Batches `batch_size` good elements, skipping and counting bad-record markers."""

  def __init__(
    self,
    parent,
    batch_size: int,
    drop_remainder: bool = True,
    max_bad_fraction: float = 0.01,
    window: int = 1000,
  ):
    super().__init__(parent)
    self._args = (batch_size, drop_remainder, max_bad_fraction, window)

  def __iter__(self):
    return _SkipBadBatchIterator(self._parent.__iter__(), *self._args)


def make_dataset(
  pattern,
  *,
  batch_size: int,
  image_size: int,
  context_length: int = 77,
  train: bool = True,
  seed: int = 0,
  num_epochs: int | None = None,
  shuffle: bool | None = None,
  num_workers: int = 0,
  process_index: int | None = None,
  process_count: int | None = None,
  crop_scale=(0.9, 1.0),
  max_bad_fraction: float = 0.01,
  bad_window: int = 1000,
  drop_remainder: bool | None = None,
  read_threads: int = 4,
  fields=FIELDS,
  augment: str = "random_resized_crop",
  union_negatives: bool = False,
  uint8_images: bool = False,
  partners: str = "paired",
  in_memory: bool = False,
) -> grain.IterDataset:
  """Per-process batches from TripletData shards in any registered format (`data/formats.py`: a
  glob, directory or comma-separated list of TFRecord or ArrayRecord files) or a source such as
  TFDSSource.

  `batch_size` is this process's share of the global batch. The order is a global shuffle from
  `seed`, reshuffled each epoch; process p takes every `process_count`-th element of it, so shares
  are disjoint and complete. Eval mode (`train=False`) defaults to one epoch, no shuffle, keeping
  the last partial batch. `read_threads` threads decode ahead in each process. `fields` limits what
  is decoded (features and captions are still checked on every record). `augment` is the training
  transform (AUGMENTATIONS). `union_negatives` turns every record into two ordinary pairs, (image,
  caption) and (neg_image, neg_caption), shuffled independently (UnionSource). `uint8_images` yields
  uint8 pixels, for the model to normalise on the device. `partners="shuffled"` gives every record
  another record's negative pair (ShuffledPartners, a control). `in_memory` decodes every record
  once, before the first batch, and serves the arrays from memory after: for a set that fits in RAM
  and a deterministic transform (`augment="center_crop"`); the batches are the same.

  The iterator's state counts the records of this process's stream that it has consumed, in every
  mode and at any `batch_size` (per worker with `num_workers`: `iterator_state_for` moves it).
  """
  if process_index is None or process_count is None:
    import jax  # only for the process layout; the pipeline itself needs no JAX

    process_index, process_count = jax.process_index(), jax.process_count()
  source = (
    pattern
    if hasattr(pattern, "__getitem__") and not isinstance(pattern, str)
    else formats.open_source(pattern)
  )
  if len(source) == 0:
    raise ValueError(f"The shards matching {pattern!r} hold no records.")
  if partners not in PARTNERS:
    raise ValueError(f"Unknown partners {partners!r}; choose one of {PARTNERS}.")
  if partners == "shuffled":
    source = ShuffledPartners(source, seed)
  if union_negatives:
    source = UnionSource(source)
  shuffle = train if shuffle is None else shuffle
  prep = Preprocess(image_size, context_length, train, crop_scale, fields, augment, uint8_images)
  # In memory, every record is decoded once now and looked up after; the stream that follows is the
  # same one (same positions, same order, bad records met at the same places), so a saved position
  # counts records whichever way the set is read, and resumes exactly across in_memory and
  # batch_size.
  read = _Lookup(_decode_all(source, prep, max_bad_fraction)) if in_memory else prep
  ds = grain.MapDataset.range(len(source)) if in_memory else grain.MapDataset.source(source)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  if train or num_epochs:
    ds = ds.repeat(num_epochs)  # None: forever, reshuffled every epoch
  # Augmentation randomness is keyed by the global position (before the per-process slice), so
  # an example is cropped the same way whatever the number of processes.
  ds = ds.random_map(read, seed=seed) if train else ds.map(read)
  ds = ds[process_index::process_count]
  # Threads that decode ahead within each process (Grain's default is 16); use about one per core a
  # process has, or a few per worker process when mp workers split the cores.
  ds = ds.to_iter_dataset(
    grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=4 * batch_size)
  )
  ds = SkipBadBatch(
    ds,
    batch_size,
    train if drop_remainder is None else drop_remainder,
    max_bad_fraction,
    bad_window,
  )
  if num_workers > 0:
    from absl import flags

    # Grain's workers read an absl flag; a library caller has parsed none.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return ds


class _Lookup:
  """Position -> the record decoded at load (a dict of arrays, or its BadRecord); takes and ignores
  the random generator of `random_map`, as in memory the transform is deterministic."""

  def __init__(self, items: list):
    self.items = items

  def __call__(self, index: int, rng: np.random.Generator | None = None):
    return self.items[index]


def _decode_all(source, prep, max_bad_fraction: float) -> list:
  """Every record of `source` through `prep`: [dict of arrays or BadRecord], one per position. Bad
  records stay in their places, to be counted and logged as the stream meets them; too many raise
  TooManyBadRecords now, before any batch."""
  if prep.random_crop:
    raise ValueError(
      "in_memory serves each record decoded once, but random_resized_crop draws a new crop every "
      "epoch: set augment='center_crop' or in_memory=False."
    )
  items = [prep(source[i]) for i in range(len(source))]
  bad = collections.Counter(it.reason for it in items if isinstance(it, BadRecord))
  if bad:
    log.warning("%d of %d records are bad at load: %s", sum(bad.values()), len(items), dict(bad))
  if sum(bad.values()) == len(items) or sum(bad.values()) > max_bad_fraction * len(items):
    raise TooManyBadRecords(
      f"{sum(bad.values())} of {len(items)} records are bad ({dict(bad)}; limit "
      f"max_bad_fraction={max_bad_fraction}): check or regenerate them, or raise max_bad_fraction."
    )
  return items


def iterator_state_for(state: dict, num_workers: int) -> tuple[dict, int]:
  """A saved training iterator state moved to `num_workers` worker processes: (state, repeated).

  Worker w of N reads positions w, w + N, ... of the process's stream and batches its own share, so
  a state is a set of consumed positions. The result resumes at the first unconsumed position: when
  the save was at a multiple of the old worker count, nothing repeats or is skipped; otherwise
  `repeated` positions (fewer than old workers x batch size) are read a second time. The same layout
  comes back as it is. Unknown layouts raise ValueError.
  """
  if "next_index" in state:
    consumed = [state["next_index"]]  # one stream
  elif "iterators_in_use_states" in state:
    consumed = [s["next_index"] for s in state["iterators_in_use_states"]]
  else:
    raise ValueError(f"unknown data iterator state layout (keys {sorted(state)})")
  old = len(consumed) if "iterators_in_use_states" in state else 0
  if old == num_workers:
    return state, 0
  n = max(old, 1)
  first_free = min(w + n * c for w, c in enumerate(consumed))
  repeated = sum(max(0, c - (first_free - w + n - 1) // n) for w, c in enumerate(consumed))
  if num_workers == 0:
    return {"next_index": first_free}, repeated
  per_worker = [
    max(0, (first_free - w + num_workers - 1) // num_workers) for w in range(num_workers)
  ]
  return {
    "next_index_in_cycle": 0,
    "next_index_in_datasets": num_workers,
    "iterators_in_use_indices": list(range(num_workers)),
    "iterators_in_use_states": [{"next_index": c} for c in per_worker],
    "exhausted": [0] * num_workers,
    "future_states": {},
  }, repeated
