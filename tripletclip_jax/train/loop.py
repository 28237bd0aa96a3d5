"""`train_and_evaluate(config, workdir)`: the one trainer, with pluggable losses.

Data from Grain, a jitted donated step over the device mesh, metrics every
`log_every_steps`, Orbax checkpoints with the Grain iterator state (exact
resume), SIGTERM -> checkpoint and clean exit, evaluation every
`eval_every_steps` and at the end.
"""

import contextlib
import functools
import os
import signal
import sys
import tempfile
import time

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from tripletclip_jax import checkpoint as ckpt
from tripletclip_jax import evaluate, fileio, losses, sharding
from tripletclip_jax.data import demo_world, pipeline
from tripletclip_jax.evaluate import report
from tripletclip_jax.inference import Model
from tripletclip_jax.models import get_preset, train_flops_per_example
from tripletclip_jax.train.config import pairs_per_example, resolve_total_steps, validate
from tripletclip_jax.train.metrics import MetricWriter, measure_matmul_peak
from tripletclip_jax.train import resume
from tripletclip_jax.train.optim import make_optimizer
from tripletclip_jax.train.step import batch_keys, create_train_state, make_train_step, with_loss_params
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


def model_config(config):
  """CLIPConfig from the preset (or from a Hugging Face checkpoint for init_from) plus compute options."""
  m = config.model
  opts = dict(dtype=m.dtype, remat=m.remat, act=m.act, attention_impl=m.attention_impl)
  if config.init_from:
    from tripletclip_jax.interop import hf
    return hf.config_from_hf(_hf_path(config.init_from)).replace(dtype=m.dtype, remat=m.remat,
                                                                 attention_impl=m.attention_impl)
  return get_preset(m.preset, **opts)


def _hf_path(init_from: str) -> str:
  if not init_from.startswith("hf:"):
    raise ValueError(f"init_from={init_from!r}: use 'hf:PATH_OR_HUB_ID'.")
  return init_from[3:]


def demo_evals(root: str) -> dict:
  """The demo world's benchmarks (docs/demo_world.md), as `config.evals` entries."""
  return {"sugarcrepe_heldout": {"type": "sugarcrepe", "sugarcrepe_dir": fileio.join(root, "sugarcrepe")},
          "sugarcrepe_seen": {"type": "sugarcrepe", "sugarcrepe_dir": fileio.join(root, "sugarcrepe_seen")},
          "triplet_heldout": {"type": "triplet", "pattern": fileio.join(root, "heldout")}}


def prepare_data(config, workdir: str) -> tuple[str, list[evaluate.Evaluator]]:
  """(train shard pattern, evaluators); generates the demo world when configured, whose benchmarks are the
  evaluators unless `config.evals` names others."""
  d = config.data
  train, evals = d.train, dict(config.evals)
  if train is None and d.demo_num_train:
    root = d.demo_data_dir or fileio.join(workdir, "data")
    if jax.process_index() == 0 and not fileio.exists(fileio.join(root, "train", "manifest.json")):
      world = demo_world.WorldConfig.from_dict(d.get("demo_world") or {})
      with tempfile.TemporaryDirectory() as tmp:  # a bucket gets the finished world, its manifests last
        local = root if not fileio.is_remote(root) else tmp
        out = demo_world.write_demo_data(local, d.demo_num_train, d.demo_num_eval, seed=0, cfg=world)
        if local != root:
          fileio.upload(local, root)
      print(f"Generated the demo world in {root}: {out['train']} training triplets ({out['seconds']:.1f}s)")
    multihost_utils.sync_global_devices("demo data")
    train = fileio.join(root, "train")
    evals = evals or demo_evals(root)
  if train is None:
    raise ValueError("config.data.train is not set: pass --config.data.train=GLOB_OR_DIR of TripletData shards.")
  quiet = lambda *_: None
  return train, evaluate.build(evals, config.eval_every_steps, log=print if jax.process_index() == 0 else quiet)


def full_params(state):
  """Parameters as host numpy on every process (gathered across hosts when sharded)."""
  if jax.process_count() == 1:
    return jax.device_get(state.params)
  return multihost_utils.process_allgather(state.params, tiled=True)


