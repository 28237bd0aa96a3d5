"""Every loss equals a float64 NumPy reimplementation of the formulas in docs/recipe.md."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tripletclip_jax import losses

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
      (losses.clip_loss(x, y, s), ref_clip(x, y, s)),
      (losses.negclip_loss(x, y, yn, s), ref_negclip(x, y, yn, s)),
      (losses.negimage_loss(x, y, xn, s), ref_negimage(x, y, xn, s)),
      (losses.tripletclip_loss(x, y, xn, yn, s), ref_triplet(x, y, xn, yn, s)),
  ]
  for (got, _), want in cases:
    np.testing.assert_allclose(float(got), want, rtol=2e-5, atol=1e-5)


def test_accuracy_metrics():
  x, y, _, yn = _embeds(5, 8, 0)
  # With the captions equal to the images, every diagonal wins.
  _, m = losses.clip_loss(x, x, 100.0)
  assert float(m["i2t_acc"]) == 1.0 and float(m["t2i_acc"]) == 1.0
  # Negative captions pointing away from the images never win.
  _, m = losses.negclip_loss(x, x, -x, 100.0)
  assert float(m["i2t_acc"]) == 1.0
  # Negatives closer than positives: image-to-text accuracy collapses.
  _, m = losses.negclip_loss(x, -x, x, 100.0)
  assert float(m["i2t_acc"]) == 0.0


def test_tripletclip_is_sum_of_two_negclips():
  x, y, xn, yn = _embeds(6, 8, 1)
  total, _ = losses.tripletclip_loss(x, y, xn, yn, 10.0)
  a, _ = losses.negclip_loss(x, y, yn, 10.0)
  b, _ = losses.negclip_loss(xn, yn, y, 10.0)
  np.testing.assert_allclose(float(total), float(a + b), rtol=1e-6)


@pytest.mark.parametrize("name", losses.LOSSES)
def test_gradients_match_finite_differences(name):
  x, y, xn, yn = (jnp.asarray(e, jnp.float32) for e in _embeds(3, 4, 7))
  ref = {"clip": lambda a, b, c, d, s: ref_clip(a, b, s),
         "clip_union": lambda a, b, c, d, s: ref_clip(a, b, s),  # same formula; its batches differ
         "negclip": lambda a, b, c, d, s: ref_negclip(a, b, d, s),
         "negimage": lambda a, b, c, d, s: ref_negimage(a, b, c, s),
         "tripletclip": ref_triplet}[name]
  f = lambda a, b, c, d, s: losses.compute_loss(name, a, b, c, d, s)[0]
  args = [x, y, xn, yn, jnp.float32(5.0)]
  grads = jax.grad(f, argnums=(0, 1, 2, 3, 4))(*args)
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


def test_unknown_loss_is_clear():
  with pytest.raises(ValueError, match="Unknown loss 'foo'"):
    losses.uses_negatives("foo")
