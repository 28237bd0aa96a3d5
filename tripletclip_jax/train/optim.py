"""AdamW with warmup + cosine, and parameter groups chosen by path regexes: frozen, no decay, own learning rate.

Parameter paths are '/'-joined names, e.g. `visual/transformer/resblocks_0/attn/q_proj/kernel`,
`text/text_projection`, `logit_scale`. A regex matches with `re.fullmatch`.
"""

import math
import re

import jax
import optax

MAX_LOG_LOGIT_SCALE = math.log(100.0)
# "open_clip": decay matrices and embeddings only (ndim >= 2), not gains, biases or the logit scale.
# "all": decay every parameter, as the released TripletCLIP code does (AdamW over model.parameters()).
DECAY_RULES = ("open_clip", "all")
FROZEN = "frozen"


def path_tree(params):
  """The pytree of `params` with each leaf replaced by its '/'-joined path."""
  return jax.tree_util.tree_map_with_path(lambda p, _: jax.tree_util.keystr(p, simple=True, separator="/"), params)


def _matches(regex: str | None, key: str):
  try:
    return regex is not None and re.fullmatch(regex, key) is not None
  except re.error as e:
    raise ValueError(f"optimizer regex {regex!r} is not a regular expression ({e}).") from None


def frozen_mask(params, frozen: str | None):
  """Pytree of bools, True for the parameters whose path matches `frozen`."""
  return jax.tree.map(lambda k: _matches(frozen, k), path_tree(params))


def decay_mask(params, rule: str = "open_clip", no_decay: str | None = None):
  """Pytree of bools, True where weight decay applies: by `rule` (DECAY_RULES), minus paths matching `no_decay`."""
  return jax.tree_util.tree_map_with_path(
      lambda p, x: (rule == "all" or x.ndim >= 2)
      and not _matches(no_decay, jax.tree_util.keystr(p, simple=True, separator="/")), params)


def group_labels(params, frozen: str | None = None, lr_multipliers=()):
  """Pytree of group names: FROZEN, 'lr0', 'lr1', ... (the first `lr_multipliers` regex that matches), or 'base'.

  Raises ValueError for a regex that matches no parameter (a typo would otherwise train everything).
  """
  keys = jax.tree.leaves(path_tree(params))
  for what, regex in [("optimizer.frozen", frozen)] + [(f"optimizer.lr_multipliers[{i}]", r)
                                                      for i, (r, _) in enumerate(lr_multipliers)]:
    if regex is not None and not any(_matches(regex, k) for k in keys):
      raise ValueError(f"{what}={regex!r} matches no parameter; paths look like {keys[1]!r}, {keys[-1]!r}.")

  def label(k):
    if _matches(frozen, k):
      return FROZEN
    return next((f"lr{i}" for i, (r, _) in enumerate(lr_multipliers) if _matches(r, k)), "base")
  return jax.tree.map(label, path_tree(params))


def make_schedule(learning_rate: float, total_steps: int, warmup_steps: int, end_lr: float = 0.0):
  """Linear warmup from 0 to `learning_rate`, then cosine to `end_lr` at `total_steps`."""
  if total_steps <= warmup_steps:
    return optax.linear_schedule(0.0, learning_rate, max(warmup_steps, 1))
  return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps, total_steps, end_lr)


def make_optimizer(*, learning_rate: float, total_steps: int, warmup_steps: int,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   weight_decay: float = 0.2, grad_clip_norm: float | None = None, decay_rule: str = "open_clip",
                   no_decay: str | None = None, frozen: str | None = None, lr_multipliers=()):
  """Returns (optax.GradientTransformation, schedule of the base learning rate).

  `frozen` parameters get no update and no optimizer state (optax.multi_transform with set_to_zero); each
  `lr_multipliers` entry (regex, factor) gives its group `factor` x the schedule.
  """
  if decay_rule not in DECAY_RULES:
    raise ValueError(f"Unknown optimizer.decay_rule {decay_rule!r}; choose one of {DECAY_RULES}.")
  schedule = make_schedule(learning_rate, total_steps, warmup_steps)
  lr_multipliers = tuple((r, float(f)) for r, f in lr_multipliers)

  def adamw(factor):
    lr = schedule if factor == 1.0 else (lambda step: factor * schedule(step))
    return optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                       mask=lambda p: decay_mask(p, decay_rule, no_decay))
  if frozen is None and not lr_multipliers:
    tx = adamw(1.0)  # one group: the plain optimizer state, as in checkpoints written before groups existed
  else:
    groups = {"base": adamw(1.0), FROZEN: optax.set_to_zero(),
              **{f"lr{i}": adamw(f) for i, (_, f) in enumerate(lr_multipliers)}}
    tx = optax.multi_transform(groups, lambda p: group_labels(p, frozen, lr_multipliers))
  # Frozen gradients are exact zeros (the step stops them), so clipping by the global norm sees the rest.
  return (optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx) if grad_clip_norm else tx), schedule
