"""AdamW with warmup + cosine, and parameter groups chosen by path regexes: frozen, no decay, own
learning rate.

Parameter paths are '/'-joined names, e.g. `visual/transformer/resblocks_0/attn/q_proj/kernel`,
`text/text_projection`, `logit_scale`. A regex matches the whole path. Regexes run on RE2, which
matches in linear time: a pattern such as `(.*)*x`, which makes Python's backtracking `re` run for
hours, is answered at once (RE2 has no backreferences or lookaround; none is needed for parameter
paths).
"""

import functools
import math

import jax
import optax
import re2

MAX_LOG_LOGIT_SCALE = math.log(100.0)
# "open_clip": decay matrices and embeddings only (ndim >= 2), not gains, biases or the logit scale.
# "all": decay every parameter, as the released TripletCLIP code does (AdamW over
# model.parameters()).
DECAY_RULES = ("open_clip", "all")
FROZEN = "frozen"


def path_tree(params):
  """The pytree of `params` with each leaf replaced by its '/'-joined path."""
  return jax.tree_util.tree_map_with_path(
    lambda p, _: jax.tree_util.keystr(p, simple=True, separator="/"), params
  )


@functools.lru_cache(maxsize=None)
def _compiled(regex: str):
  options = re2.Options()
  options.log_errors = False  # the error is raised, in one line, not also logged
  try:
    return re2.compile(regex, options=options)
  except re2.error as e:
    detail = e.args[0].decode() if e.args and isinstance(e.args[0], bytes) else str(e)
    raise ValueError(
      f"optimizer regex {regex!r} is not an RE2 regular expression ({detail})."
    ) from None


def _matches(regex: str | None, key: str):
  return regex is not None and _compiled(regex).fullmatch(key) is not None


def frozen_mask(params, frozen: str | None):
  """Pytree of bools, True for the parameters whose path matches `frozen`."""
  return jax.tree.map(lambda k: _matches(frozen, k), path_tree(params))


def decay_mask(params, rule: str = "open_clip", no_decay: str | None = None):
  """Pytree of bools, True where weight decay applies: by `rule` (DECAY_RULES), minus paths matching
  `no_decay`."""
  return jax.tree_util.tree_map_with_path(
    lambda p, x: (
      (rule == "all" or x.ndim >= 2)
      and not _matches(no_decay, jax.tree_util.keystr(p, simple=True, separator="/"))
    ),
    params,
  )


def group_labels(params, frozen: str | None = None, lr_multipliers=()):
  """Pytree of group names: FROZEN, 'lr0', 'lr1', ... (the first `lr_multipliers` regex that
  matches), or 'base'.

  `check_groups` says, before training, when a regex matches nothing.
  """

  def label(k):
    if _matches(frozen, k):
      return FROZEN
    return next((f"lr{i}" for i, (r, _) in enumerate(lr_multipliers) if _matches(r, k)), "base")

  return jax.tree.map(label, path_tree(params))


