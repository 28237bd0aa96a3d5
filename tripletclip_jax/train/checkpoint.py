"""Orbax checkpoints: train state, Grain iterator state and metadata, saved together.

Layout: WORKDIR/checkpoints/STEP/{state, data, meta}. Orbax writes each
checkpoint into a temporary directory and renames it when complete, so a
checkpoint that was half written when the process died is never listed.
"""

import json
import os

import jax
import orbax.checkpoint as ocp

from tripletclip_jax.models import CLIPConfig


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def make_manager(workdir: str, max_to_keep: int = 3, async_save: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
                                         create=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=("state", "data", "meta"))


def save(manager: ocp.CheckpointManager, step: int, state, data_iter, meta: dict, force: bool = False) -> bool:
  import grain  # the JAX-only readers of checkpoints (tc.load) need no Grain
  args = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
  if data_iter is not None:
    args["data"] = grain.checkpoint.CheckpointSave(data_iter)
  return manager.save(step, args=ocp.args.Composite(**args), force=force)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, data_iter):
  """Restores (state, meta) at `step` into the shardings of `abstract_state`, and the iterator in place."""
  import grain
  args = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
  if data_iter is not None:
    args["data"] = grain.checkpoint.CheckpointRestore(data_iter)
  out = manager.restore(step, args=ocp.args.Composite(**args))
  return out["state"], out["meta"]


def read_meta(workdir: str, step: int | None = None) -> tuple[int, dict]:
  """(step, metadata) of the latest (or given) complete checkpoint in `workdir`."""
  manager = ocp.CheckpointManager(checkpoint_dir(workdir), item_names=("state", "data", "meta"))
  steps = manager.all_steps()
  if step is None:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"{workdir} holds no complete checkpoint (looked in {checkpoint_dir(workdir)}).")
  elif step not in steps:
    raise FileNotFoundError(f"{workdir} has no checkpoint at step {step}; it has steps "
                            f"{', '.join(map(str, sorted(steps))) or 'none'}.")
  with open(os.path.join(checkpoint_dir(workdir), str(step), "meta", "metadata")) as f:
    return step, json.load(f)


def load_params(workdir: str, step: int | None = None):
  """(CLIPConfig, params) from a training workdir, for inference and export."""
  step, meta = read_meta(workdir, step)
  manager = ocp.CheckpointManager(checkpoint_dir(workdir), item_names=("state", "data", "meta"))
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  params = jax.tree.map(lambda x: jax.device_put(x, jax.devices()[0]), restored["state"]["params"])
  return CLIPConfig.from_dict(meta["model_config"]), params
