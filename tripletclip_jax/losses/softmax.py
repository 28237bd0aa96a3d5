"""The softmax (InfoNCE) losses: clip, negclip, negimage, tripletclip (formulas: docs/recipe.md).

All arguments are L2-normalised embeddings [N, D] and `logit_scale`, the
multiplier s = exp(t). Under `jax.jit` with sharded inputs the similarity
matrices span every device, so each loss is the global-batch loss. Each
function returns (loss, metrics) with image-to-text and text-to-image top-1
accuracy computed from the same logits.
"""

import jax
import jax.numpy as jnp


def _sim(a, b, logit_scale):
  return logit_scale * jnp.einsum("nd,md->nm", a.astype(jnp.float32), b.astype(jnp.float32))


def _ce_diag(logits):
  """Mean cross-entropy of the rows of `logits` [N, M>=N] with target = row index; and accuracy."""
  n = logits.shape[0]
  logp = jax.nn.log_softmax(logits, axis=-1)
  idx = jnp.arange(n)
  loss = -jnp.mean(logp[idx, idx])
  acc = jnp.mean(jnp.argmax(logits, axis=-1) == idx)
  return loss, acc


def clip_loss(img, txt, logit_scale):
  """clip(X, Y) = 1/2 [CE(S(X,Y)) + CE(S(Y,X))]."""
  l_i2t, a_i2t = _ce_diag(_sim(img, txt, logit_scale))
  l_t2i, a_t2i = _ce_diag(_sim(txt, img, logit_scale))
  return 0.5 * (l_i2t + l_t2i), {"i2t_acc": a_i2t, "t2i_acc": a_t2i}


def negclip_loss(img, txt, neg_txt, logit_scale):
  """negclip(X, Y, Y') = 1/2 [CE([S(X,Y) | S(X,Y')]) + CE(S(Y,X))]."""
  i2t = jnp.concatenate([_sim(img, txt, logit_scale), _sim(img, neg_txt, logit_scale)], axis=1)
  l_i2t, a_i2t = _ce_diag(i2t)
  l_t2i, a_t2i = _ce_diag(_sim(txt, img, logit_scale))
  return 0.5 * (l_i2t + l_t2i), {"i2t_acc": a_i2t, "t2i_acc": a_t2i}


def negimage_loss(img, txt, neg_img, logit_scale):
  """negimage(X, Y, X') = 1/2 [CE([S(Y,X) | S(Y,X')]) + CE(S(X,Y))]."""
  t2i = jnp.concatenate([_sim(txt, img, logit_scale), _sim(txt, neg_img, logit_scale)], axis=1)
  l_t2i, a_t2i = _ce_diag(t2i)
  l_i2t, a_i2t = _ce_diag(_sim(img, txt, logit_scale))
  return 0.5 * (l_i2t + l_t2i), {"i2t_acc": a_i2t, "t2i_acc": a_t2i}


def tripletclip_loss(img, txt, neg_img, neg_txt, logit_scale):
  """negclip(X, Y, Y') + negclip(X', Y', Y): summed, not averaged.

  Metrics are the means over the two terms.
  """
  l1, m1 = negclip_loss(img, txt, neg_txt, logit_scale)
  l2, m2 = negclip_loss(neg_img, neg_txt, txt, logit_scale)
  return l1 + l2, {k: 0.5 * (m1[k] + m2[k]) for k in m1}


# Registry adapters: (embeddings, loss parameters as stored, mesh) -> (loss, metrics).
def clip(e, p, mesh=None):
  return clip_loss(e["img"], e["txt"], jnp.exp(p["logit_scale"]))


def negclip(e, p, mesh=None):
  return negclip_loss(e["img"], e["txt"], e["neg_txt"], jnp.exp(p["logit_scale"]))


def negimage(e, p, mesh=None):
  return negimage_loss(e["img"], e["txt"], e["neg_img"], jnp.exp(p["logit_scale"]))


def tripletclip(e, p, mesh=None):
  return tripletclip_loss(e["img"], e["txt"], e["neg_img"], e["neg_txt"], jnp.exp(p["logit_scale"]))
