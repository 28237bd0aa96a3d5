"""The Grain pipeline: determinism, resumable state with workers, process shares, bad data."""

import io
import json
import os
import sys

import numpy as np
import pytest
from absl import flags
from PIL import Image

from tripletclip_jax.data import pipeline, records
from tripletclip_jax.demo import world as demo_world

flags.FLAGS.mark_as_parsed()  # grain's multiprocessing reads an absl flag


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("demo"))
  demo_world.write_demo_data(d, num_train=96, num_eval=4, seed=0, num_shards=3)
  return d


def _ds(demo_dir, **kw):
  kw = {"batch_size": 8, "image_size": 32, "context_length": 16, "seed": 1, **kw}
  return pipeline.make_dataset(f"{demo_dir}/train", **kw)


def _keys(batches):
  return [k.decode() for b in batches for k in b["key"]]


def test_batches_have_the_right_shapes(demo_dir):
  b = next(iter(_ds(demo_dir)))
  assert b["image"].shape == (8, 32, 32, 3) and b["image"].dtype == np.float32
  assert b["neg_image"].shape == (8, 32, 32, 3)
  assert (
    b["text"].shape == (8, 16) and b["text"].dtype == np.int32 and np.all(b["text"][:, 0] == 49406)
  )
  assert b["bad_counts"].tolist() == [0] * len(pipeline.BAD_REASONS)
  assert abs(float(b["image"].mean())) < 2.0


def test_order_is_seeded_and_reshuffled_each_epoch(demo_dir):
  take = lambda ds, n: [next(it) for it in [iter(ds)] for _ in range(n)]
  a, b = _keys(take(_ds(demo_dir), 24)), _keys(take(_ds(demo_dir), 24))
  assert a == b
  assert a != _keys(take(_ds(demo_dir, seed=2), 24))
  epoch1, epoch2 = a[:96], a[96:]
  assert sorted(epoch1) == sorted(epoch2) == sorted(set(epoch1)) and epoch1 != epoch2


def _resumed(demo_dir, state, num_workers, n=5):
  """`n` batches of a new iterator with `num_workers` worker processes, set to `state` moved to
  them; and how many positions the move repeats."""
  state, repeated = pipeline.iterator_state_for(state, num_workers)
  assert pipeline.iterator_state_for(state, num_workers) == (state, 0)  # the same layout as it is
  it = iter(_ds(demo_dir, num_workers=num_workers))
  it.set_state(state)
  batches = [next(it) for _ in range(n)]
  if hasattr(it, "close"):
    it.close()
  return batches, repeated


def test_a_state_restores_exactly_and_moves_to_another_number_of_workers(demo_dir):
  """With the same worker processes a saved state goes on bit for bit. Moved to another number,
  nothing is skipped, and only a save between worker cycles repeats examples (counted exactly).
  (One 2-worker iterator, saved twice: each worker process costs seconds to start.)"""
  stream = iter(_ds(demo_dir))
  order = _keys(next(stream) for _ in range(12))  # the global order of positions, one stream
  it, batches, states = iter(_ds(demo_dir, num_workers=2)), [], {}
  for i in range(8):
    if i in (3, 4):
      states[i] = it.get_state()
    batches.append(next(it))
  it.close()
  got, repeated = _resumed(demo_dir, states[3], 2)
  assert repeated == 0
  for w, g in zip(batches[3:8], got, strict=True):
    for k in w:
      np.testing.assert_array_equal(w[k], g[k])
  one = iter(_ds(demo_dir))
  unsaved = [next(one) for _ in range(3)]
  cases = [(batches, 3, states[3], 0, 7), (batches, 4, states[4], 0, 0)]
  cases += [(batches, 4, states[4], 3, 0), (unsaved, 3, one.get_state(), 2, 0)]
  for before, steps, state, after, want in cases:
    rest, repeated = _resumed(demo_dir, state, after)
    seen = _keys(before[:steps]) + _keys(rest)
    assert repeated == want and len(seen) - len(set(seen)) == want, (steps, after)
    assert set(order[: steps * 8]) <= set(seen)  # every position up to the save was read


@pytest.mark.parametrize("count", [2, 3, 5])
def test_process_shares_are_disjoint_and_complete(demo_dir, count):
  shares = [
    set(_keys(_ds(demo_dir, train=False, process_index=i, process_count=count)))
    for i in range(count)
  ]
  assert sum(len(s) for s in shares) == 96
  assert len(set().union(*shares)) == 96


