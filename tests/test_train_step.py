"""The sharded train step: mesh invariance, exact accumulation, learning."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from tiny_models import one_block
from tripletclip_jax import losses as loss_lib
from tripletclip_jax import sharding
from tripletclip_jax.models import CLIP, get_preset
from tripletclip_jax.models.flops import forward_flops
from tripletclip_jax.train.config import optimizer_config
from tripletclip_jax.train import (
  create_train_state,
  loss_and_grads,
  make_optimizer,
  make_train_step,
)

CFG = one_block(get_preset("tiny"))  # the step, not the depth, is the subject
LR = 1e-3


def _batch(n, seed=0):
  rng = np.random.default_rng(seed)
  s, L = CFG.vision.image_size, CFG.text.context_length

  def text():
    t = rng.integers(1, 5000, size=(n, L)).astype(np.int32)
    ends = rng.integers(3, L, size=n)
    for i, e in enumerate(ends):
      t[i, 0], t[i, e], t[i, e + 1 :] = 49406, 49407, 0
    return t

  return {
    "image": rng.normal(size=(n, s, s, 3)).astype(np.float32),
    "neg_image": rng.normal(size=(n, s, s, 3)).astype(np.float32),
    "text": text(),
    "neg_text": text(),
  }


def _one_step(mesh, loss="tripletclip", batch_size=16, accum_steps=1):
  # Adam's first update is lr * g / (|g| + eps): with a tiny eps it is lr * sign(g), and gradients
  # that are exactly zero in exact arithmetic (the key bias) are rounding noise whose sign depends
  # on the reduction order. A larger eps keeps the comparison about the sharding, not that noise.
  tx, schedule = make_optimizer(
    optimizer_config(
      learning_rate=LR, warmup_steps=0, weight_decay=0.1, grad_clip_norm=1.0, eps=1e-4
    ),
    10,
  )
  state, sh = create_train_state(CFG, tx, mesh, jax.random.key(0), loss_lib.get("tripletclip"))
  step = make_train_step(CFG, tx, schedule, loss_lib.get(loss), mesh, sh, accum_steps)
  state, metrics = step(state, sharding.put_batch(_batch(batch_size), mesh))
  return jax.device_get(state.params), jax.device_get(metrics), state


def test_eight_fake_devices():
  assert len(jax.devices()) == 8


def test_step_is_the_same_on_every_mesh():
  ref_params, ref_m, _ = _one_step(sharding.make_mesh(1, 1, jax.devices()[:1]))
  # Both axes at once (pure data parallelism: test_images_and_their_negatives_stay_on_their_device
  # and the trainer's tests; pure fsdp adds a compile and no new path).
  for data, fsdp in [(2, 4)]:
    params, m, state = _one_step(sharding.make_mesh(data, fsdp))
    np.testing.assert_allclose(m["loss"], ref_m["loss"], rtol=1e-5)
    np.testing.assert_allclose(m["grad_norm"], ref_m["grad_norm"], rtol=1e-4)
    for (path, a), b in zip(
      jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(ref_params)
    ):
      np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-4, err_msg=f"mesh ({data},{fsdp}) {path}")
    if fsdp > 1:  # large weights really are split, small ones replicated
      emb = state.params["text"]["token_embedding"]["embedding"]
      assert emb.sharding.spec == P("fsdp", None)
      assert state.params["logit_scale"].sharding.spec == P()


def test_images_and_their_negatives_stay_on_their_device():
  """On a data-parallel mesh the compiled step moves no examples between devices: only the loss's
  gather of the embeddings, their gradient's reduce-scatter back to their devices and the gradient's
  all-reduce (a global concatenation of images with their negatives once compiled to an all-to-all
  and collective-permutes)."""
  import re

  mesh = sharding.make_mesh(8, 1)
  tx, schedule = make_optimizer(optimizer_config(learning_rate=LR, warmup_steps=0), 10)
  state, sh = create_train_state(CFG, tx, mesh, jax.random.key(0), loss_lib.get("tripletclip"))
  step = make_train_step(CFG, tx, schedule, loss_lib.get("tripletclip"), mesh, sh)
  hlo = step.jitted.lower(state, sharding.put_batch(_batch(16), mesh)).compile().as_text()
  kinds = set(
    re.findall(
      r" (all-to-all|collective-permute|all-gather|all-reduce|reduce-scatter)(?:-start)?\(", hlo
    )
  )
  assert kinds == {"all-gather", "all-reduce", "reduce-scatter"}, kinds


# Both use both negative paths; tripletsiglip adds a second loss-owned parameter (the bias), whose
# gradient must come once, not once per micro-batch, and runs its ring over the mesh inside the
# accumulation.
@pytest.mark.parametrize("loss", ["tripletclip", "tripletsiglip"])
def test_accumulation_gives_the_full_batch_gradient(loss):
  mesh = sharding.make_mesh(4, 2)
  tx, _ = make_optimizer(optimizer_config(learning_rate=1e-3, warmup_steps=0), 10)
  state, _ = create_train_state(CFG, tx, mesh, jax.random.key(3), loss_lib.get(loss))
  assert ("logit_bias" in state.params) == (loss == "tripletsiglip")
  batch = sharding.put_batch(_batch(16, seed=1), mesh)  # 2 per device: one per micro-batch
  f = jax.jit(
    lambda p, b, a: loss_and_grads(CLIP(CFG), p, b, loss_lib.get(loss), a, mesh), static_argnums=2
  )
  (full, _), g_full = f(state.params, batch, 1)
  (acc, _), g_acc = f(state.params, batch, 2)
  np.testing.assert_allclose(acc, full, rtol=1e-5)
  # Per leaf, relative to its norm: float32 sums in another order differ by up to ~2e-6 of the norm
  # (1e-8 absolute on the key biases, whose true gradient is 0), while a micro-batch counted twice
  # or missed is off by ~1/4. (Elementwise, one cancelling entry in 6.3M, the end-of-text token's
  # embedding row, differed by 0.6% on one machine.)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_acc), jax.tree.leaves(g_full)):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(b) + 1e-6, (
      path,
      np.linalg.norm(a - b),
      np.linalg.norm(b),
    )


def test_tiny_tripletclip_loss_falls_on_a_fixed_batch():
  # One device: 40 steps of learning, which the mesh does not change
  # (test_step_is_the_same_on_every_mesh).
  mesh = sharding.make_mesh(1, 1, jax.devices()[:1])
  tx, schedule = make_optimizer(
    optimizer_config(learning_rate=1e-3, warmup_steps=3, weight_decay=0.1), 40
  )
  state, sh = create_train_state(CFG, tx, mesh, jax.random.key(0), loss_lib.get("tripletclip"))
  step = make_train_step(CFG, tx, schedule, loss_lib.get("tripletclip"), mesh, sh)
  batch = sharding.put_batch(_batch(8, seed=2), mesh)
  losses = []
  for _ in range(40):
    state, m = step(state, batch)
    losses.append(float(m["loss"]))
  assert np.all(np.isfinite(losses))
  assert losses[-1] < 0.25 * losses[0]
  # Steady: the 10-step means decrease monotonically.
  means = [np.mean(losses[i : i + 10]) for i in range(0, 40, 10)]
  assert all(a > b for a, b in zip(means, means[1:])), means


def test_mesh_errors_are_clear():
  with pytest.raises(ValueError, match="does not divide the 8 devices"):
    sharding.make_mesh(3, 1)
  with pytest.raises(ValueError, match="batch_size=12 does not divide over the 8 devices"):
    sharding.check_batch_divides(12, sharding.make_mesh(-1, 1))


def test_logit_scale_is_clamped_at_100():
  mesh = sharding.make_mesh(-1, 1)
  tx, schedule = make_optimizer(
    optimizer_config(learning_rate=1.0, warmup_steps=0, weight_decay=0.0), 5
  )
  state, sh = create_train_state(CFG, tx, mesh, jax.random.key(0), loss_lib.get("tripletclip"))
  state = state.replace(
    params=dict(state.params, logit_scale=state.params["logit_scale"] * 0 + 4.6)
  )
  step = make_train_step(CFG, tx, schedule, loss_lib.get("clip"), mesh, sh)
  for _ in range(3):
    state, m = step(state, sharding.put_batch(_batch(8), mesh))
  assert float(m["logit_scale"]) <= 100.0 + 1e-4


def test_a_frozen_tower_is_untouched_holds_no_state_and_costs_less():
  # one device: the compiled costs are the whole step's
  mesh = sharding.make_mesh(1, 1, jax.devices()[:1])
  # Two blocks a tower, as the preset: the activations a frozen tower need not keep are then most of
  # the step's temporaries (at one block, fixed costs blur the memory comparison).
  cfg = get_preset("tiny")
  batch = sharding.put_batch({k: v for k, v in _batch(16).items() if k in ("image", "text")}, mesh)

  def build(frozen):
    tx, schedule = make_optimizer(
      optimizer_config(learning_rate=1e-2, warmup_steps=0, frozen=frozen), 10
    )
    state, sh = create_train_state(cfg, tx, mesh, jax.random.key(0), loss_lib.get("clip"))
    step = make_train_step(cfg, tx, schedule, loss_lib.get("clip"), mesh, sh, frozen=frozen)
    return state, step, step.jitted.lower(state, batch).compile()

  state, step, compiled = build(r"visual/.*")
  _, _, full = build(None)
  before = jax.device_get(state.params)
  size = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  # Adam's mu and nu for the trainable parameters only, and two step counts (Adam's, the schedule's)
  assert size(state.opt_state) == 2 * (size(before) - size(before["visual"])) + 2
  for _ in range(2):
    state, m = step(state, batch)
  after = jax.device_get(state.params)
  for a, b in zip(jax.tree.leaves(after["visual"]), jax.tree.leaves(before["visual"])):
    np.testing.assert_array_equal(a, b)  # bit-identical
  assert not np.allclose(after["text"]["text_projection"], before["text"]["text_projection"])
  # No backward pass through the image tower: the compiled step saves its FLOPs (2x the forward, per
  # the analytic count) and the activations it would have kept for it.
  saved = full.cost_analysis()["flops"] - compiled.cost_analysis()["flops"]
  assert saved == pytest.approx(2 * 16 * forward_flops(cfg)["image"], rel=0.05)
  assert (
    compiled.memory_analysis().temp_size_in_bytes < 0.7 * full.memory_analysis().temp_size_in_bytes
  )


def _collectives(hlo: str) -> list[tuple[str, list[tuple[str, tuple]]]]:
  """[(kind, [(dtype, shape) of each array in its result])] of the all-reduces and reduce-scatters
  in `hlo`."""
  import re

  out = []
  for shape, kind in re.findall(r"= (.*?) (all-reduce|reduce-scatter)(?:-start)?\(", hlo):
    arrays = [
      (dt, tuple(int(d) for d in dims.split(",") if d))
      for dt, dims in re.findall(r"\b(bf16|f32|f64|s32)\[([\d,]*)\]", shape)
    ]
    out.append((kind, arrays))
  return out


def test_fsdp_gradients_are_reduce_scattered_in_the_chosen_dtype():
  """A bfloat16 model with FSDP over 8 devices: every weight FSDP splits has its gradient summed by
  a reduce-scatter to its slice, never all-reduced at full size, and every gradient sum runs in the
  chosen dtype (float32 by default: the bf16 weight gradients are cast before they are summed)."""
  cfg = CFG.replace(dtype="bfloat16")
  mesh = sharding.make_mesh(1, 8)
  tx, schedule = make_optimizer(optimizer_config(learning_rate=LR, warmup_steps=0), 10)
  loss = loss_lib.get("tripletclip")
  state, sh = create_train_state(cfg, tx, mesh, jax.random.key(0), loss, min_fsdp_size=2**12)
  batch = sharding.put_batch(_batch(16), mesh)
  lower = lambda dtype: make_train_step(
    cfg, tx, schedule, loss, mesh, sh, grad_reduce_dtype=dtype
  ).jitted.lower(state, batch)
  lowered = {dtype: lower(dtype) for dtype in ("float32", "bfloat16")}
  split = [
    (x.shape, s.spec)
    for x, s in zip(jax.tree.leaves(state.params), jax.tree.leaves(sh.params))
    if "fsdp" in s.spec
  ]
  assert len(split) >= 15  # each block's attention and MLP kernels, the embeddings, projections
  full_shapes = {shape for shape, _ in split}
  slice_shapes = {
    tuple(d // 8 if a == "fsdp" else d for d, a in zip(shape, spec)) for shape, spec in split
  }
  colls = _collectives(lowered["float32"].compile().as_text())
  all_reduced = {shape for kind, arrays in colls if kind == "all-reduce" for _, shape in arrays}
  assert not full_shapes & all_reduced  # (the replicated leaves are all smaller than min_fsdp_size)
  scattered = {shape for kind, arrays in colls if kind == "reduce-scatter" for _, shape in arrays}
  assert slice_shapes <= scattered, slice_shapes - scattered
  # The dtype of each sum as the step asks for it (XLA's CPU backend then runs bf16 collectives in
  # float32, so the compiled CPU module cannot show it): the weights' gradients in the chosen dtype,
  # and nothing else in bfloat16 (the loss's embeddings and metrics are float32).
  for reduce_dtype, dtype in (("float32", "f32"), ("bfloat16", "bf16")):
    asked = _collectives(lowered[reduce_dtype].as_text(dialect="hlo"))
    summed = {(dt, shape) for _, arrays in asked for dt, shape in arrays}
    assert {(dtype, shape) for shape in slice_shapes} <= summed
    assert {dt for dt, shape in summed if shape in slice_shapes} == {dtype}
    assert ("bf16" in {dt for dt, _ in summed}) == (reduce_dtype == "bfloat16")


def test_float32_gradient_sums_are_closer_to_float64_than_bfloat16_sums():
  """8 devices, a float32 model: the gradients summed across devices in float32 and in bfloat16
  against a float64 reference of the same step on one device (relative error of the whole
  gradient)."""
  mesh = sharding.make_mesh(2, 4)
  loss = loss_lib.get("tripletclip")
  tx, _ = make_optimizer(optimizer_config(learning_rate=LR, warmup_steps=0), 10)
  state, _ = create_train_state(CFG, tx, mesh, jax.random.key(0), loss, min_fsdp_size=2**12)
  batch = _batch(16, seed=4)
  params = jax.device_get(state.params)

  with jax.enable_x64(True):
    p64 = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    b64 = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in batch.items()}
    (_, _), ref = jax.jit(
      lambda p, b: loss_and_grads(CLIP(CFG.replace(dtype="float64")), p, b, loss)
    )(p64, b64)
    ref = np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(ref))])

  errors = {}
  for dtype in ("float32", "bfloat16"):
    specs = jax.tree.map(lambda x: x.sharding.spec, state.params)
    f = jax.jit(
      lambda p, b: loss_and_grads(
        CLIP(CFG), p, b, loss, mesh=mesh, grad_reduce_dtype=dtype, param_specs=specs
      )
    )
    _, g = f(state.params, sharding.put_batch(batch, mesh))
    g = np.concatenate(
      [np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(jax.device_get(g))]
    )
    errors[dtype] = np.linalg.norm(g - ref) / np.linalg.norm(ref)
  print(f"relative gradient error against float64, 8 devices: {errors}")
  assert errors["float32"] < 1e-5
  assert 1e-4 < errors["bfloat16"] < 2e-2
  assert errors["bfloat16"] > 50 * errors["float32"]
