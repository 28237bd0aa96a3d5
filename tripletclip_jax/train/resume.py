"""The rules for resuming a workdir: what may change between runs, and what is refused in one line.

What a changed config key does is its resume tag in the schema (`train/config.py`): DRIVING and
NEUTRAL keys resume silently; RECORDED ones (and SCHEDULE / MODEL ones once allowed) resume, are
said in one line and written to the checkpoint meta's `resume_changes`; REFUSED ones, and SCHEDULE /
MODEL ones unless allowed, are refused. A refusal touches nothing: the checkpoints stay where they
are, and rerunning with the settings they were written with resumes.
"""

import jax

from tripletclip_jax import checkpoint as ckpt
from tripletclip_jax import losses
from tripletclip_jax.configlib import ConfigError, changed_values, flat_items
from tripletclip_jax.data import pipeline
from tripletclip_jax.models.config import LEGACY_KEYS
from tripletclip_jax.train.config import DRIVING, NEUTRAL, REFUSED, resume_tag

SCHEDULE_KEYS = ("total_steps", "batch_size", "loss")
# Compute options may change across a resume; everything else in the model config defines the
# network.
_COMPUTE_OPTIONS = ("dtype", "remat", "attention_impl")


def config_changes(meta: dict, config) -> dict:
  """{key: (before, now)} for the config keys that changed since checkpoint `meta` was written,
  except DRIVING and NEUTRAL ones and keys the checkpoint's config did not have (written by an older
  version)."""
  saved = meta.get("config", {})
  known = dict(flat_items(saved))
  return {
    k: v
    for k, v in changed_values(saved, config.to_dict()).items()
    if resume_tag(k) not in (DRIVING, NEUTRAL)
    and (k in known or any(k.startswith(p + ".") for p in known))
  }


def changed_keys(meta: dict, config) -> list[str]:
  """'key before -> now' for the config keys that changed since the checkpoint and may change the
  state."""
  return [f"{k} {a} -> {b}" for k, (a, b) in config_changes(meta, config).items()]


def recorded_changes(meta: dict, config) -> dict:
  """{key: (before, now)} of the changes a resume goes on with: said in one line and written to
  `resume_changes` (RECORDED keys, and SCHEDULE / MODEL keys that `check_resume` allowed)."""
  return {k: v for k, v in config_changes(meta, config).items() if resume_tag(k) != REFUSED}


def check_refused(meta: dict, config, workdir: str, step: int) -> None:
  """Refuses, naming them, the changed keys whose change would make the saved state or data position
  mean something else (tag REFUSED)."""
  refused = [
    f"{k} {a} -> {b}"
    for k, (a, b) in config_changes(meta, config).items()
    if resume_tag(k) == REFUSED
  ]
  if refused:
    raise _refuse(
      workdir,
      step,
      f"{', '.join(refused)} changes what the saved state or data position means",
      "rerun with the old value, or use a new workdir.",
    )


def _refuse(workdir: str, step: int, what: str, how: str) -> ConfigError:
  return ConfigError(
    f"Refusing to resume {workdir} from checkpoint {step}: {what}. Nothing was changed; {how}"
  )


def check_schedule(meta: dict, config, total_steps: int, loss, workdir: str, step: int) -> None:
  """Refuses a changed step count, batch size or loss unless `allow_schedule_change`, and always a
  loss whose data stream is another kind (pairs vs the union of pairs and negatives)."""
  now = {"total_steps": total_steps, "batch_size": config.batch_size, "loss": loss.name}
  changed = {
    k: (meta["schedule"][k], now[k]) for k in SCHEDULE_KEYS if meta["schedule"][k] != now[k]
  }
  what = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items())
  if changed and not config.allow_schedule_change:
    raise _refuse(
      workdir,
      step,
      f"the schedule changed ({what})",
      "rerun with the old values, use a new workdir, "
      "or pass --config.allow_schedule_change=true to continue anyway.",
    )
  # Checkpoints record whether their loss read the union stream; older ones name a registered loss.
  saved_union = meta["schedule"].get("union", losses.REGISTRY[meta["schedule"]["loss"]].union)
  if "loss" in changed and saved_union != loss.union:
    raise _refuse(
      workdir,
      step,
      f"loss {changed['loss'][0]} -> {config.loss} changes what the data stream is "
      "(pairs vs. the union of pairs and negatives), so its saved position means nothing now",
      "rerun with the old loss or use a new workdir.",
    )


