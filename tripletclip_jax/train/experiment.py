"""`build(config, workdir) -> Experiment`: everything a run needs, built and checked once, before
any step.

    exp = build(config, "runs/demo")     # data, evaluators, model, optimizer, step, checkpoints
    batch = {k: v for k, v in next(exp.train_data).items() if k in exp.loss.batch_keys}
    state, metrics = exp.train_step(exp.state, sharding.put_batch(batch, exp.mesh))

    exp = build(config, devices=tpu_devices, abstract=True)  # no data, no workdir, nothing
    allocated: exp.train_step.jitted.lower(exp.state, exp.batch_spec())  # an ahead-of-time compile
    (tpu_plan.py)

This is the one place that reads the training config and looks the loss up by name. Below it,
modules are handed what they need: the `Loss` object, the model config, the mesh, numbers.
"""

import dataclasses
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from tripletclip_jax import checkpoint as ckpt
from tripletclip_jax import evaluate, losses, sharding
from tripletclip_jax.data import pipeline
from tripletclip_jax.losses import Loss
from tripletclip_jax.models import CLIPConfig, get_preset, init_params, train_flops_per_example
from tripletclip_jax.configlib import ConfigError
from tripletclip_jax.train.config import SOURCES, resolve_total_steps, validate
from tripletclip_jax.train.optim import check_groups, make_optimizer
from tripletclip_jax.train.step import (
  TrainState,
  abstract_train_state,
  create_train_state,
  make_train_step,
  with_loss_params,
)


@dataclasses.dataclass
class Experiment:
  """A built run. `state` is initialised in its shardings (ShapeDtypeStructs when built
  `abstract`)."""

  config: ml_collections.ConfigDict
  workdir: str | None
  mesh: Mesh
  model_config: CLIPConfig
  loss: Loss
  total_steps: int
  tx: optax.GradientTransformation
  schedule: Callable[[int], float]
  state: TrainState
  state_shardings: Any
  train_step: Callable  # (state, batch) -> (state, metrics); `.jitted` for ahead-of-time lowering
  # This process's batches (numpy, plus 'key' and 'bad_counts'); None when built without a workdir.
  train_data: Iterator[dict] | None = None
  evaluators: list = dataclasses.field(default_factory=list)
  checkpoints: Any = None  # the Orbax CheckpointManager of the workdir
  param_groups: list[str] = dataclasses.field(default_factory=list)  # one line per optimizer group

  @property
  def abstract_state(self) -> TrainState:
    """The state's ShapeDtypeStructs with their shardings (the restore target)."""
    return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      self.state,
      self.state_shardings,
    )

  def initial_state(self) -> TrainState:
    """The initial state (parameters drawn from `config.seed`), made directly in its shardings."""
    return create_train_state(
      self.model_config,
      self.tx,
      self.mesh,
      jax.random.key(self.config.seed),
      self.loss,
      self.config.mesh.min_fsdp_size,
    )[0]

  @property
  def pairs_per_step(self) -> float:
    """Image-text pairs encoded per step (the compute-matching unit)."""
    return self.config.batch_size * self.loss.pairs_per_example

  @property
  def flops_per_example(self) -> float:
    """Training FLOPs per positive pair (analytic; `models.flops`)."""
    return train_flops_per_example(self.model_config, self.loss)

  def batch_spec(self, batch_size: int | None = None, uint8: bool = True) -> dict:
    """ShapeDtypeStructs of one global batch of what the loss reads, sharded over the mesh."""
    n, s = batch_size or self.config.batch_size, self.model_config.vision.image_size
    image = ((n, s, s, 3), jnp.uint8 if uint8 else jnp.float32)
    shapes = {
      "image": image,
      "neg_image": image,
      "text": ((n, self.model_config.text.context_length), jnp.int32),
    }
    shapes["neg_text"] = shapes["text"]
    bsh = sharding.batch_sharding(self.mesh)
    return {k: jax.ShapeDtypeStruct(*shapes[k], sharding=bsh) for k in self.loss.batch_keys}


