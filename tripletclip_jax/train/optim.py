"""AdamW with warmup + cosine, a choice of weight-decay rule, optional clipping."""

import functools
import math

import jax
import optax

MAX_LOG_LOGIT_SCALE = math.log(100.0)
# "open_clip": decay matrices and embeddings only (ndim >= 2), not gains, biases or the logit scale.
# "all": decay every parameter, as the released TripletCLIP code does (AdamW over model.parameters()).
DECAY_RULES = ("open_clip", "all")


def make_schedule(learning_rate: float, total_steps: int, warmup_steps: int, end_lr: float = 0.0):
  """Linear warmup from 0 to `learning_rate`, then cosine to `end_lr` at `total_steps`."""
  if total_steps <= warmup_steps:
    return optax.linear_schedule(0.0, learning_rate, max(warmup_steps, 1))
  return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps, total_steps, end_lr)


def decay_mask(params, rule: str = "open_clip"):
  """Pytree of bools, True where weight decay applies under `rule` (DECAY_RULES)."""
  return jax.tree.map(lambda p: rule == "all" or p.ndim >= 2, params)


def make_optimizer(*, learning_rate: float, total_steps: int, warmup_steps: int,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   weight_decay: float = 0.2, grad_clip_norm: float | None = None, decay_rule: str = "open_clip"):
  """Returns (optax.GradientTransformation, schedule)."""
  if decay_rule not in DECAY_RULES:
    raise ValueError(f"Unknown optimizer.decay_rule {decay_rule!r}; choose one of {DECAY_RULES}.")
  schedule = make_schedule(learning_rate, total_steps, warmup_steps)
  adamw = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                      mask=functools.partial(decay_mask, rule=decay_rule))
  tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), adamw) if grad_clip_norm else adamw
  return tx, schedule
