"""gs:// everywhere, against a real storage server: train, SIGKILL, resume bit-identically, export, load."""

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


def test_train_kill_resume_export_and_load_in_a_bucket(gcs, data_dir, tmp_path):
  bucket, env = gcs
  env = dict(env, **{k: v for k, v in _cpu_env(2).items() if k in ("XLA_FLAGS", "JAX_PLATFORMS")})
  _in_bucket(env, f"from tripletclip_jax import fileio; fileio.upload({data_dir!r}, '{bucket}/data')")
  args = _cli_overrides(data_dir, total_steps=12, checkpoint_every_steps=4, log_every_steps=2)
  local = str(tmp_path / "local")
  p = _main(local, *args, env=_cpu_env(2))  # the uninterrupted reference, on a local disk
  out, err = p.communicate(timeout=600)
  assert p.returncode == 0, err[-3000:]

  remote = f"{bucket}/run"
  args = [a for a in args if not a.startswith("--config.data.demo_data_dir")] + \
      [f"--config.data.demo_data_dir={bucket}/data", "--config.checkpoint_ocdbt=false"]
  p = _main(remote, *args, "--config.stop_after_steps=8", env=env)
  out, err = p.communicate(timeout=600)
  assert p.returncode == 0, err[-3000:]
  p = _main(remote, *args, env=env)  # resumes from step 8 in the bucket
  out, err = p.communicate(timeout=600)
  assert p.returncode == 0, err[-3000:]
  assert "Resumed from step 8" in out
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