def model_config(config) -> CLIPConfig:
  """CLIPConfig from the preset (or from a Hugging Face checkpoint for init_from) plus compute
  options."""
  m = config.model
  if config.init_from:
    from tripletclip_jax.interop import hf

    cfg = hf.config_from_hf(hf_path(config.init_from))
    # The network is the checkpoint's: an ablation key may restate it, not change it.
    restated = {
      "patch_size": [cfg.vision.patch_size],
      "layers": [cfg.vision.layers, cfg.text.layers],
    }
    for key, have in restated.items():
      if m[key] is not None and any(h != m[key] for h in have):
        raise ConfigError(
          f"config.model.{key}={m[key]}, but config.init_from={config.init_from!r} has "
          f"{' and '.join(map(str, sorted(set(have))))}: the network is the checkpoint's; unset "
          f"config.model.{key}."
        )
    return cfg.replace(dtype=m.dtype, remat=m.remat, attention_impl=m.attention_impl)
  cfg = get_preset(
    m.preset, dtype=m.dtype, remat=m.remat, act=m.act, attention_impl=m.attention_impl
  )
  if m.patch_size is not None:  # an ablation of the preset's patch size
    if m.patch_size <= 0 or cfg.vision.image_size % m.patch_size:
      raise ConfigError(
        f"config.model.patch_size={m.patch_size}: must divide the preset's image size "
        f"{cfg.vision.image_size}."
      )
    cfg = cfg.replace(vision=dataclasses.replace(cfg.vision, patch_size=m.patch_size))
  if m.layers is not None:  # an ablation of the preset's depth, both towers alike
    if m.layers <= 0:
      raise ConfigError(
        f"config.model.layers={m.layers}: must be positive (residual blocks a tower)."
      )
    cfg = cfg.with_layers(m.layers)
  return cfg


def hf_path(init_from: str) -> str:
  """The path of `config.init_from="hf:PATH"`."""
  if not init_from.startswith("hf:"):
    raise ConfigError(f"config.init_from={init_from!r}: use 'hf:PATH_OR_HUB_ID'.")
  return init_from[3:]


def loss_from_config(config) -> Loss:
  """The registered loss `config.loss`, with the initial values `config.loss_init` sets."""
  loss = losses.get(config.loss)
  values = {k: v for k, v in config.loss_init.items() if v is not None}
  try:
    return loss.with_init(**values)
  except ValueError as e:
    raise ConfigError(f"config.loss_init: {e}") from None


def check_layout(config, mesh: Mesh) -> None:
  """One-line errors for a batch that does not split over the mesh, the micro-batches or the
  processes."""
  sharding.check_batch_divides(config.batch_size, mesh)
  if config.accum_steps > 1:
    if config.batch_size % config.accum_steps:
      raise ConfigError(
        f"batch_size={config.batch_size} does not split into accum_steps={config.accum_steps}."
      )
    sharding.check_batch_divides(
      config.batch_size // config.accum_steps, mesh, "batch_size / accum_steps"
    )
  if config.batch_size % jax.process_count():
    raise ConfigError(
      f"batch_size={config.batch_size} does not split over {jax.process_count()} processes."
    )


def training_source(config, workdir: str, log=print) -> tuple[str, dict]:
  """(training data, `config.evals` entries): the configured ones, or those of `data.source` (such
  as the demo world, written once), which `data.train` overrides."""
  d, evals = config.data, dict(config.evals)
  if d.train is None and d.source:
    train, source_evals = SOURCES[d.source.type].prepare_source(d.source, workdir, config.seed, log)
    return train, evals or source_evals
  if d.train is None:
    raise ConfigError(
      "config.data.train is not set: pass --config.data.train=GLOB_OR_DIR of TripletData shards."
    )
  return d.train, evals


def _training_data(config, source, model_cfg: CLIPConfig, loss: Loss):
  """The Grain training iterator for this process's share of the global batch."""
  d = config.data
  # decode and transfer only what the loss uses
  return iter(
    pipeline.make_dataset(
      source,
      batch_size=config.batch_size // jax.process_count(),
      image_size=model_cfg.vision.image_size,
      context_length=model_cfg.text.context_length,
      train=True,
      seed=config.seed,
      num_workers=d.num_workers,
      read_threads=d.read_threads,
      crop_scale=tuple(d.crop_scale),
      augment=d.augment,
      union_negatives=loss.union,
      uint8_images=(jax.default_backend() != "cpu" if d.uint8_images is None else d.uint8_images),
      max_bad_fraction=d.max_bad_fraction,
      bad_window=d.bad_window,
      fields=loss.batch_keys,
      partners=d.partners,
      in_memory=d.in_memory,
    )
  )


