"""gs:// everywhere, against a real storage server: a simulated pod trains, is preempted and resumes bit-identically;
export, load and evaluation read and write the bucket."""

import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from gcs_server import gcs  # noqa: F401 - the emulator fixture
from test_trainer import ROOT, _cli_overrides, _cpu_env, _free_port, _losses, _main, data_dir  # noqa: F401
from tripletclip_jax.train.metrics import read_metrics


def _in_bucket(env, code):
  """Runs Python `code` in a fresh process pointed at the emulator; returns its stdout."""
  r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert r.returncode == 0, r.stderr[-3000:]
  return r.stdout


def _pod(workdir, args, env, processes=4):
  """`processes` trainers x 2 CPU devices on one coordinator: a simulated pod slice sharing `workdir`."""
  port = _free_port()
  return [_main(workdir, *args, f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                f"--config.distributed.num_processes={processes}", f"--config.distributed.process_id={i}", env=env)
          for i in range(processes)]


def _finish(procs, code=0):
  outs = []
  for p in procs:
    out, err = p.communicate(timeout=600)
    assert p.returncode == code, err[-3000:]
    outs.append(out)
  return outs


def test_pod_in_a_bucket_preempts_resumes_exactly_and_matches_one_process(gcs, data_dir, tmp_path):
  """4 processes x 2 devices, workdir and data in the emulator's bucket: SIGTERM to every process leaves one
  complete checkpoint, the restart is bit-identical to an uninterrupted pod run, and both equal 1 x 8 devices
  up to reduction order. Then export, load and evaluate from the bucket."""
  bucket, env = gcs
  env = dict(env, **{k: v for k, v in _cpu_env(2).items() if k in ("XLA_FLAGS", "JAX_PLATFORMS")},
             PYTHONUNBUFFERED="1")  # step lines reach the test as they are printed
  _in_bucket(env, f"from tripletclip_jax import fileio; fileio.upload({data_dir!r}, '{bucket}/data')")
  args = _cli_overrides(data_dir, total_steps=6, checkpoint_every_steps=100, log_every_steps=1,
                        preempted_exit_code=75)
  local = str(tmp_path / "local")
  _finish([_main(local, *args, env=_cpu_env(8))])  # one process, the same 8 devices, on a local disk

  args = [a for a in args if not a.startswith("--config.data.demo_data_dir")] + \
      [f"--config.data.demo_data_dir={bucket}/data", "--config.checkpoint_ocdbt=false"]
  whole, cut = f"{bucket}/pod", f"{bucket}/preempted"
  _finish(_pod(whole, args, env))
  procs = _pod(cut, args, env)
  for line in procs[0].stdout:  # training is under way: step 2 is logged
    if line.startswith("[step 2]"):
      break
  for p in procs:
    p.send_signal(signal.SIGTERM)
  outs = _finish(procs, code=75)
  saved = {re.search(r"SIGTERM: saved checkpoint (\d+)", o).group(1) for o in outs}
  listing = json.loads(_in_bucket(env, f"import json; from tripletclip_jax import fileio; "
                                       f"print(json.dumps(fileio.listdir('{cut}/checkpoints')))"))
  assert len(saved) == 1 and listing == list(saved), (saved, listing)  # one step, agreed by all, nothing partial
  assert 2 <= int(listing[0]) < 6
  outs = _finish(_pod(cut, args, env))
  assert f"Resumed from step {listing[0]}" in outs[0]

  metrics = ("import json; from tripletclip_jax.train.metrics import read_metrics; print(json.dumps([{s: "
             "[r['loss'], r['i2t_acc'], r['grad_norm']] for s, r in read_metrics(w).items() if 'loss' in r} "
             f"for w in ('{whole}', '{cut}')]))")
  got_whole, got_cut = json.loads(_in_bucket(env, metrics))
  assert got_cut == got_whole and sorted(got_whole, key=int) == [str(s) for s in range(1, 7)]  # bit-identical
  for s, v in _losses(local).items():  # the same run on one process; collectives sum in another order
    np.testing.assert_allclose(got_whole[str(s)], v, rtol=1e-5, atol=1e-6, err_msg=f"step {s}")
  evals = ("import json; from tripletclip_jax.train.metrics import read_metrics; "
           f"print(json.dumps({{k: v for k, v in read_metrics('{cut}')[6].items() if k.startswith('eval/')}}))")
  pod_eval, one_eval = json.loads(_in_bucket(env, evals)), {k: v for k, v in read_metrics(local)[6].items()
                                                            if k.startswith("eval/")}
  assert pod_eval.keys() == one_eval.keys() and "eval/triplet_heldout/group" in pod_eval
  for k, v in one_eval.items():  # each process scored its slice; the counts were summed
    assert pod_eval[k] == pytest.approx(v, abs=1e-6), k

  r = subprocess.run([sys.executable, "launch/export_hf.py", "--workdir", cut, "--output_dir", f"{bucket}/hf"],
                     env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert r.returncode == 0, r.stderr[-3000:]
  code = ("import numpy as np, tripletclip_jax as tc; "
          f"a = tc.load('{bucket}/hf').encode_texts(['a red circle']); b = tc.load('{cut}').encode_texts(['a red circle']); "
          f"c = tc.load('{whole}').encode_texts(['a red circle']); "
          "print(float(np.abs(a - b).max()), float(np.abs(b - c).max()))")
  hf_vs_ckpt, cut_vs_whole = map(float, _in_bucket(env, code).split())
  assert hf_vs_ckpt < 1e-5 and cut_vs_whole == 0.0
  r = subprocess.run([sys.executable, "launch/eval.py", "--model", f"{bucket}/hf", "--tasks", "sugarcrepe",
                      "--sugarcrepe_dir", f"{bucket}/data/sugarcrepe", "--output", f"{bucket}/eval/results.json"],
                     env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert r.returncode == 0 and "sugarcrepe: " in r.stdout, r.stderr[-3000:]
  listing = _in_bucket(env, f"from tripletclip_jax import fileio; print(fileio.glob('{cut}/*'), "
                            f"fileio.listdir('{bucket}/eval'))")
  assert "'results.json'" in listing and "'results.md'" in listing
  for name in ("checkpoints", "metrics.jsonl", "tensorboard"):
    assert f"{cut}/{name}" in listing


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
