"""Record format: TFRecord framing and tf.train.Example, byte-compatible with TensorFlow."""

import os

import numpy as np
import pytest

from tripletclip_jax.data import records, sources

FEATURES = {
  "key": "k-0",
  "image": b"\x89PNG\x00\x01",
  "caption": "a red circle \u00e9",
  "neg_image": b"\xff\xd8jpeg",
  "neg_caption": "a blue circle",
  "clip_score": 0.25,
  "count": 3,
}


def _write(path, rows):
  with records.ShardWriter(path) as w:
    for r in rows:
      w.write(r)


def test_tensorflow_reads_our_shards(tmp_path):
  tf = pytest.importorskip("tensorflow")
  path = str(tmp_path / records.shard_name("t", 0, 1))
  rows = [dict(FEATURES, key=f"k-{i}") for i in range(5)]
  _write(path, rows)
  spec = {
    "key": tf.io.FixedLenFeature([], tf.string),
    "image": tf.io.FixedLenFeature([], tf.string),
    "caption": tf.io.FixedLenFeature([], tf.string),
    "clip_score": tf.io.FixedLenFeature([], tf.float32),
    "count": tf.io.FixedLenFeature([], tf.int64),
  }
  got = [tf.io.parse_single_example(r, spec) for r in tf.data.TFRecordDataset(path)]
  assert [g["key"].numpy().decode() for g in got] == [r["key"] for r in rows]
  assert got[0]["image"].numpy() == FEATURES["image"]
  assert got[0]["caption"].numpy().decode() == FEATURES["caption"]
  assert got[0]["clip_score"].numpy() == np.float32(0.25) and got[0]["count"].numpy() == 3


def test_we_read_tensorflow_shards_and_match_its_bytes(tmp_path):
  tf = pytest.importorskip("tensorflow")
  path = str(tmp_path / "tf-00000-of-00001.tfrecord")
  feature = lambda v: (
    tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode() if isinstance(v, str) else v]))
    if isinstance(v, (str, bytes))
    else tf.train.Feature(float_list=tf.train.FloatList(value=[v]))
    if isinstance(v, float)
    else tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))
  )
  protos = [
    tf.train.Example(
      features=tf.train.Features(
        feature={k: feature(v) for k, v in dict(FEATURES, key=f"k-{i}").items()}
      )
    )
    for i in range(4)
  ]
  with tf.io.TFRecordWriter(path) as w:
    for p in protos:
      w.write(p.SerializeToString(deterministic=True))
  got = [records.decode_example(r) for r in records.iter_records(path)]  # no index sidecar: scanned
  assert [g["key"] for g in got] == [f"k-{i}".encode() for i in range(4)]
  assert got[0]["clip_score"] == pytest.approx(0.25) and got[0]["count"] == 3
  # Serialisation is byte-identical to TensorFlow's, and so is the framing.
  assert records.encode_example(dict(FEATURES, key="k-0")) == protos[0].SerializeToString(
    deterministic=True
  )
  ours = str(tmp_path / "ours.tfrecord")
  _write(ours, [dict(FEATURES, key=f"k-{i}") for i in range(4)])
  assert open(ours, "rb").read() == open(path, "rb").read()


def test_index_sidecar_and_random_access(tmp_path):
  path = str(tmp_path / records.shard_name("t", 0, 1))
  _write(path, [dict(FEATURES, key=f"k-{i}", caption="x" * i) for i in range(10)])
  index = records.load_index(path)
  assert index.shape == (10, 2)
  np.testing.assert_array_equal(index, records.scan(path))
  reader = records.Reader(path)
  assert records.decode_example(records.read_at(reader, int(index[7, 0]), path))["key"] == b"k-7"
  assert (
    records.decode_example(
      records.read_at(reader, int(index[3, 0]), path, length=int(index[3, 1]))
    )["key"]
    == b"k-3"
  )
  reader.close()


def test_killed_writer_leaves_no_complete_looking_shard(tmp_path):
  path = str(tmp_path / records.shard_name("t", 0, 1))
  with pytest.raises(RuntimeError):
    with records.ShardWriter(path) as w:
      w.write(FEATURES)
      raise RuntimeError("killed")
  assert os.listdir(tmp_path) == []
  w = records.ShardWriter(path)
  w.write(FEATURES)  # never closed, as if SIGKILLed
  assert not os.path.exists(path) and not os.path.exists(path + records.INDEX_SUFFIX)


def test_crc_and_truncation_are_detected(tmp_path):
  path = str(tmp_path / "t.tfrecord")
  _write(path, [dict(FEATURES, key=f"k-{i}") for i in range(3)])
  data = bytearray(open(path, "rb").read())
  data[20] ^= 0xFF  # inside the first payload
  open(path, "wb").write(bytes(data[:-10]))  # and cut the last record short
  it = records.iter_records(path)
  with pytest.raises(records.RecordError) as e:
    next(it)
  assert e.value.reason == "crc_mismatch"
  os.remove(path + records.INDEX_SUFFIX)  # a scanned shard reports its cut-off tail too
  index = records.scan(path)
  assert index.shape == (3, 2) and index[-1, 1] == -1


