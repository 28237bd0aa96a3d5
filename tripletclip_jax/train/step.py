"""Train state and the jitted, sharded, donated train step.

The gradient is computed per device (`jax.shard_map`) and summed over devices explicitly, in float32
by default: a reduce-scatter for the weights FSDP splits, an all-reduce for the replicated ones
(`loss_and_grads`); the optimizer update runs on the sharded state. Gradient accumulation keeps the
contrastive loss exact (open_clip's `--accum-freq`): every micro-batch is first encoded without
gradient, then each micro-batch is re-encoded with gradient and scored against the full set of
embeddings. A naive split would shrink the set of negatives.
"""

import math
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, PartitionSpec as P

from tripletclip_jax import sharding
from tripletclip_jax.losses import Loss
from tripletclip_jax.models import CLIP, CLIPConfig, init_params
from tripletclip_jax.train.optim import MAX_LOG_LOGIT_SCALE, frozen_mask


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def with_loss_params(params: dict, loss: Loss, overwrite: bool = True) -> dict:
  """`params` plus the loss's own parameters at their initial values (the towers own none of them);
  `overwrite=False` keeps those present, e.g. the temperature of an imported checkpoint."""
  own = {k: jnp.asarray(v, jnp.float32) for k, v in loss.params if overwrite or k not in params}
  return {**params, **own}


def _init_fn(config: CLIPConfig, tx: optax.GradientTransformation, loss: Loss):
  def init(rng):
    params = with_loss_params(init_params(config, rng), loss)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  return init


def abstract_train_state(
  config: CLIPConfig,
  tx: optax.GradientTransformation,
  mesh: Mesh,
  loss: Loss,
  min_fsdp_size: int = 2**16,
):
  """(ShapeDtypeStructs with shardings, shardings) of the train state: nothing is allocated, so the
  mesh may be one that this machine does not have (an ahead-of-time compile for a TPU topology)."""
  shapes = jax.eval_shape(_init_fn(config, tx, loss), jax.random.key(0))
  shardings = sharding.tree_shardings(shapes, mesh, min_fsdp_size)
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings
  ), shardings


def create_train_state(
  config: CLIPConfig,
  tx: optax.GradientTransformation,
  mesh: Mesh,
  rng,
  loss: Loss,
  min_fsdp_size: int = 2**16,
):
  """Initialises parameters (towers and the loss's own) and optimizer state directly in their
  shardings.

  Returns (state, state_shardings); nothing is ever materialised whole on one host.
  """
  _, shardings = abstract_train_state(config, tx, mesh, loss, min_fsdp_size)
  state = jax.jit(_init_fn(config, tx, loss), out_shardings=shardings)(rng)
  return state, shardings


def encode_batch(model: CLIP, params, batch: dict, loss: Loss) -> dict:
  """Encodes what `loss` needs; positives and negatives share one forward pass per tower ([x; x'],
  [y; y']).

  Called on each device's own rows (inside the step's `shard_map`), so the concatenation moves
  nothing between devices. Returns L2-normalised float32 embeddings {'img', 'txt', 'neg_img',
  'neg_txt'} [n, D] (the negatives are None when unused).
  """
  out = {"neg_img": None, "neg_txt": None}
  for tower, key, neg, method in (
    ("img", "image", loss.neg_images, CLIP.encode_image),
    ("txt", "text", loss.neg_texts, CLIP.encode_text),
  ):
    x = jnp.concatenate([batch[key], batch[f"neg_{key}"]]) if neg else batch[key]
    e = model.apply({"params": params}, x, method=method)
    out[tower], out[f"neg_{tower}"] = jnp.split(e, 2) if neg else (e, None)
  return out


