"""`train_and_evaluate(config, workdir)`: the one trainer, with pluggable losses, in four parts.

- build: `experiment.build` makes and checks the data, evaluators, model, optimizer, step and
  checkpoints;
- restore: the newest intact checkpoint (under `resume`'s rules), a Hugging Face CLIP, or the
  initial state;
- loop: the jitted donated step, metrics every `log_every_steps`, Orbax checkpoints with the Grain
  iterator state (exact resume), SIGTERM -> checkpoint and clean exit, evaluation every
  `eval_every_steps`;
- finish: the final evaluation table and the Hugging Face export.
"""

import contextlib
import os
import signal
import sys
import time

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from tripletclip_jax import checkpoint as ckpt
from tripletclip_jax import evaluate, fileio, sharding
from tripletclip_jax.data import pipeline
from tripletclip_jax.evaluate import report
from tripletclip_jax.inference import Model
from tripletclip_jax.train import resume
from tripletclip_jax.train.config import writers
from tripletclip_jax.train.experiment import Experiment, build, hf_path, resolve
from tripletclip_jax.train.metrics import MetricWriter, check_wandb, measure_matmul_peak
from tripletclip_jax.train.startup import StartupClock, use_compilation_cache
from tripletclip_jax.train.step import with_loss_params
from tripletclip_jax.train.workdir_lock import WorkdirLock


class Preempted(Exception):
  """Raised after SIGTERM once the checkpoint is safely written."""


def maybe_initialize_distributed(config) -> None:
  """jax.distributed for multi-process runs: explicit coordinator settings, or a TPU pod."""
  if jax.distributed.is_initialized():
    return
  d = config.distributed
  if d.coordinator_address:
    if d.num_processes and d.num_processes > 1:
      jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only used on CPU backends
    jax.distributed.initialize(d.coordinator_address, d.num_processes, d.process_id)
  elif len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1:
    jax.distributed.initialize()  # a TPU pod slice: every setting comes from the environment


def full_params(state):
  """Parameters as host numpy on every process (gathered across hosts when sharded)."""
  if jax.process_count() == 1:
    return jax.device_get(state.params)
  return multihost_utils.process_allgather(state.params, tiled=True)


def train_and_evaluate(config, workdir: str, *, started: float | None = None, devices=None) -> dict:
  """Trains `config` in `workdir` (resuming if it holds a checkpoint); returns the final metrics.

  `started`: the process's start in `time.perf_counter()` seconds, so that the start-up report
  (printed after the first step, and in its metrics as `startup/*`) counts the imports too.
  `devices`: the devices the mesh spans (default: all); a subset, such as the first two of a
  host's eight, only in a single-process run.
  """
  clock = StartupClock(started)
  preempted = []  # SIGTERM (TPU preemption) only sets a flag: the loop checkpoints and exits cleanly
  previous = signal.signal(signal.SIGTERM, lambda *_: preempted.append(True))
  try:
    plan = resolve(config)  # validated and resolved once, before anything is written
    clock.mark("config")
    maybe_initialize_distributed(config)
    jax.devices()  # the backend starts here
    if devices is not None and jax.process_count() > 1:
      raise ValueError(
        "train_and_evaluate(devices=...) is for one process; a pod's mesh spans every device."
      )
    clock.mark("devices")
    workdir = fileio.absolute(workdir)  # a gs:// workdir stays as it is
    use_compilation_cache(config.compilation_cache_dir, workdir)  # before the first compile
    if "wandb" in writers(config):
      check_wandb(workdir)  # before the lock, the first write
    log = print if jax.process_index() == 0 else (lambda *_: None)
    # Process 0 speaks for the run; the lock is also the first write, so an unwritable workdir fails
    # here.
    with WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext() as lock:
      clock.mark("workdir")
      # The state is made (or restored) by the run: a resume never draws initial parameters.
      exp = build(plan, workdir, devices=devices, abstract=True, log=log, clock=clock)
      try:
        log("Parameter groups: " + "; ".join(exp.param_groups))
        run = _Run(exp, preempted, lock, clock)
        run.restore()
        results = run.loop()
        return results if results.get("stopped") else run.finish(results)
      finally:  # the data's worker processes, also when a resume is refused (closing twice is harmless)
        if hasattr(exp.train_data, "close"):
          exp.train_data.close()
  finally:
    signal.signal(signal.SIGTERM, previous)


