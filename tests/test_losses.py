"""Every registered loss equals a float64 NumPy reimplementation of the formulas in
docs/recipe.md."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tripletclip_jax import losses, sharding
from tripletclip_jax.losses import softmax

jax.config.update("jax_enable_x64", False)


def _ref_ce(logits):
  logits = logits - logits.max(axis=1, keepdims=True)
  logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
  n = logits.shape[0]
  return -np.mean(logp[np.arange(n), np.arange(n)])


def _s(a, b, s):
  return s * a.astype(np.float64) @ b.astype(np.float64).T


def ref_clip(x, y, s):
  return 0.5 * (_ref_ce(_s(x, y, s)) + _ref_ce(_s(y, x, s)))


def ref_negclip(x, y, yn, s):
  return 0.5 * (_ref_ce(np.concatenate([_s(x, y, s), _s(x, yn, s)], 1)) + _ref_ce(_s(y, x, s)))


def ref_negimage(x, y, xn, s):
  return 0.5 * (_ref_ce(np.concatenate([_s(y, x, s), _s(y, xn, s)], 1)) + _ref_ce(_s(x, y, s)))


def ref_triplet(x, y, xn, yn, s):
  return ref_negclip(x, y, yn, s) + ref_negclip(xn, yn, y, s)


def _sig_pairs(x, y, s, b, diagonal_positive):
  z = _s(x, y, s) + b
  label = -np.ones_like(z) + (2 * np.eye(*z.shape) if diagonal_positive else 0)
  return np.sum(np.logaddexp(0.0, -label * z))  # -log sigmoid(label z)


def ref_negsiglip(x, y, yn, s, b):
  total = _sig_pairs(x, y, s, b, True) + (0.0 if yn is None else _sig_pairs(x, yn, s, b, False))
  return total / len(x)


REFS = {  # name -> f(x, y, x', y', s, b) in float64
  "clip": lambda a, b_, c, d, s, b: ref_clip(a, b_, s),
  "clip_union": lambda a, b_, c, d, s, b: ref_clip(a, b_, s),  # same formula; its batches differ
  "negclip": lambda a, b_, c, d, s, b: ref_negclip(a, b_, d, s),
  "negimage": lambda a, b_, c, d, s, b: ref_negimage(a, b_, c, s),
  "tripletclip": lambda a, b_, c, d, s, b: ref_triplet(a, b_, c, d, s),
  "siglip": lambda a, b_, c, d, s, b: ref_negsiglip(a, b_, None, s, b),
  "negsiglip": lambda a, b_, c, d, s, b: ref_negsiglip(a, b_, d, s, b),
  "tripletsiglip": lambda a, b_, c, d, s, b: (
    ref_negsiglip(a, b_, d, s, b) + ref_negsiglip(c, d, b_, s, b)
  ),
}


def _registered(name, mesh=None):
  """f(x, y, x', y', s, b) through the registry (which stores the log of s)."""

  def f(x, y, xn, yn, s, b):
    p = {"logit_scale": jnp.log(s), "logit_bias": b}
    return losses.get(name)({"img": x, "txt": y, "neg_img": xn, "neg_txt": yn}, p, mesh)[0]

  return f


def _embeds(n, d, seed):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(4):
    e = rng.normal(size=(n, d)).astype(np.float32)
    out.append(e / np.linalg.norm(e, axis=1, keepdims=True))
  return out


@pytest.mark.parametrize("n", [1, 3, 7, 16])
def test_losses_match_numpy(n):
  x, y, xn, yn = _embeds(n, 12, n)
  s = 14.285
  cases = [
    (softmax.clip_loss(x, y, s), ref_clip(x, y, s)),
    (softmax.negclip_loss(x, y, yn, s), ref_negclip(x, y, yn, s)),
    (softmax.negimage_loss(x, y, xn, s), ref_negimage(x, y, xn, s)),
    (softmax.tripletclip_loss(x, y, xn, yn, s), ref_triplet(x, y, xn, yn, s)),
  ]
  for (got, _), want in cases:
    np.testing.assert_allclose(float(got), want, rtol=2e-5, atol=1e-5)


def test_accuracy_metrics():
  x, y, _, yn = _embeds(5, 8, 0)
  # With the captions equal to the images, every diagonal wins.
  _, m = softmax.clip_loss(x, x, 100.0)
  assert float(m["i2t_acc"]) == 1.0 and float(m["t2i_acc"]) == 1.0
  # Negative captions pointing away from the images never win.
  _, m = softmax.negclip_loss(x, x, -x, 100.0)
  assert float(m["i2t_acc"]) == 1.0
  # Negatives closer than positives: image-to-text accuracy collapses.
  _, m = softmax.negclip_loss(x, -x, x, 100.0)
  assert float(m["i2t_acc"]) == 0.0


def test_tripletclip_is_sum_of_two_negclips():
  x, y, xn, yn = _embeds(6, 8, 1)
  total, _ = softmax.tripletclip_loss(x, y, xn, yn, 10.0)
  a, _ = softmax.negclip_loss(x, y, yn, 10.0)
  b, _ = softmax.negclip_loss(xn, yn, y, 10.0)
  np.testing.assert_allclose(float(total), float(a + b), rtol=1e-6)


@pytest.mark.parametrize("name", tuple(losses.REGISTRY))
def test_registered_losses_match_numpy(name):
  x, y, xn, yn = _embeds(7, 12, 3)
  got = _registered(name)(x, y, xn, yn, jnp.float32(9.0), jnp.float32(-2.0))
  np.testing.assert_allclose(float(got), REFS[name](x, y, xn, yn, 9.0, -2.0), rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize("name", tuple(losses.REGISTRY))
def test_gradients_match_finite_differences(name):
  x, y, xn, yn = (jnp.asarray(e, jnp.float32) for e in _embeds(3, 4, 7))
  ref = REFS[name]
  args = [x, y, xn, yn, jnp.float32(5.0), jnp.float32(-1.5)]
  grads = jax.grad(_registered(name), argnums=tuple(range(6)))(*args)
  np_args = [np.asarray(a, np.float64) for a in args]
  eps = 1e-5
  for i, g in enumerate(grads):
    g = np.asarray(g)
    flat = np_args[i].reshape(-1)
    num = np.zeros_like(flat)
    for j in range(flat.size):
      plus = [a.copy() for a in np_args]
      minus = [a.copy() for a in np_args]
      plus[i].reshape(-1)[j] += eps
      minus[i].reshape(-1)[j] -= eps
      num[j] = (ref(*plus) - ref(*minus)) / (2 * eps)
    np.testing.assert_allclose(g.reshape(-1), num, rtol=1e-3, atol=2e-4, err_msg=f"arg {i}")


@pytest.mark.parametrize("name", ["siglip", "negsiglip", "tripletsiglip"])
def test_sigmoid_losses_on_a_mesh_equal_the_dense_ones(name):
  """The ring over 8 devices (no device holds the N x N logits) gives the dense value and
  gradients."""
  mesh = sharding.make_mesh(-1, 2)
  args = [jnp.asarray(e) for e in _embeds(16, 8, 5)] + [jnp.float32(10.0), jnp.float32(-10.0)]
  dense = jax.value_and_grad(_registered(name), argnums=tuple(range(6)))(*args)
  put = [jax.device_put(a, sharding.batch_sharding(mesh)) for a in args[:4]] + args[4:]
  ring = jax.jit(jax.value_and_grad(_registered(name, mesh), argnums=tuple(range(6))))(*put)
  np.testing.assert_allclose(float(ring[0]), float(dense[0]), rtol=1e-6)
  for g_ring, g_dense in zip(ring[1], dense[1]):
    np.testing.assert_allclose(np.asarray(g_ring), np.asarray(g_dense), rtol=1e-5, atol=1e-6)


def test_unknown_loss_is_clear():
  with pytest.raises(ValueError, match="Unknown loss 'foo'; choose one of clip, "):
    losses.get("foo")