def _shares_and_grads(model, params, batch, loss, rows, accum_steps, mask):
  """This device's shares of (loss, metrics) and its unreduced gradient: d(sum of every device's
  shares) / d(this device's copy of `params`). Summed over devices it is the gradient of the loss.
  Exact under accumulation.
  """
  owned = loss.param_names  # the loss's parameters outside the towers (temperature, bias)
  owned_mask = None if mask is None else {k: mask[k] for k in owned}

  # Called inside the differentiated function, where stop_gradient cuts the backward pass.
  def freeze(p, m):
    return p if m is None else jax.tree.map(lambda x, f: jax.lax.stop_gradient(x) if f else x, p, m)

  def loss_of(e, p):
    return loss.fn(e, {k: p[k] for k in owned}, rows)

  encode = lambda p, b: encode_batch(model, p, b, loss)

  if accum_steps == 1:

    def whole(p):
      p = freeze(p, mask)
      return loss_of(encode(p, batch), p)

    return jax.value_and_grad(whole, has_aux=True)(params)

  n = batch["image"].shape[0]
  if n % accum_steps:
    raise ValueError(
      f"{n} examples per device do not split into accum_steps={accum_steps} micro-batches; make "
      "batch_size / accum_steps a multiple of the device count."
    )
  m = n // accum_steps

  # Micro-batch j takes this device's examples j, j+A, j+2A, ...; every array is permuted the same
  # way, and the losses are invariant to that.
  micro = {
    k: jnp.swapaxes(batch[k].reshape((m, accum_steps) + batch[k].shape[1:]), 0, 1)
    for k in loss.batch_keys
  }
  constant = jax.lax.stop_gradient(params)
  all_e = jax.lax.map(lambda mb: encode(constant, mb), micro)  # each [A, m, D]
  flat = lambda e: jax.tree.map(lambda x: x.reshape((n,) + x.shape[2:]), e)

  # The loss's own parameters get their gradient once, from the full set of embeddings; the
  # micro-batch passes below see them as constants (else each would add its gradient accum_steps
  # times).
  (total, metrics), g_owned = jax.value_and_grad(
    lambda o: loss_of(flat(all_e), freeze(o, owned_mask)), has_aux=True
  )({k: params[k] for k in owned})
  fixed = jax.lax.stop_gradient({k: params[k] for k in owned})

  def micro_grad(acc, j):
    mb = jax.tree.map(lambda x: x[j], micro)

    def f(p):
      e_j = encode(freeze(p, mask), mb)
      e = jax.tree.map(lambda a, b: a.at[j].set(b), all_e, e_j)
      return loss_of(flat(e), fixed)[0]

    g = jax.grad(f)(params)
    return jax.tree.map(lambda a, b: a + b.astype(a.dtype), acc, g), None

  zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), params)  # local sums in float32
  grads, _ = jax.lax.scan(micro_grad, zeros, jnp.arange(accum_steps))
  return (total, metrics), dict(grads, **g_owned)


def _fsdp_dim(spec: P) -> int | None:
  return next((i for i, a in enumerate(spec) if a == "fsdp"), None)


def _all_sum(xs: list, over: tuple, mesh: Mesh, split_sum: bool) -> list:
  """Inside shard_map: each array of `xs` summed over the devices of the mesh axes `over` (every
  device gets the whole sums); `split_sum`: as a reduce-scatter then an all-gather of one flat
  buffer (what CPU backends need, see loss_and_grads)."""
  if not over or not xs:
    return xs
  if not split_sum:
    return jax.lax.psum(xs, over)
  flat, unravel = ravel_pytree(xs)
  devices = math.prod(mesh.shape[a] for a in over)
  padded = jnp.pad(flat, (0, -flat.size % devices))
  summed = jax.lax.all_gather(jax.lax.psum_scatter(padded, over, tiled=True), over, tiled=True)
  return unravel(summed[: flat.size])


