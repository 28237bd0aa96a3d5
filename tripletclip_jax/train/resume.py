"""The rules for resuming a workdir: what may change between runs, and what is refused in one line.

A refusal touches nothing: the checkpoints stay where they are, and rerunning with the settings they were
written with resumes. Settings that do not change the train state (`STATE_NEUTRAL`) always resume.
"""

import jax

from tripletclip_jax import checkpoint as ckpt
from tripletclip_jax import losses
from tripletclip_jax.data import pipeline
from tripletclip_jax.models.config import LEGACY_KEYS
from tripletclip_jax.train.config import ConfigError, config_changes, flat_items

SCHEDULE_KEYS = ("total_steps", "batch_size", "loss")
# Compute options may change across a resume; everything else in the model config defines the network.
_COMPUTE_OPTIONS = ("dtype", "remat", "attention_impl")
# Config keys that change how a run is driven, logged or evaluated, never its train state: left out when a
# refusal lists what changed, since they cannot be the reason.
STATE_NEUTRAL = (
  "stop_after_steps",
  "progress_bar",
  "profile_steps",
  "preempted_exit_code",
  "keep_checkpoints",
  "allow_schedule_change",
  "allow_model_change",
  "log_every_steps",
  "checkpoint_every_steps",
  "eval_every_steps",
  "evals",
  "export_hf_dir",
  "peak_tflops_per_chip",
  "data.num_workers",
  "data.read_threads",
  "data.demo_data_dir",
  "distributed",
  "writers",
  "wandb",
)


def changed_keys(meta: dict, config) -> list[str]:
  """'key before -> now' for the config keys that changed since the checkpoint and may change the state."""
  return config_changes(meta.get("config", {}), config.to_dict(), STATE_NEUTRAL)


def _refuse(workdir: str, step: int, what: str, how: str) -> ConfigError:
  return ConfigError(
    f"Refusing to resume {workdir} from checkpoint {step}: {what}. Nothing was changed; {how}"
  )


def check_schedule(meta: dict, config, total_steps: int, workdir: str, step: int) -> None:
  now = {"total_steps": total_steps, "batch_size": config.batch_size, "loss": config.loss}
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
  if "loss" in changed and losses.get(changed["loss"][0]).union != losses.get(config.loss).union:
    raise _refuse(
      workdir,
      step,
      f"loss {changed['loss'][0]} -> {config.loss} changes what the data stream is "
      "(pairs vs. the union of pairs and negatives), so its saved position means nothing now",
      "rerun with the old loss or use a new workdir.",
    )


def check_model(meta: dict, model_cfg, config, workdir: str, step: int) -> None:
  """Refuses a resume whose network differs from the checkpoint's (preset, activation, widths ...)."""

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
  """Refuses, naming the changed config keys, when the checkpoint's state does not fit this config's."""
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
  """Every refusal above, in order, for the built experiment `exp`; returns nothing when checkpoint `step`
  (its `meta`) may be resumed."""
  check_schedule(meta, exp.config, exp.total_steps, exp.workdir, step)
  check_model(meta, exp.model_config, exp.config, exp.workdir, step)
  check_state(meta, exp.abstract_state, exp.config, exp.workdir, step)


def data_changes(meta: dict, config) -> dict:
  """{key: (before, now)} for what may change across a resume but is worth saying: data.train, seed, workers."""
  before = meta.get("config", {})
  now = {
    "data.train": config.data.train,
    "seed": config.seed,
    "data.num_workers": config.data.num_workers,
  }
  old = {
    "data.train": before.get("data", {}).get("train"),
    "seed": before.get("seed"),
    "data.num_workers": before.get("data", {}).get("num_workers", config.data.num_workers),
  }
  return {k: (old[k], now[k]) for k in now if old[k] != now[k]}


def restore_iterator(data_iter, state: dict, num_workers: int, log=print) -> None:
  """Sets the training iterator to a saved state, moved to `num_workers` workers if that changed."""
  state, repeated = pipeline.iterator_state_for(state, num_workers)
  if repeated:
    log(
      f"data.num_workers changed at a step that is not a multiple of the old worker count: {repeated} "
      "examples of this process are read a second time."
    )
  data_iter.set_state(state)