@dataclasses.dataclass(frozen=True)
class Plan:
  """What a config resolves to before anything is built or written: the checked config, the `Loss`
  object, the model config and the step count under compute matching."""

  config: ml_collections.ConfigDict
  loss: Loss
  model_config: CLIPConfig
  total_steps: int


def resolve(config) -> Plan:
  """Validates `config` (once per run) and resolves the loss, the model config (from the preset, or
  from a Hugging Face directory for `init_from`) and the step count. Reads at most that directory's
  config; writes nothing. Raises ConfigError in one line naming the key."""
  if isinstance(config, Plan):
    return config
  validate(config)
  loss = loss_from_config(config)
  model_cfg = model_config(config)
  return Plan(config, loss, model_cfg, resolve_total_steps(config, loss, model_cfg))


def build(
  config,
  workdir: str | None = None,
  *,
  devices=None,
  abstract: bool = False,
  log=print,
  clock=None,
) -> Experiment:
  """Builds and checks everything `config` (a config, or its `resolve`d Plan) trains with; nothing
  trains yet.

  With a `workdir`: the training data (the demo world is written first when configured), the
  evaluators (their paths checked now, not after training) and the checkpoint manager. Without one,
  only the model, optimizer and step, for `devices` (default: all; e.g. a TPU topology's).
  `abstract=True` allocates nothing: `exp.state` stays ShapeDtypeStructs until `exp.initial_state()`
  (the trainer skips it when it resumes). Raises ConfigError (or ValueError) in one line naming
  the key for what cannot work. `clock` (a `startup.StartupClock`) is told when the data, the model
  and the checkpoints are ready.
  """
  mark = clock.mark if clock is not None else lambda part: None
  plan = resolve(config)
  config, loss, model_cfg, total_steps = plan.config, plan.loss, plan.model_config, plan.total_steps
  # The data's paths first: a wrong one fails before anything is built.
  source, evaluators = None, []
  if workdir is not None:
    source, eval_specs = training_source(config, workdir, log=log)
    evaluators = evaluate.build(eval_specs, config.eval_every_steps, log=log)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, devices=devices)
  check_layout(config, mesh)
  params = jax.eval_shape(
    lambda r: with_loss_params(init_params(model_cfg, r), loss), jax.random.key(0)
  )
  try:  # before the optimizer labels its groups with the same regexes
    groups = check_groups(params, config.optimizer, pretrained=bool(config.init_from))
  except ValueError as e:
    raise ConfigError(str(e)) from None
  # The data before the model: a wrong path or a damaged manifest fails before parameters are
  # allocated.
  train_data = _training_data(config, source, model_cfg, loss) if workdir is not None else None
  mark("data")
  tx, schedule = make_optimizer(config.optimizer, total_steps)
  shapes, state_sh = abstract_train_state(model_cfg, tx, mesh, loss, config.mesh.min_fsdp_size)
  mark("model")
  step = make_train_step(
    model_cfg,
    tx,
    schedule,
    loss,
    mesh,
    state_sh,
    config.accum_steps,
    config.clamp_logit_scale,
    config.optimizer.frozen,
    config.mesh.grad_reduce_dtype,
  )
  exp = Experiment(
    config=config,
    workdir=workdir,
    mesh=mesh,
    model_config=model_cfg,
    loss=loss,
    total_steps=total_steps,
    tx=tx,
    schedule=schedule,
    state=shapes,
    state_shardings=state_sh,
    train_step=step,
    train_data=train_data,
    evaluators=evaluators,
    param_groups=groups,
  )
  if not abstract:
    exp.state = exp.initial_state()
  if workdir is not None:
    ckpt.check_reachable(workdir)
    exp.checkpoints = ckpt.make_manager(
      workdir, config.keep_checkpoints, use_ocdbt=config.checkpoint_ocdbt
    )
  mark("checkpoints")
  return exp