def loss_and_grads(
  model: CLIP,
  params,
  batch: dict,
  loss: Loss,
  accum_steps: int = 1,
  mesh: Mesh | None = None,
  frozen: str | None = None,
  grad_reduce_dtype=jnp.float32,
  param_specs=None,
):
  """(loss, metrics), grads (float32, in the parameters' shardings) for one global batch.

  On a mesh the step is explicit, per device (`jax.shard_map`): each device gathers the weights that
  FSDP splits (one all-gather each, in the model's compute dtype), encodes its own rows, scores them
  against every device's embeddings (`losses.Loss`), and differentiates its share. Its gradient is
  then summed over devices once, in `grad_reduce_dtype`: a reduce-scatter over `fsdp` for a split
  weight (each device keeps its slice), then an all-reduce of that slice over `data`; an all-reduce
  over both axes for a replicated one. `param_specs` are the parameters' PartitionSpecs (default:
  the FSDP rule of `sharding.param_spec`). Parameters whose path matches `frozen` are constants:
  their gradients are zeros and no backward pass runs through them.
  """
  mask = frozen_mask(params, frozen) if frozen is not None else None
  n = batch["image"].shape[0]
  if mesh is None or sharding.num_batch_shards(mesh) == 1:
    return _shares_and_grads(model, params, batch, loss, sharding.Rows(n), accum_steps, mask)

  axes = sharding.BATCH_AXES
  rows = sharding.Rows(n, axes, sharding.num_batch_shards(mesh))
  if param_specs is None:
    param_specs = jax.tree.map(lambda x: sharding.param_spec(x.shape, mesh.shape["fsdp"]), params)
  compute = model.config.compute_dtype
  reduce_dtype = jnp.dtype(grad_reduce_dtype)
  data_axes = tuple(a for a in axes if a != "fsdp" and mesh.shape[a] > 1)
  all_axes = tuple(a for a in axes if mesh.shape[a] > 1)
  # On CPU backends (gloo across processes) a large all-reduce in the same program as the loss's
  # reduce-scatters stalled for ~25 s a step on a 4-process pod; the same sum as a reduce-scatter
  # then an all-gather, of one flat buffer, sends the same bytes and does not. TPUs and GPUs get the
  # all-reduces, which XLA combines itself (a flat buffer there costs a copy of every gradient:
  # +0.25 GiB and 39 GiB of HBM traffic in the cc3m plan).
  split_sum = mesh.devices.flat[0].platform == "cpu"

  def gather(x, spec):
    """This device's slice -> the whole weight, in the dtype the model computes in."""
    d = _fsdp_dim(spec)
    return x if d is None else jax.lax.all_gather(x.astype(compute), "fsdp", axis=d, tiled=True)

  def reduce(grads, p):
    """This device's gradients of the whole weights -> the sums over devices of the slices it keeps
    (float32).

    Split weights: one reduce-scatter each over `fsdp`, then an all-reduce of the slices over
    `data`. Replicated ones: an all-reduce over every batch axis. Frozen ones are constants: zeros,
    no collective.
    """
    leaves, treedef = jax.tree.flatten(grads)
    specs = treedef.flatten_up_to(param_specs)
    local = treedef.flatten_up_to(p)
    constant = treedef.flatten_up_to(mask) if mask is not None else [False] * len(leaves)
    out = [jnp.zeros(x.shape, jnp.float32) for x in local]
    replicated, split = [], []
    for i, (g, spec) in enumerate(zip(leaves, specs)):
      d = _fsdp_dim(spec)
      if constant[i]:
        continue
      if d is None:
        replicated.append(i)
      else:
        split.append(i)
        leaves[i] = jax.lax.psum_scatter(
          g.astype(reduce_dtype), "fsdp", scatter_dimension=d, tiled=True
        )
    for group, over in ((split, data_axes), (replicated, all_axes)):
      summed = _all_sum([leaves[i].astype(reduce_dtype) for i in group], over, mesh, split_sum)
      for i, g in zip(group, summed):
        out[i] = g.astype(jnp.float32)
    return treedef.unflatten(out)

  def per_device(p, b):
    full = jax.tree.map(gather, p, param_specs)
    (share, metrics), g = _shares_and_grads(model, full, b, loss, rows, accum_steps, mask)
    return jax.lax.psum((share, metrics), axes), reduce(g, p)

  return jax.shard_map(
    per_device,
    mesh=mesh,
    in_specs=(param_specs, P(axes)),
    out_specs=(P(), param_specs),
    check_vma=False,  # every collective is explicit; each device differentiates its own share
  )(params, batch)


def make_train_step(
  config: CLIPConfig,
  tx: optax.GradientTransformation,
  schedule: Callable,
  loss: Loss,
  mesh: Mesh,
  state_shardings,
  accum_steps: int = 1,
  clamp_logit_scale: bool = True,
  frozen: str | None = None,
  grad_reduce_dtype: str = "float32",
) -> Callable:
  """Returns `step(state, batch) -> (state, metrics)`, jitted, with `state` donated.

  `batch` holds global arrays split over the mesh: image/neg_image [N, H, W, 3] float32,
  text/neg_text [N, L] int32. With `clamp_logit_scale` the log temperature is clipped to [0, ln 100]
  after each update (open_clip); without, it is left free. `frozen` (a path regex, as the
  optimizer's) names parameters that get no gradient. Gradients are summed over devices in
  `grad_reduce_dtype` ("float32", or "bfloat16" for half the bytes; see `loss_and_grads`).
  """
  model = CLIP(config)
  param_specs = jax.tree.map(lambda s: s.spec, state_shardings.params)

  def step(state: TrainState, batch: dict):
    (value, metrics), grads = loss_and_grads(
      model, state.params, batch, loss, accum_steps, mesh, frozen, grad_reduce_dtype, param_specs
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if clamp_logit_scale and "logit_scale" in params:
      params = dict(params, logit_scale=jnp.clip(params["logit_scale"], 0.0, MAX_LOG_LOGIT_SCALE))
    # The loss's own parameters, the temperature as the multiplier exp(t) that the logits see.
    own = {k: jnp.exp(params[k]) if k == "logit_scale" else params[k] for k in loss.param_names}
    metrics = dict(
      metrics,
      loss=value,
      grad_norm=optax.tree.norm(grads),
      learning_rate=schedule(state.step),
      **own,
    )
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  keys = loss.batch_keys
  jitted = jax.jit(
    step,
    in_shardings=(state_shardings, {k: sharding.batch_sharding(mesh) for k in keys}),
    out_shardings=(state_shardings, sharding.replicated(mesh)),
    donate_argnums=0,
  )

  def run(state: TrainState, batch: dict):
    missing = [k for k in keys if k not in batch]
    if missing:
      raise KeyError(
        f"loss {loss.name!r} needs batch keys {missing}; the batch has {sorted(batch)}."
      )
    return jitted(state, {k: batch[k] for k in keys})  # the loss ignores the other keys

  run.jitted = jitted  # for ahead-of-time lowering (benchmarks/tpu_plan.py)
  return run
