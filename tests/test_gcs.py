"""gs:// against a real storage server, clean and through the fault proxy: train, SIGKILL mid-checkpoint,
resume bit-identically, export, load, evaluate; damaged checkpoints in a bucket; the workdir lock's
preconditions and heartbeat; an unreachable endpoint. The pod and the data tools:
test_gcs_pod.py."""

import glob
import json
import os
import re
import subprocess
import tempfile
import time

import numpy as np
import pytest

import tripletclip_jax as tc

from gcs_server import _point_clients_at, bucket, faulty_bucket, faulty_gcs, gcs  # noqa: F401 - fixtures
from test_trainer import (
  _cli_overrides,
  _cpu_env,
  _losses,
  _main,
  data_dir,
  launcher,
  small_config,
  train,
)  # noqa: F401
from tripletclip_jax import fileio


# Through the fault proxy only (deterministic: each request's fault is drawn from the proxy's fixed
# seed and the request itself); a clean run would add a minute and a half to `make test`, and a kill
# after a committed checkpoint is test_trainer.py's.
def test_train_kill_resume_export_and_load_in_a_bucket(faulty_bucket, data_dir, tmp_path, capsys):
  """The workdir in the bucket, through the fault proxy: SIGKILL as soon as checkpoint 4 is being
  written (checkpoint 2 is committed by then), restart, and the losses equal an uninterrupted local
  run bit for bit; export to the bucket, load and evaluate from it. (Training data read from the
  bucket under faults, across a restart: test_gcs_pod.py's pod.)"""
  bucket, env = faulty_bucket
  bucket = f"{bucket}/faults"
  fileio.upload(os.path.join(data_dir, "sugarcrepe"), f"{bucket}/sugarcrepe")
  args = _cli_overrides(data_dir, total_steps=6, checkpoint_every_steps=2, log_every_steps=2)
  local = str(tmp_path / "local")
  # The uninterrupted reference, on a local disk, alongside the bucket runs (which mostly wait on
  # the storage's retries).
  ref = _main(local, *args, env=_cpu_env(2))

  remote = f"{bucket}/run"
  p = _main(remote, *args, env=env)
  t = time.time()
  while not fileio.glob(f"{remote}/checkpoints/4*/*"):  # the first object of checkpoint 4
    assert p.poll() is None, p.communicate()[1][-3000:]
    assert time.time() - t < 300, "no checkpoint 4 in the bucket"
    time.sleep(0.1)
  p.kill()
  p.wait()
  # resumes from step 2 (4, had its commit raced the kill) in the bucket
  p = _main(remote, *args, env=env)
  out, err = p.communicate(timeout=600)
  assert p.returncode == 0, err[-3000:]
  assert "Resumed from step" in out
  _, err = ref.communicate(timeout=600)
  assert ref.returncode == 0, err[-3000:]
  assert _losses(remote) == _losses(local)  # bit-identical

  leftovers = lambda: set(glob.glob(os.path.join(tempfile.gettempdir(), "tripletclip-hf-*")))
  before = leftovers()
  # The two command-line tools in this process (its storage clients use the same proxy): a process
  # each would add about 4 s of start-up.
  launcher("export_hf").main(["--workdir", remote, "--output_dir", f"{bucket}/hf"])
  hf, ckpt, on_disk = (
    tc.load(m).encode_texts(["a red circle"]) for m in (f"{bucket}/hf", remote, local)
  )
  assert np.abs(hf - ckpt).max() < 1e-5 and np.array_equal(ckpt, on_disk)
  capsys.readouterr()
  launcher("eval").main(
    ["--model", f"{bucket}/hf", "--tasks", "sugarcrepe", "--sugarcrepe_dir", f"{bucket}/sugarcrepe"]
    + ["--output", f"{bucket}/eval/results.json"]
  )
  assert "sugarcrepe: " in capsys.readouterr().out
  assert {"results.json", "results.md"} <= set(fileio.listdir(f"{bucket}/eval"))
  # tc.load and eval.py --model gs://... removed their local copies of the model
  assert leftovers() == before
  assert {"checkpoints", "metrics.jsonl", "tensorboard"} <= set(fileio.listdir(remote))


def test_a_checkpoint_written_by_another_process_is_seen_by_a_process_that_listed_before(bucket):
  """This process's listing cache is forgotten where it reads a workdir's checkpoints: a notebook
  that listed a run once still loads the run's newest checkpoint later (test_gcs_pod.py loads a
  pod's final checkpoint this way, in the process that listed its preemption checkpoint)."""
  import gcsfs

  url, _ = bucket
  folder = f"{url}/listed/checkpoints"
  fileio.write_bytes(f"{folder}/2/x", b"1")
  assert fileio.listdir(folder) == ["2"]  # cached from here on
  other = gcsfs.GCSFileSystem(skip_instance_cache=True)  # another process's client
  other.pipe(f"{folder}/4/x", b"1")
  assert fileio.listdir(folder) == ["2"]  # what gcsfs's cache still says
  fileio.forget_listings(folder)
  assert sorted(fileio.listdir(folder)) == ["2", "4"]


