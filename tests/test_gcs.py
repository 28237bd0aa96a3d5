"""gs:// everywhere, against a real storage server: train, SIGKILL, resume bit-identically, export, load,
evaluate; a simulated pod preempted and resumed in the bucket; the data tools read from and write to it."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import tripletclip_jax as tc

from gcs_server import FAULTS, client_env, faulty_gcs, gcs  # noqa: F401 - the server fixtures
from test_trainer import ROOT, _cli_overrides, _cpu_env, _finish, _losses, _main, _pod, data_dir, small_config  # noqa: F401,E501
from tripletclip_jax import fileio
from tripletclip_jax.train.metrics import read_metrics


def _point_clients_at(env, monkeypatch):
  """This process's clients use `env`'s server (fsspec caches a filesystem per process: forget it)."""
  import gcsfs
  for k in client_env("x"):
    monkeypatch.setenv(k, env[k])
  gcsfs.GCSFileSystem.clear_instance_cache()


@pytest.fixture
def bucket(gcs, monkeypatch):
  """(bucket URL, env for subprocesses); this process's clients point at the server too."""
  url, env = gcs
  _point_clients_at(env, monkeypatch)
  return url, dict(env, **{k: v for k, v in _cpu_env(2).items() if k in ("XLA_FLAGS", "JAX_PLATFORMS")})


@pytest.fixture
def faulty_bucket(faulty_gcs, monkeypatch):
  """As `bucket`, with every client going through the fault proxy at FAULTS' rates (5% of requests)."""
  url, env, proxy = faulty_gcs
  proxy.set(**FAULTS)
  _point_clients_at(env, monkeypatch)
  yield url, dict(env, **{k: v for k, v in _cpu_env(2).items() if k in ("XLA_FLAGS", "JAX_PLATFORMS")})
  proxy.set(unavailable=0, rate_limited=0, drop=0, delay=0)
  assert sum(v for k, v in proxy.counts.items() if k != "forwarded"), "no fault was injected"