def _png(color):
  buf = io.BytesIO()
  Image.new("RGB", (40, 40), color).save(buf, format="PNG")
  return buf.getvalue()


def _bad_shards(tmp_path, n_good=20):
  good = lambda i: {
    "key": f"g{i}",
    "image": _png("red"),
    "caption": "a red square",
    "neg_image": _png("blue"),
    "neg_caption": "a blue square",
  }
  path = str(tmp_path / records.shard_name("bad", 0, 2))
  with records.ShardWriter(path) as w:
    for i in range(n_good):
      w.write(good(i))
    w.write(dict(good(100), key="corrupt", image=b"not an image"))
    w.write({k: v for k, v in good(101).items() if k != "neg_caption"} | {"key": "missing"})
    w.write(dict(good(102), key="empty", caption="   "))
    w.write_payload(b"not an Example")
    w.write(dict(good(103), key="crc"))
  data = bytearray(open(path, "rb").read())
  off = int(records.load_index(path)[-1, 0])
  data[off + 30] ^= 0xFF  # corrupt the payload of the last record: CRC mismatch
  open(path, "wb").write(bytes(data))
  path2 = str(tmp_path / records.shard_name("bad", 1, 2))
  with records.ShardWriter(path2) as w:
    for i in range(3):
      w.write(good(200 + i))
  open(path2, "r+b").truncate(records.load_index(path2)[-1, 0] + 10)  # the last record is cut short
  return str(tmp_path)


def test_bad_records_are_skipped_and_counted_by_reason(tmp_path, caplog):
  d = _bad_shards(tmp_path)
  ds = pipeline.make_dataset(
    d, batch_size=4, image_size=32, context_length=16, train=False, max_bad_fraction=1.0
  )
  batches = list(ds)
  counts = dict(zip(pipeline.BAD_REASONS, sum(b["bad_counts"] for b in batches).tolist()))
  assert counts == {
    "undecodable_image": 1,
    "missing_feature": 1,
    "empty_caption": 1,
    "crc_mismatch": 1,
    "truncated": 1,
    "malformed_feature": 0,
    "corrupt_framing": 0,
    "malformed": 1,
  }
  assert sorted(_keys(batches)) == sorted([f"g{i}" for i in range(20)] + ["g200", "g201"])
  logged = caplog.text
  assert (
    "bad-00000-of-00002.tfrecord:corrupt" in logged
    and "bad-00000-of-00002.tfrecord:empty" in logged
  )


def test_too_many_bad_records_stop_with_the_shard_names(tmp_path):
  d = _bad_shards(tmp_path, n_good=3)
  ds = pipeline.make_dataset(
    d,
    batch_size=2,
    image_size=32,
    context_length=16,
    train=False,
    max_bad_fraction=0.01,
    bad_window=8,
  )
  with pytest.raises(pipeline.TooManyBadRecords, match=r"bad-00000-of-00002\.tfrecord"):
    list(ds)


def test_bad_fraction_is_enforced_before_the_window_fills(tmp_path):
  path = str(tmp_path / records.shard_name("third", 0, 1))
  with records.ShardWriter(path) as w:
    for i in range(300):  # every third record is corrupt: a 20-step run must not pass silently
      bad = i % 3 == 0
      w.write(
        {
          "key": f"k{i}",
          "image": b"not an image" if bad else _png("red"),
          "caption": "a red square",
          "neg_image": _png("blue"),
          "neg_caption": "a blue square",
        }
      )
  ds = pipeline.make_dataset(
    path,
    batch_size=4,
    image_size=32,
    context_length=16,
    train=False,
    max_bad_fraction=0.01,
    bad_window=1000,
  )
  with pytest.raises(
    pipeline.TooManyBadRecords, match=r"of the first 1\d\d records are bad.*third-00000-of-00001"
  ):
    list(ds)


