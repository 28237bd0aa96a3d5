"""gs:// everywhere, against a real storage server: train, stop, resume bit-identically, export, load, evaluate;
the data tools write to the bucket."""

import json
import os
import subprocess
import sys

import pytest

from gcs_server import gcs  # noqa: F401 - the emulator fixture
from test_trainer import ROOT, _cli_overrides, _cpu_env, _losses, _main, data_dir  # noqa: F401


def _in_bucket(env, code):
  """Runs Python `code` in a fresh process pointed at the emulator; returns its stdout."""
  r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert r.returncode == 0, r.stderr[-3000:]
  return r.stdout


def test_train_stop_resume_export_and_load_in_a_bucket(gcs, data_dir, tmp_path):
  bucket, env = gcs
  env = dict(env, **{k: v for k, v in _cpu_env(2).items() if k in ("XLA_FLAGS", "JAX_PLATFORMS")})
  _in_bucket(env, f"from tripletclip_jax import fileio; fileio.upload({data_dir!r}, '{bucket}/data')")
  args = _cli_overrides(data_dir, total_steps=8, checkpoint_every_steps=4, log_every_steps=2)
  local = str(tmp_path / "local")
  p = _main(local, *args, env=_cpu_env(2))  # the uninterrupted reference, on a local disk
  out, err = p.communicate(timeout=600)
  assert p.returncode == 0, err[-3000:]

  remote = f"{bucket}/run"
  args = [a for a in args if not a.startswith("--config.data.demo_data_dir")] + \
      [f"--config.data.demo_data_dir={bucket}/data", "--config.checkpoint_ocdbt=false"]
  p = _main(remote, *args, "--config.stop_after_steps=4", env=env)
  out, err = p.communicate(timeout=600)
  assert p.returncode == 0, err[-3000:]
  p = _main(remote, *args, env=env)  # resumes from step 4 in the bucket
  out, err = p.communicate(timeout=600)
  assert p.returncode == 0, err[-3000:]
  assert "Resumed from step 4" in out
  got = json.loads(_in_bucket(env, "import json; from tripletclip_jax.train.metrics import read_metrics; "
                                    f"print(json.dumps({{s: [r['loss'], r['grad_norm']] for s, r in read_metrics('{remote}').items() if 'loss' in r}}))"))
  want = {str(s): [v[0], v[2]] for s, v in _losses(local).items()}
  assert got == want  # bit-identical: same floats through JSON

  r = subprocess.run([sys.executable, "launch/export_hf.py", "--workdir", remote, "--output_dir", f"{bucket}/hf"],
                     env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert r.returncode == 0, r.stderr[-3000:]
  code = ("import numpy as np, tripletclip_jax as tc; "
          f"a = tc.load('{bucket}/hf').encode_texts(['a red circle']); b = tc.load('{remote}').encode_texts(['a red circle']); "
          f"c = tc.load({local!r}).encode_texts(['a red circle']); "
          "print(float(np.abs(a - b).max()), float(np.abs(b - c).max()))")
  hf_vs_ckpt, remote_vs_local = map(float, _in_bucket(env, code).split())
  assert hf_vs_ckpt < 1e-5 and remote_vs_local == 0.0
  r = subprocess.run([sys.executable, "launch/eval.py", "--model", f"{bucket}/hf", "--tasks", "sugarcrepe",
                      "--sugarcrepe_dir", f"{bucket}/data/sugarcrepe", "--output", f"{bucket}/eval/results.json"],
                     env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert r.returncode == 0 and "sugarcrepe: " in r.stdout, r.stderr[-3000:]
  listing = _in_bucket(env, f"from tripletclip_jax import fileio; print(fileio.glob('{remote}/*'), "
                            f"fileio.listdir('{bucket}/eval'))")
  assert "'results.json'" in listing and "'results.md'" in listing
  for name in ("checkpoints", "metrics.jsonl", "tensorboard"):
    assert f"{remote}/{name}" in listing


def test_bucket_lock_refuses_a_live_holder_and_takes_over_a_dead_one(gcs, monkeypatch):
  import time
  from gcs_server import client_env
  from tripletclip_jax import fileio
  from tripletclip_jax.train import workdir_lock
  bucket, env = gcs
  for k in client_env("x"):
    monkeypatch.setenv(k, env[k])
  monkeypatch.setattr(workdir_lock, "SETTLE_S", 0.2)
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


def test_converted_and_generated_data_go_straight_to_a_bucket(gcs, tmp_path, monkeypatch):
  """convert_wds.py reads tars from and writes shards to the bucket; make_negatives.py stages its captions
  locally and publishes finished shards; reruns skip what the bucket already holds."""
  pytest.importorskip("diffusers")
  from gcs_server import client_env
  from test_import_formats import _write_tar
  from test_negatives import _inputs
  from tiny_models import make_tiny_llm, make_tiny_t2i
  from tripletclip_jax import fileio
  from tripletclip_jax.data import records
  bucket, env = gcs
  for k in client_env("x"):
    monkeypatch.setenv(k, env[k])
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
  cmd = [sys.executable, "launch/make_negatives.py", "--input", _inputs(tmp_path, n=10), "--output_dir",
         f"{bucket}/negatives", "--staging_dir", str(tmp_path / "staging"), "--llm", llm, "--t2i", t2i,
         "--image_size", "32", "--batch_size", "4", "--chunk_size", "8", "--max_new_tokens", "12"]
  r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert r.returncode == 0 and "records=10" in r.stdout, r.stderr[-3000:]
  assert sorted(os.listdir(tmp_path / "staging" / "captions")) == ["chunk-00000.jsonl", "chunk-00001.jsonl"]
  listing = fileio.listdir(f"{bucket}/negatives")
  assert "manifest.json" in listing and "negatives-00001-of-00002.tfrecord.summary.json" in listing, listing
  manifest = json.loads(fileio.read_bytes(f"{bucket}/negatives/manifest.json"))
  assert [s["num_examples"] for s in manifest["shards"]] == [8, 2]
  r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert "has 2, 2 already done" in r.stdout and "records=0" in r.stdout, r.stderr[-3000:]