def check_lock(lock, workdir: str, last_good: int | None) -> None:
  """Stops the run, on every process, when a bucket lock's heartbeat found another trainer holding
  it."""
  lost = getattr(lock, "lost", None) is not None
  if jax.process_count() > 1:
    lost = bool(multihost_utils.broadcast_one_to_all(np.int32(lost)))
  if lost:
    last = f"step {last_good}" if last_good is not None else "none yet"
    raise ValueError(
      f"The lock on {workdir} was taken over by another trainer after this one's heartbeats failed: "
      f"stopping without saving, so as not to write over it. The last complete checkpoint ({last}) "
      "is intact."
    )


class _Run:
  """One run of a built experiment: the state that changes as it trains, and the four parts that
  change it."""

  def __init__(self, exp: Experiment, preempted: list, lock, clock: StartupClock):
    self.exp, self.preempted, self.lock, self.clock = exp, preempted, lock, clock
    self.is_main = jax.process_index() == 0
    self.state = exp.state
    self.start, self.latest = 0, None
    self.bad_totals = np.zeros(len(pipeline.BAD_REASONS), np.int64)
    self.history = []  # changes of data.train / seed / workers across resumes, kept in every later meta
    self.pending = []  # the device metrics of the steps since the last check
    self.saver = None
    self.eval_model = None  # made at the first evaluation
    self.startup = {}  # the start-up's metrics, until the first record carries them
    self.peak, self.saved_peak = None, None  # the MFU denominator; the resumed meta's

  # ---- Restore: the newest intact checkpoint, or a Hugging Face CLIP, or the initial state.
  def restore(self) -> None:
    exp, config = self.exp, self.exp.config
    check = lambda meta, step: resume.check_resume(meta, step, exp)  # noqa: E731
    restored = ckpt.restore_intact(exp.checkpoints, exp.workdir, exp.abstract_state, check)
    if restored is not None:
      self.latest, self.state, meta, data_state = restored
      resume.restore_iterator(exp.train_data, data_state, meta, config.data.num_workers)
      self.history = list(meta.get("resume_changes", []))
      self.saved_peak = meta.get("matmul_peak")
      for k, (a, b) in resume.recorded_changes(meta, config).items():
        print(f"Resuming with {k} changed: {a} -> {b} (recorded in the checkpoint's meta)")
        self.history.append({"step": self.latest, "key": k, "before": a, "now": b})
      self.start = self.latest
      saved = np.asarray(meta["bad_counts"], np.int64)  # older checkpoints may count fewer reasons
      self.bad_totals[: len(saved)] = saved
      print(f"Resumed from step {self.latest} in {ckpt.checkpoint_dir(exp.workdir)}")
      what = "restore"
    else:
      self.state = exp.initial_state()
      if config.init_from:
        self.state = self.init_from_hf(config.init_from)
      what = "init"
    # dispatch is asynchronous: without the wait the first batch would be charged for the init
    jax.block_until_ready(self.state)
    self.clock.mark(what)
    # Before any step: a full disk is known now, not at the first save.
    ckpt.check_space(exp.workdir, self.state, exp.checkpoints.latest_step())

  def init_from_hf(self, init_from: str):
    """The initial state with a Hugging Face CLIP's weights (and a fresh optimizer state)."""
    from tripletclip_jax.interop import hf

    exp, state = self.exp, self.state
    _, hf_params = hf.load_hf(hf_path(init_from))
    hf_params = with_loss_params(hf_params, exp.loss, overwrite=False)  # e.g. SigLIP's bias, new
    params = jax.device_put(hf_params, exp.state_shardings.params)
    return jax.jit(
      lambda p: state.replace(params=p, opt_state=exp.tx.init(p)),
      out_shardings=exp.state_shardings,
    )(params)

  def matmul_peak(self) -> float:
    """FLOP/s per chip for MFU: the config's, the one measured earlier on this kind of device (in
    the resumed checkpoint's meta: a restart does not measure again), or measured now."""
    config = self.exp.config
    if config.peak_tflops_per_chip:
      return config.peak_tflops_per_chip * 1e12
    dtype = self.exp.model_config.dtype
    key = f"{jax.devices()[0].device_kind} {dtype}"
    if self.saved_peak and self.saved_peak.get("device") == key:
      return float(self.saved_peak["flops"])
    return measure_matmul_peak(dtype)

  def meta(self, step: int) -> dict:
    exp, config = self.exp, self.exp.config
    schedule = {
      "total_steps": exp.total_steps,
      "batch_size": config.batch_size,
      "loss": exp.loss.name,
      "union": exp.loss.union,
    }
    return {
      "step": step,
      "seed": config.seed,
      "schedule": schedule,
      "bad_counts": self.bad_totals.tolist(),
      "model_config": exp.model_config.to_dict(),
      "config": config.to_dict(),
      "resume_changes": self.history,
      # The iterator state counts records of each process's stream (older in-memory runs: batches).
      "data_position": "records",
      "pairs_seen": step * exp.pairs_per_step,
      "matmul_peak": {
        "device": f"{jax.devices()[0].device_kind} {exp.model_config.dtype}",
        "flops": self.peak,
      },
    }

  def evaluate(self, step: int) -> dict:
    """{eval/NAME/METRIC} of the evaluators due at `step`, on the live, sharded parameters."""
    if self.eval_model is None:
      # One evaluation model for the run: its encoders compile once, and each evaluation hands it
      # the live parameters (no gather of the whole model to every host). The training bar owns the
      # terminal.
      self.eval_model = Model(
        self.exp.model_config, self.state.params, progress=False, mesh=self.exp.mesh
      )
    self.eval_model.params = self.state.params
    return evaluate.run(
      self.eval_model, self.exp.evaluators, step, last=step == self.exp.total_steps
    )

  def check_finite(self) -> dict | None:
    """Fetches the pending metrics; the last step's, or FloatingPointError naming the last good
    checkpoint."""
    host, self.pending = jax.device_get(self.pending), []
    for m in host:
      if not np.isfinite(m["loss"]):
        last_good = self.saver.last_good
        where = (
          f"step {last_good} in {ckpt.checkpoint_dir(self.exp.workdir)}"
          if last_good is not None
          else "none yet"
        )
        raise FloatingPointError(
          f"Non-finite loss ({m['loss']}) at step {m['_step']}; last good checkpoint: "
          f"{where}. Lower the learning rate or enable grad_clip_norm, then restart."
        )
    return host[-1] if host else None

  # ---- The loop: step, log, checkpoint (periodic, preemption, stop_after_steps), evaluate.
  def loop(self) -> dict:
    exp, config = self.exp, self.exp.config
    workdir, total = exp.workdir, exp.total_steps
    writer = self.writer = MetricWriter(
      workdir,
      enabled=self.is_main,
      echo=tqdm.write,  # prints above the progress bar
      writers=writers(config),
      wandb=config.wandb.to_dict(),
      config=config.to_dict(),
    )
    self.clock.mark("writers")
    peak = self.peak = self.matmul_peak()
    self.clock.mark("peak")
    self.saver = ckpt.Saver(exp.checkpoints, workdir, self.latest)
    results: dict = {}
    t_data, t_last = 0.0, time.perf_counter()
    bar = tqdm(
      total=total,
      initial=self.start,
      unit="step",
      dynamic_ncols=True,
      disable=not (self.is_main and config.progress_bar and sys.stdout.isatty()),
    )
    # On a pod each host gets its SIGTERM at a different step; jax.distributed's preemption service
    # (which takes over the signal) agrees on the first step that every host can still reach.
    multi_process = jax.process_count() > 1
    profile = tuple(config.profile_steps) if config.profile_steps and self.is_main else None
    tracing = False
    try:
      for step in range(self.start, total):
        if profile and step == profile[0]:
          jax.profiler.start_trace(fileio.join(workdir, "profile"))
          tracing = True
        t0 = time.perf_counter()
        batch = next(exp.train_data)
        t_data += time.perf_counter() - t0
        self.bad_totals += batch.pop("bad_counts")
        del batch["key"]
        if step == self.start:
          self.clock.mark("first batch")
        self.state, m = exp.train_step(self.state, sharding.put_batch(batch, exp.mesh))
        s = step + 1
        if step == self.start:
          self.startup = self.first_step_done()
        self.pending.append(dict(m, _step=s))
        bar.update(1)
        if tracing and s >= profile[1]:
          jax.block_until_ready(self.state)
          jax.profiler.stop_trace()
          tracing = False
          tqdm.write(
            f"Wrote a profile of steps {profile[0] + 1}-{s} to {fileio.join(workdir, 'profile')}"
          )
        if s % config.log_every_steps == 0 or s == total:
          rec = self.metrics_record(s, time.perf_counter() - t_last, t_data, peak)
          rec.update(self.startup)
          self.startup = {}  # in the first record only
          writer.write(s, rec)
          bar.set_postfix(loss=f"{rec['loss']:.3f}")
          t_data, t_last = 0.0, time.perf_counter()
        stopping = config.stop_after_steps is not None and s - self.start >= config.stop_after_steps
        preempt = (
          multihost_utils.reached_preemption_sync_point(s)
          if multi_process
          else bool(self.preempted)
        )
        if s % config.checkpoint_every_steps == 0 or s == total or preempt or stopping:
          self.checkpoint(s, preempt)
        if any(ev.due(s, s == total) for ev in exp.evaluators):
          results = self.evaluate(s)
          writer.write(s, results, echo=False)
          if s == total:
            writer.table(s, "eval/table", results)
          t_last = time.perf_counter()  # evaluation time is not training throughput
        if stopping and s < total:
          print(f"Stopped after {config.stop_after_steps} steps at step {s}; restart to resume.")
          return {"step": s, "stopped": True}
    finally:
      if tracing:
        jax.profiler.stop_trace()
      bar.close()
      self.saver.wait()
      if hasattr(exp.train_data, "close"):  # the workers are not needed for the final evaluation
        exp.train_data.close()
      writer.close()
    return results

  def first_step_done(self) -> dict:
    """Waits for the first step, prints where the start-up went; its `startup/*` metrics."""
    jax.block_until_ready(self.state)
    self.clock.mark("first step")
    if self.is_main:
      tqdm.write(self.clock.report())
    return self.clock.finish()

  def metrics_record(self, s: int, seconds: float, data_seconds: float, peak: float) -> dict:
    """The record `log_every_steps` writes at step `s`: the last step's metrics (checked finite),
    throughput and MFU over the `seconds` since the last record, the data wait, the bad records so
    far."""
    exp = self.exp
    interval, last = len(self.pending), self.check_finite()
    ex_s = interval * exp.config.batch_size / seconds
    bad = self.bad_totals
    if jax.process_count() > 1:
      bad = multihost_utils.process_allgather(bad).reshape(-1, len(bad)).sum(0)
    n_chips = exp.mesh.size  # the run's devices (every device, unless a subset was given)
    return {
      **{k: v for k, v in last.items() if k != "_step"},
      "examples_per_s": ex_s,
      "examples_per_s_per_chip": ex_s / n_chips,
      "mfu": ex_s * exp.flops_per_example / (peak * n_chips),
      "data_wait_fraction": data_seconds / seconds,
      "pairs_seen": s * exp.pairs_per_step,
      **{f"bad_records/{r}": int(c) for r, c in zip(pipeline.BAD_REASONS, bad)},
    }

  def checkpoint(self, s: int, preempted: bool) -> None:
    """Saves step `s` once its loss is known finite, the lock still ours and the disk big enough;
    after SIGTERM waits for it and raises Preempted."""
    workdir = self.exp.workdir
    self.check_finite()
    self.saver.wait()  # the space check measures the previous checkpoint: it must be complete
    check_lock(self.lock, workdir, self.saver.last_good)
    ckpt.check_space(workdir, self.state, self.saver.last_good)
    self.saver.save(s, self.state, self.exp.train_data, self.meta(s))
    if preempted:
      self.saver.wait()
      raise Preempted(
        f"SIGTERM: saved checkpoint {s} in {ckpt.checkpoint_dir(workdir)}; restart to resume."
      )

  # ---- Finish: the final evaluation table and the Hugging Face export.
  def finish(self, results: dict) -> dict:
    exp, config = self.exp, self.exp.config
    if exp.evaluators and not results:  # the workdir already held the final checkpoint
      results = self.evaluate(exp.total_steps)
    # every process takes part in the gather; only process 0 writes
    params = full_params(self.state)
    if exp.evaluators and self.is_main:
      print(
        f"\nHeld-out compositional evaluation ({exp.loss.name}, step {exp.total_steps}), accuracy %:"
      )
      print(report.training_table(results, exp.evaluators))
    if config.export_hf_dir and self.is_main:
      from tripletclip_jax.interop import hf

      out = fileio.join(exp.workdir, config.export_hf_dir)
      hf.export_hf(
        exp.model_config, params, out, train_config=config.to_dict(), eval_results=results
      )
      print(f"Exported a transformers CLIPModel to {out}")
    scale = {"logit_scale": float(np.exp(params["logit_scale"]))} if "logit_scale" in params else {}
    return {
      "step": exp.total_steps,
      "pairs_seen": exp.total_steps * exp.pairs_per_step,
      **scale,
      **results,
    }
