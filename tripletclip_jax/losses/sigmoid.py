"""Sigmoid (SigLIP) losses with hard negatives: siglip, negsiglip, tripletsiglip (formulas: docs/recipe.md).

SigLIP scores every image-text pair on its own: z = s <x, y> + b, loss -log sigmoid(+z) for a matching pair
and -log sigmoid(-z) for any other, summed and divided by the batch size N. The hard negatives enter as extra
negative columns: negsiglip(X, Y, Y') adds the N x N pairs (x_i, y'_j), all negative (y'_i is x_i's hard
negative); tripletsiglip = negsiglip(X, Y, Y') + negsiglip(X', Y', Y), the roles swapped as in TripletCLIP.

On a mesh no device holds an N x N logit matrix: each holds its rows' block and passes the text block
around the ring of devices (big_vision's chunked SigLIP), so memory per device is (N / devices)^2.
"""

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from tripletclip_jax import sharding

PARAMS = (
  ("logit_scale", math.log(10.0)),
  ("logit_bias", -10.0),
)  # SigLIP's initial t = ln 10, b = -10


def _block(x, y, s, b, diagonal_positive):
  """-sum log sigmoid(label * (s x y^T + b)) over one block [n, m]; label +1 on the diagonal if asked."""
  z = s * jnp.einsum("nd,md->nm", x.astype(jnp.float32), y.astype(jnp.float32)) + b
  label = -jnp.ones_like(z)
  if diagonal_positive:
    label = label + 2 * jnp.eye(z.shape[0], z.shape[1], dtype=z.dtype)
  return -jnp.sum(jax.nn.log_sigmoid(label * z))


def pair_sum(x, y, s, b, diagonal_positive: bool, mesh=None):
  """-sum over all N x N pairs (x_i, y_j) of log sigmoid(label z_ij); (x_i, y_i) positive if asked.

  With a mesh of several devices the rows stay where they are and the text blocks travel the ring.
  """
  if mesh is None or sharding.num_batch_shards(mesh) == 1:
    return _block(x, y, s, b, diagonal_positive)
  axes, n = sharding.BATCH_AXES, sharding.num_batch_shards(mesh)
  ring = [(i, (i + 1) % n) for i in range(n)]

  def local(x, y, s, b):
    total = _block(
      x, y, s, b, diagonal_positive
    )  # own block: the matching pairs sit on its diagonal
    for _ in range(n - 1):
      y = jax.lax.ppermute(y, axes, ring)
      total = total + _block(x, y, s, b, False)
    return jax.lax.psum(total, axes)

  return jax.shard_map(local, mesh=mesh, in_specs=(P(axes), P(axes), P(), P()), out_specs=P())(
    x, y, s, b
  )


def _accuracy(x, y):
  """Top-1 image-to-text and text-to-image accuracy of the matching pairs (metrics only)."""
  sim = jax.lax.stop_gradient(jnp.einsum("nd,md->nm", x.astype(jnp.float32), y.astype(jnp.float32)))
  idx = jnp.arange(sim.shape[0])
  return {
    "i2t_acc": jnp.mean(jnp.argmax(sim, 1) == idx),
    "t2i_acc": jnp.mean(jnp.argmax(sim, 0) == idx),
  }


def negsiglip_loss(x, y, y_neg, s, b, mesh=None):
  """[pairs(X, Y) + negatives(X, Y')] / N; `y_neg` None gives plain SigLIP."""
  total = pair_sum(x, y, s, b, True, mesh)
  if y_neg is not None:
    total = total + pair_sum(x, y_neg, s, b, False, mesh)
  return total / x.shape[0], _accuracy(x, y)


def siglip(e, p, mesh=None):
  return negsiglip_loss(e["img"], e["txt"], None, jnp.exp(p["logit_scale"]), p["logit_bias"], mesh)


def negsiglip(e, p, mesh=None):
  return negsiglip_loss(
    e["img"], e["txt"], e["neg_txt"], jnp.exp(p["logit_scale"]), p["logit_bias"], mesh
  )


def tripletsiglip(e, p, mesh=None):
  s, b = jnp.exp(p["logit_scale"]), p["logit_bias"]
  l1, m1 = negsiglip_loss(e["img"], e["txt"], e["neg_txt"], s, b, mesh)
  l2, m2 = negsiglip_loss(e["neg_img"], e["neg_txt"], e["txt"], s, b, mesh)
  return l1 + l2, {k: 0.5 * (m1[k] + m2[k]) for k in m1}