def test_bad_image_warning_names_the_field_once_per_record(tmp_path, caplog):
  path = str(tmp_path / records.shard_name("neg", 0, 1))
  with records.ShardWriter(path) as w:
    w.write(
      {
        "key": "k0",
        "image": _png("red"),
        "caption": "a red square",
        "neg_image": b"\x89PNG broken",
        "neg_caption": "a blue square",
      }
    )
    w.write(
      {
        "key": "k1",
        "image": _png("red"),
        "caption": "a red square",
        "neg_image": _png("blue"),
        "neg_caption": "a blue square",
      }
    )
  ds = pipeline.make_dataset(
    path,
    batch_size=1,
    image_size=32,
    context_length=16,
    train=False,
    num_epochs=3,
    max_bad_fraction=1.0,
  )
  assert sum(int(b["bad_counts"].sum()) for b in ds) == 3  # counted every epoch
  warnings = [r.getMessage() for r in caplog.records if "Skipped bad record" in r.getMessage()]
  assert len(warnings) == 1 and "neg-00000-of-00001.tfrecord:k0: neg_image: " in warnings[0], (
    warnings
  )
  assert "0x" not in warnings[0]


def test_missing_data_fails_at_once(tmp_path):
  with pytest.raises(FileNotFoundError, match="No TripletData files match"):
    pipeline.make_dataset(str(tmp_path / "nope" / "*.tfrecord"), batch_size=2, image_size=32)


def test_fields_limit_decoding_to_what_the_loss_uses(demo_dir):
  full = next(iter(_ds(demo_dir, train=False)))
  clip_only = next(iter(_ds(demo_dir, train=False, fields=("image", "text"))))
  assert set(clip_only) == {"image", "text", "key", "bad_counts"}
  np.testing.assert_array_equal(clip_only["image"], full["image"])
  np.testing.assert_array_equal(clip_only["text"], full["text"])
  with pytest.raises(ValueError, match="Unknown fields"):
    _ds(demo_dir, fields=("image", "caption"))


def test_sixteen_bit_png_keeps_its_grey_levels():
  from tripletclip_jax.data import image_ops

  levels = np.linspace(0, 65535, 40 * 40).reshape(40, 40).astype(np.uint16)
  buf = io.BytesIO()
  Image.fromarray(levels).save(buf, format="PNG")  # mode I;16
  rgb = np.asarray(image_ops.decode(buf.getvalue()))
  # PIL's convert alone gives ~all 255
  np.testing.assert_allclose(rgb[..., 0], levels / 257.0, atol=0.51)
  assert rgb.shape == (40, 40, 3) and 120 < rgb.mean() < 135
  x = image_ops.eval_transform(buf.getvalue(), 32)
  # mid grey on average, not white (about 1.9 after normalisation)
  assert abs(float(x.mean())) < 0.5


def test_malformed_fields_are_skipped_counted_and_named(tmp_path, caplog):
  good = lambda k: {
    "key": k,
    "image": _png("red"),
    "caption": "a red square",
    "neg_image": _png("blue"),
    "neg_caption": "a blue square",
    "neg_type": "swap_att",
    "clip_score": 0.5,
  }
  path = str(tmp_path / records.shard_name("mal", 0, 1))
  with records.ShardWriter(path) as w:
    w.write(good("ok0"))
    w.write(dict(good("int_caption"), caption=7))  # int64 instead of bytes
    w.write(dict(good("two_captions"), neg_caption=["a", "b"]))  # two values
    w.write(dict(good("bad_utf8"), caption=b"\xff\xfe red"))  # not UTF-8
    w.write(dict(good("int_type"), neg_type=3))  # an optional field of the wrong type
    w.write(dict(good("str_score"), clip_score="high"))
    w.write(good("ok1"))
  for epoch_run in range(2):  # a restart meets the same records and survives them again
    ds = pipeline.make_dataset(
      path, batch_size=1, image_size=32, context_length=16, train=False, max_bad_fraction=1.0
    )
    batches = list(ds)
    assert _keys(batches) == ["ok0", "ok1"]
    counts = dict(zip(pipeline.BAD_REASONS, sum(b["bad_counts"] for b in batches).tolist()))
    assert counts["malformed_feature"] == 5 and sum(counts.values()) == 5
  text = caplog.text
  for key, field in (
    ("int_caption", "'caption'"),
    ("two_captions", "'neg_caption' must be one bytes value, got 2"),
    ("bad_utf8", "'caption' is not valid UTF-8"),
    ("int_type", "'neg_type'"),
    ("str_score", "'clip_score'"),
  ):
    assert f"mal-00000-of-00001.tfrecord:{key}: field {field}" in text, text


