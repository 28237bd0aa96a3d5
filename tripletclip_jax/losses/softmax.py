"""The softmax (InfoNCE) losses: clip, negclip, negimage, tripletclip (formulas: docs/recipe.md).

All arguments are L2-normalised embeddings [n, D] and `logit_scale`, the multiplier s = exp(t). Each
function scores the rows it is given against every device's columns (`rows.gather`) and returns its
share of the global-batch loss and metrics (sums over its rows divided by the global batch size N);
the shares of all devices sum to the loss. With `rows` None the arrays are the whole batch and the
share is the loss itself. So no device holds more than its rows' [n, N] block of a similarity
matrix, and the gradient of the gathered columns returns to their devices as a reduce-scatter
(open_clip's `local_loss`).
"""

import jax
import jax.numpy as jnp

from tripletclip_jax.sharding import Rows


def _sim(a, b, logit_scale):
  return logit_scale * jnp.einsum(
    "nd,md->nm", a, b, preferred_element_type=jnp.result_type(a, b, jnp.float32)
  )


def _ce_rows(logits, rows: Rows):
  """Shares of the cross-entropy and top-1 accuracy of `logits` [n, M] whose target is the row's
  global index."""
  target = rows.offset() + jnp.arange(logits.shape[0])
  logp = jax.nn.log_softmax(logits, axis=-1)
  loss = -jnp.sum(jnp.take_along_axis(logp, target[:, None], axis=1))
  correct = jnp.sum(jnp.argmax(logits, axis=-1) == target)
  return loss / rows.global_size, correct / rows.global_size


def _rows(rows, x):
  return Rows(x.shape[0]) if rows is None else rows


def clip_loss(img, txt, logit_scale, rows: Rows | None = None):
  """clip(X, Y) = 1/2 [CE(S(X,Y)) + CE(S(Y,X))]."""
  rows = _rows(rows, img)
  l_i2t, a_i2t = _ce_rows(_sim(img, rows.gather(txt), logit_scale), rows)
  l_t2i, a_t2i = _ce_rows(_sim(txt, rows.gather(img), logit_scale), rows)
  return 0.5 * (l_i2t + l_t2i), {"i2t_acc": a_i2t, "t2i_acc": a_t2i}


def _negclip(img, txt, neg_txt, cols, logit_scale, rows: Rows):
  """negclip with every device's columns already gathered: `cols` maps img, txt and neg_txt to [N,
  D]."""
  i2t = jnp.concatenate(
    [_sim(img, cols["txt"], logit_scale), _sim(img, cols["neg_txt"], logit_scale)], axis=1
  )
  l_i2t, a_i2t = _ce_rows(i2t, rows)
  l_t2i, a_t2i = _ce_rows(_sim(txt, cols["img"], logit_scale), rows)
  return 0.5 * (l_i2t + l_t2i), {"i2t_acc": a_i2t, "t2i_acc": a_t2i}


def negclip_loss(img, txt, neg_txt, logit_scale, rows: Rows | None = None):
  """negclip(X, Y, Y') = 1/2 [CE([S(X,Y) | S(X,Y')]) + CE(S(Y,X))]."""
  rows = _rows(rows, img)
  cols = {"img": rows.gather(img), "txt": rows.gather(txt), "neg_txt": rows.gather(neg_txt)}
  return _negclip(img, txt, neg_txt, cols, logit_scale, rows)


def negimage_loss(img, txt, neg_img, logit_scale, rows: Rows | None = None):
  """negimage(X, Y, X') = 1/2 [CE([S(Y,X) | S(Y,X')]) + CE(S(X,Y))]."""
  rows = _rows(rows, img)
  t2i = jnp.concatenate(
    [_sim(txt, rows.gather(img), logit_scale), _sim(txt, rows.gather(neg_img), logit_scale)], axis=1
  )
  l_t2i, a_t2i = _ce_rows(t2i, rows)
  l_i2t, a_i2t = _ce_rows(_sim(img, rows.gather(txt), logit_scale), rows)
  return 0.5 * (l_i2t + l_t2i), {"i2t_acc": a_i2t, "t2i_acc": a_t2i}


def tripletclip_loss(img, txt, neg_img, neg_txt, logit_scale, rows: Rows | None = None):
  """negclip(X, Y, Y') + negclip(X', Y', Y): summed, not averaged. Each embedding is gathered once.

  Metrics are the means over the two terms.
  """
  rows = _rows(rows, img)
  g = {k: rows.gather(v) for k, v in (("img", img), ("txt", txt), ("x'", neg_img), ("y'", neg_txt))}
  l1, m1 = _negclip(
    img, txt, neg_txt, {"img": g["img"], "txt": g["txt"], "neg_txt": g["y'"]}, logit_scale, rows
  )
  l2, m2 = _negclip(
    neg_img, neg_txt, txt, {"img": g["x'"], "txt": g["y'"], "neg_txt": g["txt"]}, logit_scale, rows
  )
  return l1 + l2, {k: 0.5 * (m1[k] + m2[k]) for k in m1}


# Registry adapters: (this device's embeddings, loss parameters as stored, Rows) -> shares of (loss,
# metrics).
def clip(e, p, rows=None):
  return clip_loss(e["img"], e["txt"], jnp.exp(p["logit_scale"]), rows)


def negclip(e, p, rows=None):
  return negclip_loss(e["img"], e["txt"], e["neg_txt"], jnp.exp(p["logit_scale"]), rows)


def negimage(e, p, rows=None):
  return negimage_loss(e["img"], e["txt"], e["neg_img"], jnp.exp(p["logit_scale"]), rows)


def tripletclip(e, p, rows=None):
  return tripletclip_loss(
    e["img"], e["txt"], e["neg_img"], e["neg_txt"], jnp.exp(p["logit_scale"]), rows
  )
