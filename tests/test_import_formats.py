"""Imports of released data: webdataset tars (convert_wds.py) and the TFDS builder."""

import io
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from tripletclip_jax.data import pipeline, records, sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _jpeg(color, size=48):
  buf = io.BytesIO()
  Image.new("RGB", (size, size), color).save(buf, format="JPEG")
  return buf.getvalue()


def _write_tar(path, n, start=0, broken=False):
  with tarfile.open(path, "w") as tar:
    for i in range(start, start + n):
      members = {
        "image": _jpeg("red"),
        "neg_image": _jpeg("blue"),
        "caption": f"a red thing {i}".encode(),
        "neg_caption": f"a blue thing {i}".encode(),
        "clip_score": b"0.31",
      }
      if broken and i == start:
        del members["neg_caption"]
      for ext, data in members.items():
        info = tarfile.TarInfo(f"{i:06d}.{ext}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def test_convert_wds_round_trip_and_resume(tmp_path):
  src = tmp_path / "wds"
  src.mkdir()
  _write_tar(src / "a.tar", 5)
  _write_tar(src / "b.tar", 4, start=5, broken=True)
  out = tmp_path / "out"
  cmd = [
    sys.executable,
    "launch/convert_wds.py",
    "--input",
    str(src / "*.tar"),
    "--output_dir",
    str(out),
    "--num_workers",
    "2",
  ]
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
  assert "skipped 1 incomplete samples" in r.stdout and "examples=8" in r.stdout
  rows = [
    records.decode_example(p)
    for s in records.resolve_shards(str(out))
    for p in records.iter_records(s)
  ]
  assert [r["key"] for r in rows] == [f"{i:06d}".encode() for i in range(9) if i != 5]
  r0 = rows[0]
  assert r0["image"] == _jpeg("red") and r0["neg_image"] == _jpeg("blue")
  assert r0["caption"] == b"a red thing 0" and r0["neg_caption"] == b"a blue thing 0"
  assert r0["clip_score"] == pytest.approx(0.31) and r0["source"] == b"a.tar"
  # resume: nothing left to do
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
  assert "2 already converted; converting 0" in r.stdout


def test_tfds_builder_feeds_the_same_pipeline(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  from tripletclip_jax.data import tfds_builder  # noqa: F401 - registers the builder

  manual = tmp_path / "manual"
  manual.mkdir()
  _write_tar(manual / "a.tar", 6)
  builder = tfds.builder("triplet_data", data_dir=str(tmp_path / "tfds"))
  builder.download_and_prepare(
    file_format="array_record", download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
  )
  source = tfds.data_source("triplet_data", split="train", data_dir=str(tmp_path / "tfds"))
  assert len(source) == 6
  ds = pipeline.make_dataset(
    sources.TFDSSource(source, "triplet_data"),
    batch_size=3,
    image_size=32,
    context_length=16,
    train=False,
  )
  batches = list(ds)
  assert sorted(k.decode() for b in batches for k in b["key"]) == [f"{i:06d}" for i in range(6)]
  assert batches[0]["image"].shape == (3, 32, 32, 3) and np.all(batches[0]["text"][:, 0] == 49406)
