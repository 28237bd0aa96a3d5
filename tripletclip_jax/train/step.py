"""Train state and the jitted, sharded, donated train step.

Gradient accumulation keeps the contrastive loss exact (open_clip's
`--accum-freq`): every micro-batch is first encoded without gradient, then
each micro-batch is re-encoded with gradient and scored against the full set
of embeddings. A naive split would shrink the set of negatives.
"""

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

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
  """(ShapeDtypeStructs with shardings, shardings) of the train state: nothing is allocated, so the mesh
  may be one that this machine does not have (an ahead-of-time compile for a TPU topology)."""
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
  """Initialises parameters (towers and the loss's own) and optimizer state directly in their shardings.

  Returns (state, state_shardings); nothing is ever materialised whole on one host.
  """
  _, shardings = abstract_train_state(config, tx, mesh, loss, min_fsdp_size)
  state = jax.jit(_init_fn(config, tx, loss), out_shardings=shardings)(rng)
  return state, shardings


def encode_batch(model: CLIP, params, batch: dict, loss: Loss, shards: int = 1) -> dict:
  """Encodes what `loss` needs; positives and negatives share one forward pass per tower.

  `shards` is how many devices split the batch dimension. Each device's positives and negatives are
  concatenated where they lie ([x_d; x'_d] per device d; on one device simply [x; x']): a global
  concatenation would move half of every device's images to another (an all-to-all of uint8 images, 147 MiB
  per v4 chip per step in the cc3m plan).
  Returns L2-normalised float32 embeddings {'img', 'txt', 'neg_img', 'neg_txt'} [N, D]
  (the negatives are None when unused).
  """
  if batch["image"].shape[0] % shards:
    shards = 1  # a micro-batch smaller than the mesh is not split evenly anyway

  def with_negatives(pos, neg):  # [N, ...] x 2 -> [2N, ...]
    split = lambda x: x.reshape((shards, -1) + x.shape[1:])
    return jnp.stack([split(pos), split(neg)], axis=1).reshape((-1,) + pos.shape[1:])

  def apart(e):  # [2N, D] -> [N, D], [N, D]
    e = e.reshape((shards, 2, -1) + e.shape[1:])
    return e[:, 0].reshape((-1,) + e.shape[3:]), e[:, 1].reshape((-1,) + e.shape[3:])

  out = {"neg_img": None, "neg_txt": None}
  for tower, key, neg, method in (
    ("img", "image", loss.neg_images, CLIP.encode_image),
    ("txt", "text", loss.neg_texts, CLIP.encode_text),
  ):
    x = with_negatives(batch[key], batch[f"neg_{key}"]) if neg else batch[key]
    e = model.apply({"params": params}, x, method=method)
    out[tower], out[f"neg_{tower}"] = apart(e) if neg else (e, None)
  return out


def loss_and_grads(
  model: CLIP,
  params,
  batch: dict,
  loss: Loss,
  accum_steps: int = 1,
  mesh: Mesh | None = None,
  frozen: str | None = None,
):
  """(loss, metrics), grads for one global batch; exact under accumulation.

  Parameters whose path matches `frozen` are constants: their gradients are zeros and no backward pass runs
  through them.
  """
  owned = loss.param_names  # the loss's parameters outside the towers (temperature, bias)
  mask = frozen_mask(params, frozen) if frozen is not None else None
  owned_mask = None if mask is None else {k: mask[k] for k in owned}

  def freeze(
    p, m
  ):  # inside the differentiated function, where stop_gradient cuts the backward pass
    return p if m is None else jax.tree.map(lambda x, f: jax.lax.stop_gradient(x) if f else x, p, m)

  def loss_of(e, p):
    return loss(e, {k: p[k] for k in owned}, mesh)

  shards = 1 if mesh is None else sharding.num_batch_shards(mesh)
  encode = lambda p, b: encode_batch(model, p, b, loss, shards)

  if accum_steps == 1:

    def whole(p):
      p = freeze(p, mask)
      return loss_of(encode(p, batch), p)

    return jax.value_and_grad(whole, has_aux=True)(params)

  n = batch["image"].shape[0]
  if n % accum_steps:
    raise ValueError(f"batch_size={n} does not split into accum_steps={accum_steps} micro-batches.")
  m = n // accum_steps

  # Micro-batch j takes examples j, j+A, j+2A, ...: each micro-batch stays spread over all
  # devices. Every array is permuted the same way, and the losses are invariant to that.
  def to_micro(x):
    x = jnp.swapaxes(x.reshape((m, accum_steps) + x.shape[1:]), 0, 1)
    if mesh is not None:
      x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, sharding.BATCH_AXES)))
    return x

  micro = {k: to_micro(batch[k]) for k in loss.batch_keys}

  constant = jax.lax.stop_gradient(params)
  all_e = jax.lax.map(lambda mb: encode(constant, mb), micro)  # each [A, m, D]
  flat = lambda e: jax.tree.map(lambda x: x.reshape((n,) + x.shape[2:]), e)

  # The loss's own parameters get their gradient once, from the full set of embeddings; the micro-batch
  # passes below see them as constants (else each would add its gradient accum_steps times).
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
    return jax.tree.map(jnp.add, acc, g), None

  zeros = jax.tree.map(jnp.zeros_like, params)
  grads, _ = jax.lax.scan(micro_grad, zeros, jnp.arange(accum_steps))
  return (total, metrics), dict(grads, **g_owned)


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
) -> Callable:
  """Returns `step(state, batch) -> (state, metrics)`, jitted, with `state` donated.

  `batch` holds global arrays split over the mesh: image/neg_image [N, H, W, 3]
  float32, text/neg_text [N, L] int32. With `clamp_logit_scale` the log temperature
  is clipped to [0, ln 100] after each update (open_clip); without, it is left free.
  `frozen` (a path regex, as the optimizer's) names parameters that get no gradient.
  """
  model = CLIP(config)

  def step(state: TrainState, batch: dict):
    (value, metrics), grads = loss_and_grads(
      model, state.params, batch, loss, accum_steps, mesh, frozen
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