def optimizer_from_config(config, total_steps: int):
  """(optax transformation, schedule) from `config.optimizer`."""
  o = config.optimizer
  return make_optimizer(learning_rate=o.learning_rate, total_steps=total_steps, warmup_steps=o.warmup_steps, b1=o.b1,
                        b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, grad_clip_norm=o.grad_clip_norm,
                        decay_rule=o.decay_rule, no_decay=o.no_decay, frozen=o.frozen, lr_multipliers=o.lr_multipliers)


def train_step_from_config(config, model_cfg, tx, schedule, mesh, state_shardings):
  """The jitted train step for `config` (loss, accumulation, clamp, frozen parameters)."""
  return make_train_step(model_cfg, tx, schedule, config.loss, mesh, state_shardings, config.accum_steps,
                         config.clamp_logit_scale, config.optimizer.frozen)


def training_data(config, pattern: str, model_cfg):
  """The Grain training iterator for this process's share of the global batch."""
  return iter(pipeline.make_dataset(
      pattern, batch_size=config.batch_size // jax.process_count(), image_size=model_cfg.vision.image_size,
      context_length=model_cfg.text.context_length, train=True, seed=config.seed,
      num_workers=config.data.num_workers, read_threads=config.data.read_threads,
      crop_scale=tuple(config.data.crop_scale), augment=config.data.augment,
      union_negatives=losses.get(config.loss).union,
      uint8_images=(jax.default_backend() != "cpu" if config.data.uint8_images is None else config.data.uint8_images),
      max_bad_fraction=config.data.max_bad_fraction, bad_window=config.data.bad_window,
      fields=batch_keys(config.loss)))  # decode and transfer only what the loss uses


def check_layout(config, mesh) -> None:
  """One-line errors for a batch that does not split over the mesh, the micro-batches or the processes."""
  sharding.check_batch_divides(config.batch_size, mesh)
  if config.accum_steps > 1:
    if config.batch_size % config.accum_steps:
      raise ValueError(f"batch_size={config.batch_size} does not split into accum_steps={config.accum_steps}.")
    sharding.check_batch_divides(config.batch_size // config.accum_steps, mesh, "batch_size / accum_steps")
  if config.batch_size % jax.process_count():
    raise ValueError(f"batch_size={config.batch_size} does not split over {jax.process_count()} processes.")


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming if it holds a checkpoint); returns the final metrics."""
  preempted = []  # SIGTERM (TPU preemption) only sets a flag: the loop checkpoints and exits cleanly
  previous = signal.signal(signal.SIGTERM, lambda *_: preempted.append(True))
  try:
    validate(config)
    maybe_initialize_distributed(config)
    workdir = fileio.absolute(workdir)  # a gs:// workdir stays as it is
    # Process 0 speaks for the run; the lock is also the first write, so an unwritable workdir fails here.
    with WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext() as lock:
      return _train(config, workdir, preempted, lock)
  finally:
    signal.signal(signal.SIGTERM, previous)


def _check_lock(lock, workdir: str, last_good) -> None:
  """Stops the run, on every process, when a bucket lock's heartbeat found another trainer holding it."""
  lost = getattr(lock, "lost", None) is not None
  if jax.process_count() > 1:
    lost = bool(multihost_utils.broadcast_one_to_all(np.int32(lost)))
  if lost:
    last = f"step {last_good}" if last_good is not None else "none yet"
    raise ValueError(f"The lock on {workdir} was taken over by another trainer after this one's heartbeats failed: "
                     f"stopping without saving, so as not to write over it. The last complete checkpoint ({last}) "
                     "is intact.")