@pytest.mark.parametrize("faults", [False, True], ids=["clean", "faults"])
def test_train_kill_resume_export_and_load_in_a_bucket(faults, data_dir, tmp_path, request):
  """Data and workdir in the bucket: SIGKILL after the step-4 checkpoint is committed (with faults: a stop and
  resume at step 2 first, and the SIGKILL as soon as checkpoint 4 is being written), restart, and the losses
  equal an uninterrupted local run bit for bit; export to the bucket, load and evaluate from it."""
  bucket, env = request.getfixturevalue("faulty_bucket" if faults else "bucket")
  bucket = f"{bucket}/{'faults' if faults else 'clean'}"  # one server for the module: a folder each
  fileio.upload(data_dir, f"{bucket}/data")
  args = _cli_overrides(data_dir, total_steps=8, checkpoint_every_steps=4, log_every_steps=2)
  local = str(tmp_path / "local")
  p = _main(local, *args, env=_cpu_env(2))  # the uninterrupted reference, on a local disk
  out, err = p.communicate(timeout=600)
  assert p.returncode == 0, err[-3000:]

  remote = f"{bucket}/run"
  args = [a for a in args if not a.startswith("--config.data.demo_data_dir")] + \
      [f"--config.data.demo_data_dir={bucket}/data"]
  if faults:
    p = _main(remote, *args, "--config.stop_after_steps=2", env=env)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0 and "Stopped after 2 steps" in out, err[-3000:]
  p = _main(remote, *args, env=env)
  t = time.time()
  # Orbax's commit marker on a bucket; with faults, the first object of checkpoint 4 (mid-checkpoint)
  started = lambda: fileio.glob(f"{remote}/checkpoints/4*/*") if faults else \
      fileio.exists(f"{remote}/checkpoints/4/commit_success.txt")
  while not started():
    assert p.poll() is None, p.communicate()[1][-3000:]
    assert time.time() - t < 300, "no checkpoint 4 in the bucket"
    time.sleep(0.1)
  p.kill()
  p.wait()
  p = _main(remote, *args, env=env)  # resumes from step 4 (2 with faults, unless 4 was committed) in the bucket
  out, err = p.communicate(timeout=600)
  assert p.returncode == 0, err[-3000:]
  assert ("Resumed from step" if faults else "Resumed from step 4") in out
  assert _losses(remote) == _losses(local)  # bit-identical

  r = subprocess.run([sys.executable, "launch/export_hf.py", "--workdir", remote, "--output_dir", f"{bucket}/hf"],
                     env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert r.returncode == 0, r.stderr[-3000:]
  hf, ckpt, on_disk = (tc.load(m).encode_texts(["a red circle"]) for m in (f"{bucket}/hf", remote, local))
  assert np.abs(hf - ckpt).max() < 1e-5 and np.array_equal(ckpt, on_disk)
  r = subprocess.run([sys.executable, "launch/eval.py", "--model", f"{bucket}/hf", "--tasks", "sugarcrepe",
                      "--sugarcrepe_dir", f"{bucket}/data/sugarcrepe", "--output", f"{bucket}/eval/results.json"],
                     env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert r.returncode == 0 and "sugarcrepe: " in r.stdout, r.stderr[-3000:]
  assert {"results.json", "results.md"} <= set(fileio.listdir(f"{bucket}/eval"))
  assert {"checkpoints", "metrics.jsonl", "tensorboard"} <= set(fileio.listdir(remote))


def test_bucket_lock_refuses_a_live_holder_and_takes_over_a_dead_one(bucket, monkeypatch):
  from tripletclip_jax.train import workdir_lock
  bucket, env = bucket
  w = f"{bucket}/locked"
  with workdir_lock.WorkdirLock(w):
    with pytest.raises(workdir_lock.WorkdirBusy, match=rf"{w} is in use by another trainer \(pid {os.getpid()} on "):
      workdir_lock.WorkdirLock(w).__enter__()
  assert not fileio.exists(f"{w}/{workdir_lock.LOCK_FILE}")  # released on exit

  def holder(**kw):
    h = {**workdir_lock._holder(), "token": "other", "heartbeat": time.time(), **kw}
    fileio.write_bytes(f"{w}/{workdir_lock.LOCK_FILE}", json.dumps(h).encode())
  dead = subprocess.Popen(["true"])
  dead.wait()
  holder(host="another-vm")  # alive elsewhere, fresh heartbeat: refused
  with pytest.raises(workdir_lock.WorkdirBusy, match="on another-vm"):
    workdir_lock.WorkdirLock(w).__enter__()
  for stale in (dict(pid=dead.pid), dict(host="another-vm", heartbeat=time.time() - 2 * workdir_lock.STALE_S)):
    holder(**stale)  # a dead process on this host, or a heartbeat long gone: taken over
    with workdir_lock.WorkdirLock(w):
      assert json.loads(fileio.read_bytes(f"{w}/{workdir_lock.LOCK_FILE}"))["pid"] == os.getpid()


def test_two_trainers_starting_at_once_get_exactly_one_bucket_lock(bucket):
  """The lock object is created with ifGenerationMatch=0: of two takers at the same instant, one wins."""
  import threading
  from tripletclip_jax.train import workdir_lock
  bucket, _ = bucket
  for round_ in range(20):
    w, start, results = f"{bucket}/race{round_}", threading.Barrier(2), []
    locks = [workdir_lock.WorkdirLock(w) for _ in range(2)]
    for lock in locks:
      lock._blob()  # connect first, so that both requests leave at the barrier

    def take(lock):
      start.wait()
      try:
        lock.__enter__()
        results.append("won")
      except workdir_lock.WorkdirBusy:
        results.append("busy")
    threads = [threading.Thread(target=take, args=(lock,)) for lock in locks]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    assert sorted(results) == ["busy", "won"], (round_, results)
    for lock in locks:
      lock.__exit__(None, None, None)
    assert not fileio.exists(f"{w}/{workdir_lock.LOCK_FILE}")  # the winner released it


def test_a_damaged_checkpoint_in_a_bucket_falls_back_and_the_run_finishes(bucket, data_dir, tmp_path, capfd):
  """A bucket has no rename: the damaged checkpoint must be moved whole, or the next save of its step fails
  ("already exists"). The resumed run saves that step again and ends as an uninterrupted local run does."""
  from test_checkpoint import _flip
  from tripletclip_jax.train.loop import train_and_evaluate
  bucket, _ = bucket
  cfg = dict(total_steps=6, checkpoint_every_steps=2, eval_every_steps=100)
  local, remote = str(tmp_path / "local"), f"{bucket}/fallback"
  train_and_evaluate(small_config(data_dir, **cfg), local)
  train_and_evaluate(small_config(data_dir, stop_after_steps=4, **cfg), remote)  # checkpoints 2 and 4
  state = f"{remote}/checkpoints/4/state"
  fs = fileio.fsspec_fs(state)
  victim = "gs://" + max(fs.find(state), key=fs.size)  # the largest object: an OCDBT data file
  (tmp_path / "victim").write_bytes(fileio.read_bytes(victim))
  _flip(str(tmp_path / "victim"))
  fileio.write_bytes(victim, (tmp_path / "victim").read_bytes())
  capfd.readouterr()
  train_and_evaluate(small_config(data_dir, **cfg), remote)
  out, err = capfd.readouterr()
  assert re.search(r"Checkpoint 4 in .* is damaged: .*falling back to checkpoint 2", out), out
  assert "Resumed from step 2" in out and err.count("Exception ignored") <= 1, err[-3000:]
  assert sorted(fileio.listdir(f"{remote}/checkpoints")) == ["2", "4", "6"]
  assert _losses(remote) == _losses(local)


def test_an_unreachable_checkpoint_endpoint_is_one_line(bucket, data_dir, tmp_path):
  """tensorstore pointed at a closed port (gcsfs at the server): one line within a bounded time, not 15 minutes
  of silent retries followed by hundreds of lines."""
  bucket, env = bucket
  t = time.time()
  p = _main(f"{bucket}/unreachable", *_cli_overrides(data_dir), env=dict(env, TENSORSTORE_GCS_HTTP_URL="http://127.0.0.1:9"))
  out, err = p.communicate(timeout=240)
  lines = [l for l in err.splitlines() if l.startswith("error:")]
  assert p.returncode == 1 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
  assert f"Cannot reach {bucket}/unreachable through tensorstore" in lines[0] and "127.0.0.1:9" in lines[0]
  assert time.time() - t < 120


def test_converted_and_generated_data_go_straight_to_a_bucket(faulty_bucket, tmp_path):
  """Through the fault proxy (5% of requests fail): convert_wds.py reads tars from and writes shards to the bucket;
  make_negatives.py reads a table and its images from the bucket, stages its captions locally and publishes
  finished shards; reruns skip what the bucket already holds."""
  pytest.importorskip("diffusers")
  from test_import_formats import _write_tar
  from test_negatives import _inputs
  from tiny_models import make_tiny_llm, make_tiny_t2i
  from tripletclip_jax.data import records
  bucket, env = faulty_bucket
  (tmp_path / "wds").mkdir()
  _write_tar(tmp_path / "wds" / "a.tar", 5)
  _write_tar(tmp_path / "wds" / "b.tar", 4, start=5, broken=True)
  fileio.upload(str(tmp_path / "wds"), f"{bucket}/wds")
  cmd = [sys.executable, "launch/convert_wds.py", "--input", f"{bucket}/wds/*.tar", "--output_dir",
         f"{bucket}/converted", "--num_workers", "2"]
  r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert r.returncode == 0 and "skipped 1 incomplete samples" in r.stdout and "examples=8" in r.stdout, r.stderr
  keys = [records.decode_example(p)["key"] for s in records.resolve_shards(f"{bucket}/converted")
          for p in records.iter_records(s)]
  assert keys == [f"{i:06d}".encode() for i in range(9) if i != 5]
  r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert "2 already converted; converting 0" in r.stdout, r.stderr

  llm, t2i = make_tiny_llm(str(tmp_path / "llm")), make_tiny_t2i(str(tmp_path / "t2i"))
  (tmp_path / "in").mkdir()
  _inputs(tmp_path / "in", n=10, bad=True)  # a table with relative image paths, two bad rows, one missing image
  fileio.upload(str(tmp_path / "in"), f"{bucket}/in")
  cmd = [sys.executable, "launch/make_negatives.py", "--input", f"{bucket}/in/in.jsonl", "--output_dir",
         f"{bucket}/negatives", "--staging_dir", str(tmp_path / "staging"), "--llm", llm, "--t2i", t2i,
         "--image_size", "32", "--batch_size", "4", "--chunk_size", "8", "--max_new_tokens", "12"]
  r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert r.returncode == 0 and "records=10" in r.stdout and "input_skipped=3" in r.stdout, r.stderr[-3000:]
  assert sorted(os.listdir(tmp_path / "staging" / "captions")) == ["chunk-00000.jsonl", "chunk-00001.jsonl"]
  listing = fileio.listdir(f"{bucket}/negatives")
  assert "manifest.json" in listing and "negatives-00001-of-00002.tfrecord.summary.json" in listing, listing
  manifest = json.loads(fileio.read_bytes(f"{bucket}/negatives/manifest.json"))
  assert [s["num_examples"] for s in manifest["shards"]] == [8, 2]
  r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert "has 2, 2 already done" in r.stdout and "records=0" in r.stdout, r.stderr[-3000:]


def test_a_preempted_pod_in_a_bucket_resumes_and_matches_one_process(faulty_bucket, data_dir, tmp_path):
  """Through the fault proxy (5% of requests fail), 4 processes x 2 devices share a workdir and read their slices
  of the data, both in the bucket: SIGTERM to
  every process (each at its own moment) leaves one checkpoint at a step they agreed on; the restart finishes
  the run, whose losses and evaluation (each process scores its slice) equal one process with the same 8 devices
  up to the collectives' summation order."""
  bucket, env = faulty_bucket
  fileio.upload(data_dir, f"{bucket}/poddata")
  args = _cli_overrides(data_dir, total_steps=6, checkpoint_every_steps=100, log_every_steps=1,
                        preempted_exit_code=75)
  one, pod = str(tmp_path / "one"), f"{bucket}/pod"
  _finish([_main(one, *args, env=_cpu_env(8))])
  args = [a for a in args if not a.startswith("--config.data.demo_data_dir")] + \
      [f"--config.data.demo_data_dir={bucket}/poddata"]
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
  outs = _finish(_pod(pod, args, env=env))
  assert "Resumed from step" in outs[0]
  want, got = read_metrics(one), read_metrics(pod)
  assert sorted(s for s in got if "loss" in got[s]) == list(range(1, 7))
  for s in range(1, 7):
    np.testing.assert_allclose(_losses(pod)[s], _losses(one)[s], rtol=1e-5, atol=1e-6, err_msg=f"step {s}")
  evals = {k: v for k, v in want[6].items() if k.startswith("eval/")}
  assert evals["eval/sugarcrepe_heldout/n"] > 0 and evals["eval/triplet_heldout/n"] > 0
  # Equal counts `n` too: each process scored only its slice (all of it on every process would count 4x).
  assert {k: got[6][k] for k in evals} == pytest.approx(evals, abs=1e-6)
  # The pod's checkpoint loads in one process with one device (its checksums are verified on the way).
  code = f"import jax, tripletclip_jax as tc; assert jax.device_count() == 1; tc.load({pod!r}); print('loaded')"
  r = subprocess.run([sys.executable, "-c", code], env=dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=1"),
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0 and "loaded" in r.stdout, r.stderr[-2000:]
