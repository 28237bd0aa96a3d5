"""Sigmoid (SigLIP) losses with hard negatives: siglip, negsiglip, tripletsiglip (formulas:
docs/recipe.md).

SigLIP scores every image-text pair on its own: z = s <x, y> + b, loss -log sigmoid(+z) for a
matching pair and -log sigmoid(-z) for any other, summed and divided by the batch size N. The hard
negatives enter as extra negative columns: negsiglip(X, Y, Y') adds the N x N pairs (x_i, y'_j), all
negative (y'_i is x_i's hard negative); tripletsiglip = negsiglip(X, Y, Y') + negsiglip(X', Y', Y),
the roles swapped as in TripletCLIP.

Each function scores the rows it is given and returns its share (see `losses/softmax.py`); on a mesh
no device holds an N x N logit matrix, and the loss gathers no texts (only its accuracy metrics do):
each holds its rows' block and passes the text block around the ring of devices (big_vision's
chunked SigLIP), so memory per device is (N / devices)^2.
"""

import math

import jax
import jax.numpy as jnp

from tripletclip_jax.sharding import Rows

# SigLIP's initial t = ln 10, b = -10
PARAMS = (
  ("logit_scale", math.log(10.0)),
  ("logit_bias", -10.0),
)


def _block(x, y, s, b, diagonal_positive):
  """-sum log sigmoid(label * (s x y^T + b)) over one block [n, m]; label +1 on the diagonal if
  asked."""
  z = (
    s * jnp.einsum("nd,md->nm", x, y, preferred_element_type=jnp.result_type(x, y, jnp.float32)) + b
  )
  label = -jnp.ones_like(z)
  if diagonal_positive:
    label = label + 2 * jnp.eye(z.shape[0], z.shape[1], dtype=z.dtype)
  return -jnp.sum(jax.nn.log_sigmoid(label * z))


def pair_sum(x, y, s, b, diagonal_positive: bool, rows: Rows):
  """-sum over this device's rows x_i and all N columns y_j of log sigmoid(label z_ij); (x_i, y_i)
  positive if asked. The text blocks travel the ring of devices: after k passes a device holds the
  block k devices behind."""
  total = _block(x, y, s, b, diagonal_positive)  # own block: the matching pairs sit on its diagonal
  for _ in range(rows.shards - 1):
    y = rows.pass_on(y)
    total = total + _block(x, y, s, b, False)
  return total


def _accuracy(x, y, rows: Rows):
  """Shares of top-1 image-to-text and text-to-image accuracy of the matching pairs (metrics
  only)."""
  x, y = jax.lax.stop_gradient(x), jax.lax.stop_gradient(y)
  target = rows.offset() + jnp.arange(x.shape[0])

  def hits(a, b):
    sim = jnp.einsum("nd,md->nm", a, rows.gather(b), preferred_element_type=jnp.float32)
    return jnp.sum(jnp.argmax(sim, 1) == target) / rows.global_size

  return {"i2t_acc": hits(x, y), "t2i_acc": hits(y, x)}


def negsiglip_loss(x, y, y_neg, s, b, rows: Rows | None = None):
  """[pairs(X, Y) + negatives(X, Y')] / N; `y_neg` None gives plain SigLIP."""
  rows = Rows(x.shape[0]) if rows is None else rows
  total = pair_sum(x, y, s, b, True, rows)
  if y_neg is not None:
    total = total + pair_sum(x, y_neg, s, b, False, rows)
  return total / rows.global_size, _accuracy(x, y, rows)


def siglip(e, p, rows=None):
  return negsiglip_loss(e["img"], e["txt"], None, jnp.exp(p["logit_scale"]), p["logit_bias"], rows)


def negsiglip(e, p, rows=None):
  return negsiglip_loss(
    e["img"], e["txt"], e["neg_txt"], jnp.exp(p["logit_scale"]), p["logit_bias"], rows
  )


def tripletsiglip(e, p, rows=None):
  s, b = jnp.exp(p["logit_scale"]), p["logit_bias"]
  l1, m1 = negsiglip_loss(e["img"], e["txt"], e["neg_txt"], s, b, rows)
  l2, m2 = negsiglip_loss(e["neg_img"], e["neg_txt"], e["txt"], s, b, rows)
  return l1 + l2, {k: 0.5 * (m1[k] + m2[k]) for k in m1}