def test_missing_path_is_clear(tmp_path):
  with pytest.raises(FileNotFoundError, match="No TFRecord shards match"):
    records.resolve_shards(str(tmp_path / "nothing-*.tfrecord"))


def _tf_shard(path, n, tf):
  with tf.io.TFRecordWriter(path) as w:
    for i in range(n):
      w.write(records.encode_example(dict(FEATURES, key=f"k-{i}", caption="y" * (i % 7))))


def test_a_stale_index_is_noticed_and_the_shard_rescanned(tmp_path):
  path = str(tmp_path / records.shard_name("t", 0, 1))
  _write(path, [dict(FEATURES, key=f"k-{i}") for i in range(10)])
  index_before = records.load_index(path)
  more = str(tmp_path / "more.tfrecord")
  _write(more, [dict(FEATURES, key=f"m-{i}") for i in range(5)])
  with open(path, "ab") as f:  # the shard grew after its index was written
    f.write(open(more, "rb").read())
  heard = []
  index = records.load_index(path, log=heard.append)
  assert len(index_before) == 10 and len(index) == 15
  assert (
    "bytes past the index's last record (it grew)" in heard[0]
    and path + records.INDEX_SUFFIX in heard[0]
  )
  side = open(path + records.INDEX_SUFFIX, "rb").read()
  # rewritten ...
  _write(path, [dict(FEATURES, key=f"r-{i}", caption="z" * (3 * i)) for i in range(8)])
  open(path + records.INDEX_SUFFIX, "wb").write(side)  # ... and the old index put back
  heard.clear()
  keys = [records.decode_example(r)["key"] for r in records.iter_records(path)]
  assert keys == [f"r-{i}".encode() for i in range(8)]  # no CRC mismatches: the shard was scanned
  records.load_index(path, log=heard.append)
  assert "record 0 is not where the index says (the shard was rewritten)" in heard[0]


def test_corrupt_or_pickled_indexes_are_named_and_never_unpickled(tmp_path):
  path = str(tmp_path / records.shard_name("t", 0, 1))
  _write(path, [dict(FEATURES, key=f"k-{i}") for i in range(4)])
  side = path + records.INDEX_SUFFIX
  np.save(side, np.array([{"offset": 0}], dtype=object), allow_pickle=True)
  heard = []
  assert len(records.load_index(path, log=heard.append)) == 4
  assert side in heard[0] and "Python objects, which are never loaded" in heard[0]
  assert "allow_pickle" not in heard[0]
  open(side, "wb").write(b"\x93NUMPY garbage")
  heard.clear()
  assert len(records.load_index(path, log=heard.append)) == 4
  assert side in heard[0] and "not a valid index" in heard[0] and "allow_pickle" not in heard[0]


def test_a_flipped_length_bit_loses_one_record_not_the_rest_of_the_shard(tmp_path):
  tf = pytest.importorskip("tensorflow")
  path = str(tmp_path / "tf-00000-of-00001.tfrecord")  # index-less, as TensorFlow writes them
  _tf_shard(path, 20, tf)
  good = records.scan(path)
  data = bytearray(open(path, "rb").read())
  # one bit of record 5's length: a length far past the end of the shard
  data[int(good[5, 0]) + 5] ^= 0x04
  open(path, "wb").write(bytes(data))
  heard = []
  index = records.scan(path, log=heard.append)
  assert (index[:, 1] == records.LOST).sum() == 1 and len(index) == 20
  assert (
    f"bytes {good[5, 0]}-{good[6, 0]} have no valid record framing" in heard[0]
    and "about 1 record" in heard[0]
  )
  src = sources.ShardSource([path])
  items = [src[i] for i in range(len(src))]
  assert [it[2] for it in items].count("corrupt_framing") == 1
  assert [it[1]["key"] for it in items if it[1]] == [f"k-{i}".encode() for i in range(20) if i != 5]


def test_manifest_disagreements_fail_in_one_line(tmp_path):
  paths = [str(tmp_path / records.shard_name("d", i, 2)) for i in range(2)]
  for i, p in enumerate(paths):
    _write(p, [dict(FEATURES, key=f"k-{i}-{j}") for j in range(3)])
  records.write_manifest(str(tmp_path), "d", paths, [3, 3])
  assert len(sources.ShardSource(records.resolve_shards(str(tmp_path)))) == 6
  records.write_manifest(str(tmp_path), "d", paths, [3, 4])
  with pytest.raises(
    ValueError, match=r"d-00001-of-00002.tfrecord has 3 records but .*manifest.json says 4"
  ):
    sources.ShardSource(records.resolve_shards(str(tmp_path)))
  records.write_manifest(str(tmp_path), "d", paths, [3, 3])
  os.remove(paths[1])
  with pytest.raises(
    ValueError, match=r"manifest.json lists 1 shard\(s\) missing from .*d-00001-of-00002"
  ):
    sources.ShardSource(records.resolve_shards(str(tmp_path)))