def test_bucket_lock_refuses_a_live_holder_and_takes_over_a_dead_one(bucket, monkeypatch):
  from tripletclip_jax.train import workdir_lock

  bucket, env = bucket
  w = f"{bucket}/locked"
  with workdir_lock.WorkdirLock(w):
    with pytest.raises(
      workdir_lock.WorkdirBusy, match=rf"{w} is in use by another trainer \(pid {os.getpid()} on "
    ):
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
  for stale in (
    dict(pid=dead.pid),
    dict(host="another-vm", heartbeat=time.time() - 2 * workdir_lock.STALE_S),
  ):
    holder(**stale)  # a dead process on this host, or a heartbeat long gone: taken over
    with workdir_lock.WorkdirLock(w):
      assert json.loads(fileio.read_bytes(f"{w}/{workdir_lock.LOCK_FILE}"))["pid"] == os.getpid()


def test_two_trainers_starting_at_once_get_exactly_one_bucket_lock(bucket):
  """The lock object is created with ifGenerationMatch=0: of two takers at the same instant, one
  wins."""
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


def test_a_holder_whose_heartbeats_fail_loses_the_lock_and_stops(faulty_gcs, monkeypatch, caplog):
  """The holder's requests go through the proxy, which then answers every one with 503: its
  heartbeat goes stale, a second trainer takes the lock over (at the generation it read), and when
  the bucket answers again the first one's next heartbeat fails its precondition: it marks the lock
  lost, and the trainer stops at its next save."""
  from tripletclip_jax.train import loop, workdir_lock

  url, env, proxy = faulty_gcs
  monkeypatch.setattr(workdir_lock, "HEARTBEAT_S", 0.3)
  monkeypatch.setattr(workdir_lock, "STALE_S", 1.5)
  w = f"{url}/heartbeat"
  _point_clients_at(env, monkeypatch)  # the holder talks through the proxy ...
  holder = workdir_lock.WorkdirLock(w)
  holder.__enter__()
  # ... the newcomer does not
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://{proxy.upstream}")
  newcomer = workdir_lock.WorkdirLock(w)
  with pytest.raises(workdir_lock.WorkdirBusy):
    newcomer.__enter__()  # a live holder
  try:
    proxy.set(unavailable=1.0)
    t = time.time()
    while True:
      try:
        newcomer.__enter__()
        break
      except workdir_lock.WorkdirBusy:
        assert time.time() - t < 30, "the failing holder's lock never went stale"
        time.sleep(0.2)
    assert "Heartbeat of" in caplog.text
  finally:
    proxy.set(unavailable=0)
  t = time.time()
  while holder.lost is None:
    assert time.time() - t < 30, "the holder never noticed"
    time.sleep(0.1)
  assert (
    holder.lost["token"] == newcomer._info["token"]
    and "was taken over by another trainer" in caplog.text
  )
  with pytest.raises(
    ValueError,
    match=r"taken over by another trainer .* last complete checkpoint \(step 4\) is "
    "intact",
  ):
    loop.check_lock(holder, w, 4)
  holder.__exit__(None, None, None)  # leaves the newcomer's lock alone
  assert (
    json.loads(fileio.read_bytes(f"{w}/{workdir_lock.LOCK_FILE}"))["token"]
    == newcomer._info["token"]
  )
  newcomer.__exit__(None, None, None)


def test_a_damaged_checkpoint_in_a_bucket_falls_back_and_the_run_finishes(
  bucket, data_dir, tmp_path, capfd
):
  """A bucket has no rename: the damaged checkpoint must be moved whole, or the next save of its
  step fails ("already exists"). The resumed run saves that step again and ends as an uninterrupted
  local run does."""
  from test_checkpoint import _flip

  bucket, _ = bucket
  cfg = dict(total_steps=6, checkpoint_every_steps=2, eval_every_steps=100)
  local, remote = str(tmp_path / "local"), f"{bucket}/fallback"
  train(small_config(data_dir, **cfg), local)
  # checkpoints 2 and 4
  train(small_config(data_dir, stop_after_steps=4, **cfg), remote)
  state = f"{remote}/checkpoints/4/state"
  fs = fileio.fsspec_fs(state)
  victim = "gs://" + max(fs.find(state), key=fs.size)  # the largest object: an OCDBT data file
  (tmp_path / "victim").write_bytes(fileio.read_bytes(victim))
  _flip(str(tmp_path / "victim"))
  fileio.write_bytes(victim, (tmp_path / "victim").read_bytes())
  capfd.readouterr()
  train(small_config(data_dir, **cfg), remote)
  out, err = capfd.readouterr()
  assert re.search(r"Checkpoint 4 in .* is damaged: .*falling back to checkpoint 2", out), out
  assert "Resumed from step 2" in out and err.count("Exception ignored") <= 1, err[-3000:]
  assert sorted(fileio.listdir(f"{remote}/checkpoints")) == ["2", "4", "6"]
  assert _losses(remote) == _losses(local)


def test_an_unreachable_checkpoint_endpoint_is_one_line(bucket, data_dir, tmp_path):
  """tensorstore pointed at a closed port (gcsfs at the server): one line within a bounded time, not
  15 minutes of silent retries followed by hundreds of lines."""
  bucket, env = bucket
  t = time.time()
  p = _main(
    f"{bucket}/unreachable",
    *_cli_overrides(data_dir),
    env=dict(env, TENSORSTORE_GCS_HTTP_URL="http://127.0.0.1:9"),
  )
  out, err = p.communicate(timeout=240)
  lines = [line for line in err.splitlines() if line.startswith("error:")]
  assert p.returncode == 1 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
  assert (
    f"Cannot reach {bucket}/unreachable through tensorstore" in lines[0]
    and "127.0.0.1:9" in lines[0]
  )
  assert time.time() - t < 120