def check_groups(params, o, pretrained: bool = False) -> list[str]:
  """Checks the parameter groups against the parameters (a pytree of arrays or ShapeDtypeStructs);
  returns one line per group with its parameter count, for the run's log.

  Raises ValueError naming the config key for a regex that matches nothing, a multiplier that is not
  positive, a config that trains nothing, and parameters frozen at their random initialisation
  (`pretrained=False`: no `init_from`). `o` is the optimizer group (`config.optimizer`).
  """
  learning_rate, no_decay, frozen = o.learning_rate, o.no_decay, o.frozen
  lr_multipliers, decay_rule = tuple(o.lr_multipliers), o.decay_rule
  leaves = jax.tree_util.tree_leaves_with_path(params)
  keys = [jax.tree_util.keystr(p, simple=True, separator="/") for p, _ in leaves]
  sizes = dict(zip(keys, (math.prod(x.shape) for _, x in leaves)))
  examples = f"paths look like {keys[1]!r}, {keys[-1]!r}"
  if learning_rate <= 0:
    raise ValueError(
      f"optimizer.learning_rate={learning_rate}: must be positive (a negative rate ascends the loss)."
    )
  for i, (regex, factor) in enumerate(lr_multipliers):
    if float(factor) <= 0:
      raise ValueError(
        f"optimizer.lr_multipliers[{i}]=({regex!r}, {factor}): a factor must be positive "
        "(0 trains nothing, use optimizer.frozen; a negative one ascends the loss)."
      )
  for what, regex in [("optimizer.frozen", frozen), ("optimizer.no_decay", no_decay)] + [
    (f"optimizer.lr_multipliers[{i}]", r) for i, (r, _) in enumerate(lr_multipliers)
  ]:
    if regex is not None and not any(_matches(regex, k) for k in keys):
      raise ValueError(f"{what}={regex!r} matches no parameter; {examples}.")
  labels = dict(zip(keys, jax.tree.leaves(group_labels(params, frozen, lr_multipliers))))
  count = lambda label: sum(sizes[k] for k in keys if labels[k] == label)  # noqa: E731
  if not any(labels[k] != FROZEN for k in keys):
    raise ValueError(f"optimizer.frozen={frozen!r} freezes every parameter: nothing would train.")
  if count(FROZEN) and not pretrained:
    raise ValueError(
      f"optimizer.frozen={frozen!r} freezes {count(FROZEN):,} parameters that would keep their "
      "random initialisation: set config.init_from=hf:PATH to start from trained weights."
    )
  lines = [f"base: {count('base'):,} parameters at the scheduled learning rate"]
  lines += [
    f"lr{i} {r!r}: {count(f'lr{i}'):,} parameters at {float(f):g} x the rate"
    for i, (r, f) in enumerate(lr_multipliers)
  ]
  if frozen is not None:
    lines.append(f"frozen {frozen!r}: {count(FROZEN):,} parameters, no update")
  decayed = jax.tree.leaves(decay_mask(params, decay_rule, no_decay))
  lines.append(
    f"weight decay ({decay_rule}{', no_decay ' + repr(no_decay) if no_decay else ''}): on "
    f"{sum(sizes[k] for k, d in zip(keys, decayed) if d and labels[k] != FROZEN):,} parameters"
  )
  return lines


def make_schedule(learning_rate: float, total_steps: int, warmup_steps: int, end_lr: float = 0.0):
  """Linear warmup from 0 to `learning_rate`, then cosine to `end_lr` at `total_steps`."""
  if total_steps <= warmup_steps:
    return optax.linear_schedule(0.0, learning_rate, max(warmup_steps, 1))
  return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps, total_steps, end_lr)


def make_optimizer(o, total_steps: int):
  """Returns (optax.GradientTransformation, schedule of the base learning rate).

  `frozen` parameters get no update and no optimizer state (optax.multi_transform with set_to_zero);
  each `lr_multipliers` entry (regex, factor) gives its group `factor` x the schedule. `o` is the
  optimizer group (`config.optimizer`, or `train.config.optimizer_config(...)`): its keys and
  defaults are declared once, in the config schema.
  """
  decay_rule, no_decay, frozen = o.decay_rule, o.no_decay, o.frozen
  if decay_rule not in DECAY_RULES:
    raise ValueError(f"Unknown optimizer.decay_rule {decay_rule!r}; choose one of {DECAY_RULES}.")
  schedule = make_schedule(o.learning_rate, total_steps, o.warmup_steps)
  lr_multipliers = tuple((r, float(f)) for r, f in o.lr_multipliers)

  def adamw(factor):
    lr = schedule if factor == 1.0 else (lambda step: factor * schedule(step))
    return optax.adamw(
      lr,
      b1=o.b1,
      b2=o.b2,
      eps=o.eps,
      weight_decay=o.weight_decay,
      mask=lambda p: decay_mask(p, decay_rule, no_decay),
    )

  if frozen is None and not lr_multipliers:
    # one group: the plain optimizer state, as in checkpoints written before groups existed
    tx = adamw(1.0)
  else:
    groups = {
      "base": adamw(1.0),
      FROZEN: optax.set_to_zero(),
      **{f"lr{i}": adamw(f) for i, (_, f) in enumerate(lr_multipliers)},
    }
    tx = optax.multi_transform(groups, lambda p: group_labels(p, frozen, lr_multipliers))
  # Frozen gradients are exact zeros (the step stops them), so clipping by the global norm sees the
  # rest.
  return (
    optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), tx) if o.grad_clip_norm else tx
  ), schedule
