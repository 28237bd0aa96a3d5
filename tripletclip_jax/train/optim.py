"""AdamW with warmup + cosine, open_clip's no-decay rule, optional clipping."""

import math

import jax
import optax

MAX_LOG_LOGIT_SCALE = math.log(100.0)


def make_schedule(learning_rate: float, total_steps: int, warmup_steps: int, end_lr: float = 0.0):
  """Linear warmup from 0 to `learning_rate`, then cosine to `end_lr` at `total_steps`."""
  if total_steps <= warmup_steps:
    return optax.linear_schedule(0.0, learning_rate, max(warmup_steps, 1))
  return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps, total_steps, end_lr)


def decay_mask(params):
  """True where weight decay applies: matrices and embeddings, not gains, biases or the logit scale."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(*, learning_rate: float, total_steps: int, warmup_steps: int,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   weight_decay: float = 0.2, grad_clip_norm: float | None = None):
  """Returns (optax.GradientTransformation, schedule)."""
  schedule = make_schedule(learning_rate, total_steps, warmup_steps)
  adamw = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)
  tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), adamw) if grad_clip_norm else adamw
  return tx, schedule