def test_uint8_images_are_normalised_on_the_device_to_the_same_embedding(demo_dir):
  import jax
  from tripletclip_jax.models import CLIP, get_preset, init_params

  f32 = next(iter(_ds(demo_dir, train=False)))
  u8 = next(iter(_ds(demo_dir, train=False, uint8_images=True)))
  assert u8["image"].dtype == np.uint8 and u8["neg_image"].dtype == np.uint8
  assert f32["image"].nbytes == 4 * u8["image"].nbytes  # the bytes that cross to the device
  import dataclasses

  cfg = get_preset("tiny")
  cfg = cfg.replace(vision=dataclasses.replace(cfg.vision, image_size=32))
  params = init_params(cfg, jax.random.key(0))
  enc = jax.jit(lambda x: CLIP(cfg).apply({"params": params}, x, method=CLIP.encode_image))
  np.testing.assert_allclose(np.asarray(enc(u8["image"])), np.asarray(enc(f32["image"])), atol=2e-5)


def test_array_record_copy_gives_the_same_batches(demo_dir, tmp_path, capsys):
  """Grain's native ArrayRecord, written by launch/convert_array_record.py, is a registered format:
  training from the copy reads the same batches as training from the TFRecord shards (here through
  the trainer's `build`)."""
  sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch")
  )
  import convert_array_record
  from test_trainer import small_config
  from tripletclip_jax.data import formats
  from tripletclip_jax.train.experiment import build

  ar = str(tmp_path / "train_ar")
  convert_array_record.main(["--input", os.path.join(demo_dir, "train"), "--output_dir", ar])
  assert "Wrote 3 ArrayRecord files" in capsys.readouterr().out
  assert formats.resolve(ar)[0].name == "array_record" and len(formats.open_source(ar)) == 96
  batches = {}
  for name, train in (("tfrecord", os.path.join(demo_dir, "train")), ("array_record", ar)):
    # No demo world to fall back on: the batches can only come from `train`.
    only = {"data.train": train, "data.num_workers": 2}
    exp = build(small_config(str(tmp_path / "no_world"), **only), str(tmp_path / name))
    batches[name] = [next(exp.train_data) for _ in range(3)]
    exp.train_data.close()
  for a, b in zip(batches["tfrecord"], batches["array_record"]):
    assert sorted(a) == sorted(b)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_an_array_record_folder_is_exactly_its_manifest(demo_dir, tmp_path, capsys):
  """The converter writes a manifest last; training reads exactly its set and refuses what is
  missing, unlisted or left by a conversion that did not finish; the converter refuses a non-empty
  folder."""
  import shutil

  from tripletclip_jax.data import array_record, formats, records

  ar, other = str(tmp_path / "ar"), str(tmp_path / "other")
  paths = array_record.convert(os.path.join(demo_dir, "train"), ar)
  manifest = json.load(open(os.path.join(ar, records.MANIFEST)))
  assert [(s["file"], s["num_examples"]) for s in manifest["shards"]] == [
    (os.path.basename(p), 32) for p in paths
  ] and all(s["crc32"] and s["bytes"] for s in manifest["shards"])
  with pytest.raises(ValueError, match=r"--output_dir .*/ar is not empty \(4 entries.*--replace"):
    array_record.convert(os.path.join(demo_dir, "train"), ar)
  # A file of another conversion in the folder: refused, not read.
  array_record.convert(os.path.join(demo_dir, "heldout"), other)
  stray = os.path.join(ar, "stray.array_record")
  shutil.copy(os.path.join(other, sorted(os.listdir(other))[0]), stray)
  with pytest.raises(ValueError, match=r"stray.array_record is not listed in .*manifest.json"):
    formats.open_source(ar)
  os.remove(stray)
  os.remove(paths[1])
  with pytest.raises(ValueError, match=r"lists 1 shard\(s\) missing from"):
    formats.open_source(ar)
  # --replace starts over; a conversion killed midway (a .tmp, no manifest) is refused.
  array_record.convert(os.path.join(demo_dir, "train"), ar, replace=True)
  assert len(formats.open_source(ar)) == 96
  os.remove(os.path.join(ar, records.MANIFEST))
  open(paths[2] + ".tmp", "wb").close()
  with pytest.raises(ValueError, match=r"left by a conversion that did not finish"):
    formats.open_source(ar)
  # An empty input is warned of; an --output_dir that is a file is one line.
  empty = tmp_path / "empty" / "e-00000-of-00001.tfrecord"
  empty.parent.mkdir()
  empty.write_bytes(b"")
  warned = []
  array_record.convert(str(empty.parent), str(tmp_path / "e_ar"), log=warned.append)
  assert warned and "holds no records" in warned[0]
  with pytest.raises(ValueError, match=r"--output_dir .*e-00000-of-00001.tfrecord is a file"):
    array_record.convert(str(empty.parent), str(empty))