def check_model(meta: dict, model_cfg, config, workdir: str, step: int) -> None:
  """Refuses a resume whose network differs from the checkpoint's (preset, activation, widths
  ...)."""

  def network(d):
    return {
      k: v for k, v in flat_items(d) if k.rsplit(".", 1)[-1] not in _COMPUTE_OPTIONS + LEGACY_KEYS
    }

  saved, now = network(meta["model_config"]), network(model_cfg.to_dict())
  changed = [
    f"{k} {saved.get(k)} -> {now.get(k)}"
    for k in sorted(set(saved) | set(now))
    if saved.get(k) != now.get(k)
  ]
  if changed and not config.allow_model_change:
    raise _refuse(
      workdir,
      step,
      f"the model changed ({', '.join(changed[:4])}{', ...' if len(changed) > 4 else ''})",
      "rerun with the old model, use a new workdir, or pass --config.allow_model_change=true if the "
      "checkpoint's shapes still fit.",
    )


def check_state(meta: dict, abstract_state, config, workdir: str, step: int) -> None:
  """Refuses, naming the changed config keys, when the checkpoint's state does not fit this
  config's."""
  saved_processes = meta.get("process_count", jax.process_count())
  if saved_processes != jax.process_count():
    raise _refuse(
      workdir,
      step,
      f"it was written by {saved_processes} processes and this run has "
      f"{jax.process_count()}, and each process's data position is its own",
      f"resume on {saved_processes} processes (tc.load and the exporters read it anywhere).",
    )
  diff = ckpt.state_differences(meta, abstract_state)
  if diff:
    keys = changed_keys(meta, config)
    raise _refuse(
      workdir,
      step,
      f"its train state does not fit this config ({len(diff)} leaves differ: "
      f"{'; '.join(diff[:2])}{'; ...' if len(diff) > 2 else ''}); changed since it was written: "
      f"{', '.join(keys) if keys else 'nothing in the config (a code change?)'}",
      "revert those keys to resume, or use a new workdir.",
    )


def check_resume(meta: dict, step: int, exp) -> None:
  """Every refusal above, in order, for the built experiment `exp`; returns nothing when checkpoint
  `step` (its `meta`) may be resumed."""
  check_schedule(meta, exp.config, exp.total_steps, exp.loss, exp.workdir, step)
  check_model(meta, exp.model_config, exp.config, exp.workdir, step)
  check_state(meta, exp.abstract_state, exp.config, exp.workdir, step)
  check_refused(meta, exp.config, exp.workdir, step)


def restore_iterator(data_iter, state: dict, meta: dict, num_workers: int, log=print) -> None:
  """Sets the training iterator to a saved state (counting records of this process's stream), moved
  to `num_workers` workers if that changed. A checkpoint that an older version wrote in memory
  counted batches: its position is converted to records (exact, as a batch was that many
  records)."""
  if meta.get("data_position") != "records" and meta.get("config", {}).get("data", {}).get(
    "in_memory"
  ):
    per_process = meta["schedule"]["batch_size"] // meta.get("process_count", 1)
    state = {"next_index": state["next_index"] * per_process}
    log(f"Data position: the checkpoint counted batches of {per_process}; read as {state} records.")
  state, repeated = pipeline.iterator_state_for(state, num_workers)
  if repeated:
    log(
      f"data.num_workers changed at a step that is not a multiple of the old worker count: {repeated} "
      "examples of this process are read a second time."
    )
  data_iter.set_state(state)