def _train(config, workdir: str, preempted: list, lock) -> dict:
  # ---- Build: data first (a wrong path fails before the model exists), then the model, optimizer, step.
  is_main = jax.process_index() == 0
  train_pattern, evals = prepare_data(config, workdir)
  model_cfg = model_config(config)
  total_steps = resolve_total_steps(config, model_cfg)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  check_layout(config, mesh)
  data_iter = training_data(config, train_pattern, model_cfg)
  tx, schedule = optimizer_from_config(config, total_steps)
  state, state_sh = create_train_state(model_cfg, tx, mesh, jax.random.key(config.seed), config.mesh.min_fsdp_size,
                                       config.loss)
  step_fn = train_step_from_config(config, model_cfg, tx, schedule, mesh, state_sh)

  # ---- Restore the newest intact checkpoint, or start from a Hugging Face CLIP, or from scratch.
  ckpt.check_reachable(workdir)
  manager = ckpt.make_manager(workdir, config.keep_checkpoints, use_ocdbt=config.checkpoint_ocdbt)
  # Before any step: a full disk is known now, not at the first save.
  ckpt.check_space(workdir, state, manager.latest_step())
  start, bad_totals = 0, np.zeros(len(pipeline.BAD_REASONS), np.int64)
  history = []  # changes of data.train / seed / workers across resumes, kept in every later checkpoint's meta
  latest = None
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_sh)
  check = functools.partial(resume.check_resume, config=config, model_cfg=model_cfg, total_steps=total_steps,
                            abstract_state=abstract, workdir=workdir)
  restored = ckpt.restore_intact(manager, workdir, abstract, check)
  if restored is not None:
    latest, state, meta, data_state = restored
    resume.restore_iterator(data_iter, data_state, config.data.num_workers)
    history = list(meta.get("resume_changes", []))
    for k, (a, b) in resume.data_changes(meta, config).items():
      print(f"Resuming with {k} changed: {a} -> {b} (recorded in the checkpoint's meta)")
      history.append({"step": latest, "key": k, "before": a, "now": b})
    start = latest
    saved = np.asarray(meta["bad_counts"], np.int64)  # older checkpoints may count fewer reasons
    bad_totals[:len(saved)] = saved
    print(f"Resumed from step {latest} in {ckpt.checkpoint_dir(workdir)}")
  elif config.init_from:
    from tripletclip_jax.interop import hf
    _, hf_params = hf.load_hf(_hf_path(config.init_from))
    hf_params = with_loss_params(hf_params, config.loss, overwrite=False)  # e.g. SigLIP's bias, new
    params = jax.device_put(hf_params, state_sh.params)
    state = jax.jit(lambda p: state.replace(params=p, opt_state=tx.init(p)), out_shardings=state_sh)(params)

  # ---- Evaluation, metrics and the checkpoint metadata.
  # One evaluation model for the run: its encoders compile once, and each evaluation hands it the live,
  # sharded parameters (no gather of the whole model to every host). The training bar owns the terminal.
  eval_model = Model(model_cfg, state.params, progress=False, mesh=mesh) if evals else None

  def run_evals(params, step) -> dict:
    eval_model.params = params
    return evaluate.run(eval_model, evals, step, last=step == total_steps)

  writer = MetricWriter(workdir, enabled=is_main, echo=tqdm.write)  # prints above the progress bar
  peak = (config.peak_tflops_per_chip * 1e12) if config.peak_tflops_per_chip else measure_matmul_peak(model_cfg.dtype)
  flops_ex = train_flops_per_example(model_cfg, config.loss)
  n_chips = jax.device_count()
  schedule_meta = {"total_steps": total_steps, "batch_size": config.batch_size, "loss": config.loss}

  def meta_for(step):
    return {"step": step, "seed": config.seed, "schedule": schedule_meta, "bad_counts": bad_totals.tolist(),
            "model_config": model_cfg.to_dict(), "config": config.to_dict(), "resume_changes": history,
            "pairs_seen": step * config.batch_size * pairs_per_example(config.loss)}

  pending, t_data, t_last = [], 0.0, time.perf_counter()
  saver = ckpt.Saver(manager, workdir, latest)
  results: dict = {}
  bar = tqdm(total=total_steps, initial=start, disable=not (is_main and config.progress_bar and sys.stdout.isatty()),
             unit="step", dynamic_ncols=True)

  def check_finite():
    nonlocal pending
    host = jax.device_get(pending)
    for m in host:
      if not np.isfinite(m["loss"]):
        last_good = saver.last_good
        where = f"step {last_good} in {ckpt.checkpoint_dir(workdir)}" if last_good is not None else "none yet"
        raise FloatingPointError(f"Non-finite loss ({m['loss']}) at step {m['_step']}; last good checkpoint: "
                                 f"{where}. Lower the learning rate or enable grad_clip_norm, then restart.")
    pending = []
    return host[-1] if host else None

  # On a pod each host gets its SIGTERM at a different step; jax.distributed's preemption service (which
  # takes over the signal) agrees on the first step that every host can still reach.
  multi_process = jax.process_count() > 1
  # ---- The loop: step, log, checkpoint (periodic, preemption, stop_after_steps), evaluate.
  profile = tuple(config.profile_steps) if config.profile_steps and is_main else None
  tracing = False
  try:
    for step in range(start, total_steps):
      if profile and step == profile[0]:
        jax.profiler.start_trace(fileio.join(workdir, "profile"))
        tracing = True
      t0 = time.perf_counter()
      batch = next(data_iter)
      t_data += time.perf_counter() - t0
      bad_totals += batch.pop("bad_counts")
      del batch["key"]
      state, m = step_fn(state, sharding.put_batch(batch, mesh))
      pending.append(dict(m, _step=step + 1))
      s = step + 1
      bar.update(1)
      if tracing and s >= profile[1]:
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
        tracing = False
        tqdm.write(f"Wrote a profile of steps {profile[0] + 1}-{s} to {fileio.join(workdir, 'profile')}")
      if s % config.log_every_steps == 0 or s == total_steps:
        interval = len(pending)
        last = check_finite()
        now = time.perf_counter()
        ex_s = interval * config.batch_size / (now - t_last)
        bad = multihost_utils.process_allgather(bad_totals).reshape(-1, len(bad_totals)).sum(0) \
            if jax.process_count() > 1 else bad_totals
        rec = {k: v for k, v in last.items() if k != "_step"}
        rec.update({"examples_per_s": ex_s, "examples_per_s_per_chip": ex_s / n_chips,
                    "mfu": ex_s * flops_ex / (peak * n_chips), "data_wait_fraction": t_data / (now - t_last),
                    "pairs_seen": s * config.batch_size * pairs_per_example(config.loss),
                    **{f"bad_records/{r}": int(c) for r, c in zip(pipeline.BAD_REASONS, bad)}})
        writer.write(s, rec)
        bar.set_postfix(loss=f"{rec['loss']:.3f}")
        t_data, t_last = 0.0, time.perf_counter()
      stopping = config.stop_after_steps is not None and s - start >= config.stop_after_steps
      preempt = multihost_utils.reached_preemption_sync_point(s) if multi_process else bool(preempted)
      if s % config.checkpoint_every_steps == 0 or s == total_steps or preempt or stopping:
        check_finite()
        saver.wait()  # the space check measures the previous checkpoint: it must be complete
        _check_lock(lock, workdir, saver.last_good)
        ckpt.check_space(workdir, state, saver.last_good)
        saver.save(s, state, data_iter, meta_for(s))
        if preempt:
          saver.wait()
          raise Preempted(f"SIGTERM: saved checkpoint {s} in {ckpt.checkpoint_dir(workdir)}; restart to resume.")
      if any(ev.due(s, s == total_steps) for ev in evals):
        results = run_evals(state.params, s)
        writer.write(s, results, echo=False)
        t_last = time.perf_counter()  # evaluation time is not training throughput
      if stopping and s < total_steps:
        print(f"Stopped after {config.stop_after_steps} steps at step {s}; restart to resume.")
        return {"step": s, "stopped": True}
  finally:
    if tracing:
      jax.profiler.stop_trace()
    bar.close()
    saver.wait()
    if hasattr(data_iter, "close"):
      data_iter.close()
    writer.close()

  # ---- Finish: the final evaluation table and the Hugging Face export.
  if evals and not results:  # the workdir already held the final checkpoint
    results = run_evals(state.params, total_steps)
  params = full_params(state)  # every process takes part in the gather; only process 0 writes
  if evals and is_main:
    print(f"\nHeld-out compositional evaluation ({config.loss}, step {total_steps}), accuracy %:")
    print(report.training_table(results, evals))
  if config.export_hf_dir and is_main:
    from tripletclip_jax.interop import hf
    out = fileio.join(workdir, config.export_hf_dir)
    hf.export_hf(model_cfg, params, out, train_config=config.to_dict(), eval_results=results)
    print(f"Exported a transformers CLIPModel to {out}")
  return {"step": total_steps, "logit_scale": float(np.exp(params["logit_scale"])), **results}