def test_a_damaged_array_record_file_is_one_line(tmp_path):
  from tripletclip_jax.data import formats

  bad = tmp_path / "x.array_record"
  bad.write_bytes(b"not an array record file" * 10)
  with pytest.raises(
    ValueError, match=r"x.array_record is not a readable ArrayRecord file .*convert it again"
  ):
    formats.open_source(str(tmp_path))
  with pytest.raises(ValueError, match=r"mixes formats \(array_record, tfrecord\)"):
    (tmp_path / "y.tfrecord").write_bytes(b"")
    formats.resolve(str(tmp_path))


def test_in_memory_serves_the_same_batches(demo_dir):
  kw = dict(augment="center_crop", union_negatives=False)
  stream, memory = iter(_ds(demo_dir, **kw)), iter(_ds(demo_dir, in_memory=True, **kw))
  for _ in range(14):  # past an epoch of 96 records at batch 16
    a, b = next(stream), next(memory)
    assert set(a) == set(b)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  with pytest.raises(ValueError, match="random_resized_crop draws a new crop"):
    _ds(demo_dir, in_memory=True, augment="random_resized_crop")


@pytest.mark.parametrize(
  "before,after",
  [
    ({}, {"in_memory": True}),
    ({"in_memory": True}, {}),
    ({}, {"batch_size": 12}),
    ({"in_memory": True}, {"in_memory": True, "batch_size": 5}),
    ({"in_memory": True, "batch_size": 12}, {"batch_size": 3}),
  ],
)
def test_a_saved_position_counts_records_in_every_pipeline(tmp_path, before, after):
  """Resumed under other settings, the records read next are, by id, exactly those an uninterrupted
  run with the new settings reads from that position: nothing skipped or repeated (bad records
  included)."""
  d = _bad_shards(tmp_path)
  kw = dict(image_size=32, context_length=16, seed=3, augment="center_crop", max_bad_fraction=1.0)
  make = lambda o: pipeline.make_dataset(d, **{"batch_size": 8, **kw, **o})  # noqa: E731
  it = iter(make(before))
  first = _keys(next(it) for _ in range(4))
  state = it.get_state()
  # The position in records: the good ones read plus the bad ones met.
  assert state["next_index"] >= len(first)
  resumed = iter(make(after))
  resumed.set_state(state)
  rest = _keys(next(resumed) for _ in range(6))
  uninterrupted = iter(make({**after, "batch_size": 1}))  # one record a batch: the order itself
  order = _keys(next(uninterrupted) for _ in range(len(first) + len(rest)))
  assert first + rest == order


def test_shuffled_partners_keep_x_neg_with_y_neg_but_not_with_x(demo_dir):
  from tripletclip_jax.data import formats
  from tripletclip_jax.data.sources import ShuffledPartners

  source = formats.open_source(f"{demo_dir}/train")
  shuffled = ShuffledPartners(source, seed=0)
  partners = set()
  for i in range(len(source)):
    own, got = source[i].example, shuffled[i].example
    assert got["image"] == own["image"] and got["caption"] == own["caption"]
    j = int(shuffled.partner[i])
    assert j != i  # nobody keeps its own negative
    other = source[j].example
    # x' and y' travel together: the partner's pair, still a valid (x', y') positive.
    assert (got["neg_image"], got["neg_caption"]) == (other["neg_image"], other["neg_caption"])
    partners.add(j)
  assert partners == set(range(len(source)))  # a permutation: every negative is used once
  batch = next(iter(_ds(demo_dir, partners="shuffled")))
  assert batch["neg_image"].shape == batch["image"].shape
