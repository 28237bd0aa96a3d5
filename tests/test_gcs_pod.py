"""gs:// at scale, through the fault proxy (5% of requests fail): the data tools read from and
write to the bucket, and a simulated pod is preempted and resumed there. (A
module of its own so that `make test`'s two workers share the bucket tests.)"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest

from gcs_server import faulty_bucket, faulty_gcs, gcs  # noqa: F401 - the server fixtures
from test_trainer import ROOT, _cli_overrides, _finish, _losses, _pod, data_dir, launcher, train  # noqa: F401
import tripletclip_jax as tc
from tripletclip_jax import checkpoint, fileio
from tripletclip_jax.configlib import parse_command_line
from tripletclip_jax.train.metrics import read_metrics


def test_converted_and_generated_data_go_straight_to_a_bucket(faulty_bucket, tmp_path, capsys):
  """Through the fault proxy (5% of requests fail): convert_wds.py reads tars from and writes shards
  to the bucket; make_negatives.py reads a table and its images from the bucket, stages its captions
  locally and publishes finished shards; reruns skip what the bucket already holds. (A clean run makes
  the same assertions; the clean path to the server is test_gcs.py's.)"""
  pytest.importorskip("diffusers")
  from test_import_formats import _write_tar
  from test_negatives import _inputs
  from tripletclip_jax.synth.tiny import make_tiny_llm, make_tiny_t2i
  from tripletclip_jax.data import records

  bucket, env = faulty_bucket
  bucket = f"{bucket}/tools"  # one server for the module: a folder for each test
  (tmp_path / "wds").mkdir()
  _write_tar(tmp_path / "wds" / "a.tar", 5)
  _write_tar(tmp_path / "wds" / "b.tar", 4, start=5, broken=True)
  fileio.upload(str(tmp_path / "wds"), f"{bucket}/wds")
  cmd = [
    sys.executable,
    "launch/convert_wds.py",
    "--input",
    f"{bucket}/wds/*.tar",
    "--output_dir",
    f"{bucket}/converted",
    "--num_workers",
    "2",
  ]
  r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert (
    r.returncode == 0 and "skipped 1 incomplete samples" in r.stdout and "examples=8" in r.stdout
  ), r.stderr
  keys = [
    records.decode_example(p)["key"]
    for s in records.resolve_shards(f"{bucket}/converted")
    for p in records.iter_records(s)
  ]
  assert keys == [f"{i:06d}".encode() for i in range(9) if i != 5]
  # The reruns in this process (its storage clients use the same proxy): a process each would add
  # seconds of start-up.
  capsys.readouterr()
  launcher("convert_wds").main(cmd[2:])
  assert "2 already converted; converting 0" in capsys.readouterr().out

  llm, t2i = make_tiny_llm(str(tmp_path / "llm")), make_tiny_t2i(str(tmp_path / "t2i"))
  (tmp_path / "in").mkdir()
  # a table with relative image paths, two bad rows, one missing image
  _inputs(tmp_path / "in", n=10, bad=True)
  fileio.upload(str(tmp_path / "in"), f"{bucket}/in")
  cmd = [
    sys.executable,
    "launch/make_negatives.py",
    "--input",
    f"{bucket}/in/in.jsonl",
    "--output_dir",
    f"{bucket}/negatives",
    "--staging_dir",
    str(tmp_path / "staging"),
    "--llm",
    llm,
    "--t2i",
    t2i,
    "--image_size",
    "32",
    "--batch_size",
    "4",
    "--chunk_size",
    "8",
    "--max_new_tokens",
    "12",
  ]
  r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert r.returncode == 0 and "records=10" in r.stdout and "input_skipped=3" in r.stdout, r.stderr[
    -3000:
  ]
  assert sorted(os.listdir(tmp_path / "staging" / "captions")) == [
    "chunk-00000.jsonl",
    "chunk-00001.jsonl",
  ]
  listing = fileio.listdir(f"{bucket}/negatives")
  assert (
    "manifest.json" in listing and "negatives-00001-of-00002.tfrecord.summary.json" in listing
  ), listing
  manifest = json.loads(fileio.read_bytes(f"{bucket}/negatives/manifest.json"))
  assert [s["num_examples"] for s in manifest["shards"]] == [8, 2]
  launcher("make_negatives").main(cmd[2:])
  out = capsys.readouterr().out
  assert "has 2, 2 already done" in out and "records=0" in out, out


_POD_ARGS = dict(
  total_steps=6, checkpoint_every_steps=100, log_every_steps=1, preempted_exit_code=75
)


# Through the fault proxy only: its assertions are the clean run's, and the clean path to the server
# is covered by the single-process bucket run (test_gcs.py); a clean pod run would add two minutes
# to `make test`.
def test_a_preempted_pod_in_a_bucket_resumes_and_matches_one_process(
  faulty_bucket, data_dir, tmp_path
):
  """Through the fault proxy (5% of requests fail), 2 processes x 2 devices share a workdir and read
  their slices of the data, both in the bucket: SIGTERM to every process (each at its own moment)
  leaves one checkpoint at a step they agreed on; the restart finishes the run, whose losses and
  evaluation (each process scores its slice) equal one process with the same 4 devices up to the
  collectives' summation order."""
  bucket, env = faulty_bucket
  bucket = f"{bucket}/pod"
  fileio.upload(data_dir, f"{bucket}/poddata")
  args = _cli_overrides(data_dir, **_POD_ARGS)
  one, pod = str(tmp_path / "one"), f"{bucket}/run"
  reference = parse_command_line(["--config", os.path.join(ROOT, "configs/demo.py"), *args])[0]
  args = [a for a in args if not a.startswith("--config.data.source.dir")] + [
    f"--config.data.source.dir={bucket}/poddata"
  ]
  procs = _pod(pod, args, env=env)
  for line in procs[0].stdout:  # training is under way: step 2 is logged
    if line.startswith("[step 2]"):
      break
  for p in procs:
    p.send_signal(signal.SIGTERM)
    time.sleep(0.2)
  outs = _finish(procs, code=75)
  saved = {re.search(r"SIGTERM: saved checkpoint (\d+)", o).group(1) for o in outs}
  assert len(saved) == 1 and fileio.listdir(f"{pod}/checkpoints") == list(saved), saved
  assert 2 <= int(saved.pop()) < 6
  procs = _pod(pod, args, env=env)
  # The reference, while the restart mostly waits on the storage's retries: one process (this one)
  # with the same 4 devices, on a local disk.
  train(reference, one, devices=4)
  outs = _finish(procs)
  assert "Resumed from step" in outs[0]
  want, got = read_metrics(one), read_metrics(pod)
  assert sorted(s for s in got if "loss" in got[s]) == list(range(1, 7))
  for s in range(1, 7):
    np.testing.assert_allclose(
      _losses(pod)[s], _losses(one)[s], rtol=1e-5, atol=1e-6, err_msg=f"step {s}"
    )
  evals = {k: v for k, v in want[6].items() if k.startswith("eval/")}
  assert evals["eval/sugarcrepe_heldout/n"] > 0 and evals["eval/triplet_heldout/n"] > 0
  # Equal counts `n` too: each process scored only its slice (all of it on each would inflate n).
  assert {k: got[6][k] for k in evals} == pytest.approx(evals, abs=1e-6)
  # The pod's checkpoint loads onto one device, its checksums verified on the way (in this process:
  # the restore targets one device whatever the process holds), and encodes as the reference does.
  texts = ["a red circle left of a blue square"]
  np.testing.assert_allclose(
    tc.load(pod).encode_texts(texts), tc.load(one).encode_texts(texts), rtol=1e-4, atol=1e-5
  )
  # Each process's iterator state has the crc the pod recorded for it, also above 2**31 (the final
  # state's), which the gather of an int64 once wrapped negative: a restart called it damaged.
  step, meta = checkpoint.read_meta(pod)
  crcs = [
    zlib.crc32(fileio.read_bytes(f"{pod}/checkpoints/{step}/data/process_{i}-of-2.json"))
    for i in range(2)
  ]
  assert step == 6 and meta["data_checksums"] == crcs and max(crcs) >= 2**31, crcs
