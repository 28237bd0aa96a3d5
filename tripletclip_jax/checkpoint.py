"""Orbax checkpoints: train state, Grain iterator state and metadata, saved together.

Layout: WORKDIR/checkpoints/STEP/{state, data, meta}. Orbax writes each
checkpoint into a temporary directory and renames it when complete, so a
checkpoint that was half written when the process died is never listed.

What Orbax cannot see is damage after the fact (a flipped byte, a deleted or
truncated file): the meta holds a checksum of every state leaf, taken at save
time, and `restore_intact` verifies it and falls back to an older checkpoint.
"""

import json
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from tripletclip_jax import fileio
from tripletclip_jax.models import CLIPConfig


def checkpoint_dir(workdir: str) -> str:
  """WORKDIR/checkpoints, absolute for a local workdir; a gs:// workdir as it is."""
  return fileio.join(fileio.absolute(workdir), "checkpoints")


def make_manager(workdir: str, max_to_keep: int = 3, async_save: bool = True,
                 use_ocdbt: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
                                         create=True)
  handlers = None if use_ocdbt else {"state": ocp.StandardCheckpointHandler(use_ocdbt=False)}
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=("state", "data", "meta"),
                               item_handlers=handlers)


def check_space(workdir: str, state, last_good: int | None) -> None:
  """Raises ValueError in one line when the workdir's disk cannot hold one more checkpoint of `state`.

  Orbax reports a full disk from its writer threads as hundreds of lines of tracebacks; this check runs
  before each save. The need is the uncompressed state size, an upper bound (Orbax compresses).
  """
  if fileio.is_remote(workdir) or not os.path.isdir(workdir):
    return  # a bucket has no fixed size
  need = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
  free = shutil.disk_usage(workdir).free
  if free < need:
    last = f"step {last_good}" if last_good is not None else "none yet"
    raise ValueError(f"No space for a checkpoint in {workdir}: {free / 2**20:.1f} MiB free, up to "
                     f"{need / 2**20:.1f} MiB needed. Free space or move the run to a larger disk; the last "
                     f"complete checkpoint is {last}.")


def save(manager: ocp.CheckpointManager, step: int, state, data_iter, meta: dict, force: bool = False) -> bool:
  import grain  # the JAX-only readers of checkpoints (tc.load) need no Grain
  meta = dict(meta, checksums=checksums(state))  # verified by restore_intact and load_params
  args = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
  if data_iter is not None:
    args["data"] = grain.checkpoint.CheckpointSave(data_iter)
  return manager.save(step, args=ocp.args.Composite(**args), force=force)


class DamagedCheckpoint(ValueError):
  """A checkpoint whose files are missing, unreadable or differ from their save-time checksums."""


_GOLDEN = np.uint32(0x9E3779B1)  # odd: weights position * GOLDEN + 1 are distinct for 2**32 positions


def _leaf_checksum(x):
  """uint32 sum over the leaf's bit patterns, each weighted by its flat position (catches flips and swaps).

  Integer sums wrap and commute, so the value does not depend on sharding or reduction order.
  """
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  bits = jax.lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize])
  pos = jnp.zeros(x.shape, jnp.uint32)
  stride = 1
  for d in reversed(range(x.ndim)):  # flat position from broadcast iotas: no reshape, so no resharding
    pos = pos + jax.lax.broadcasted_iota(jnp.uint32, x.shape, d) * jnp.uint32(stride % 2 ** 32)
    stride *= x.shape[d]
  return jnp.sum(bits.astype(jnp.uint32) * (pos * _GOLDEN + jnp.uint32(1)), dtype=jnp.uint32)


_checksums = jax.jit(lambda tree: jax.tree.map(_leaf_checksum, tree))


def checksums(tree) -> dict[str, int]:
  """{leaf path: uint32 checksum} of a (sharded) pytree, computed where the arrays live."""
  flat = jax.tree_util.tree_flatten_with_path(jax.device_get(_checksums(tree)))[0]
  return {jax.tree_util.keystr(path, simple=True, separator="/"): int(v) for path, v in flat}


def verify(tree, expected: dict | None, step: int) -> None:
  """Raises DamagedCheckpoint naming the leaves of `tree` whose checksum differs from `expected`."""
  if not expected:  # a checkpoint from before checksums existed
    return
  got = checksums(tree)
  bad = [k for k, v in got.items() if k in expected and expected[k] != v]
  if bad:
    raise DamagedCheckpoint(f"checkpoint {step}: {len(bad)} array(s) differ from their save-time checksum "
                            f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, data_iter):
  """Restores (state, meta) at `step` into the shardings of `abstract_state`, and the iterator in place."""
  import grain
  args = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
  if data_iter is not None:
    args["data"] = grain.checkpoint.CheckpointRestore(data_iter)
  out = manager.restore(step, args=ocp.args.Composite(**args))
  return out["state"], out["meta"]


def _first_line(e: Exception) -> str:
  lines = [l.strip() for l in str(e).strip().splitlines() if l.strip()]
  return f"{type(e).__name__}: {lines[0][:200] if lines else ''}"


def set_aside(workdir: str, step: int) -> str:
  """Moves checkpoint `step` to WORKDIR/damaged_checkpoints/STEP-TIME (kept for inspection, no longer listed)."""
  dst = fileio.join(fileio.absolute(workdir), "damaged_checkpoints", f"{step}-{int(time.time())}")
  if jax.process_index() == 0:
    fileio.move(fileio.join(checkpoint_dir(workdir), str(step)), dst)
  return dst


def restore_intact(manager: ocp.CheckpointManager, workdir: str, abstract_state, data_iter, check_meta, log=print):
  """(step, state, meta) of the newest checkpoint that restores and matches its checksums, or None if none exist.

  `check_meta(meta, step)` runs on each candidate's meta before its state is read (it raises to refuse a
  resume, which is the user's call, not damage). Damaged checkpoints are reported in one line each and set
  aside; if every one is damaged, raises DamagedCheckpoint.
  """
  from jax.experimental import multihost_utils
  steps = sorted(manager.all_steps(), reverse=True)
  for i, step in enumerate(steps):
    if i:
      manager.reload()  # the newer ones were set aside
    try:
      _, meta = read_meta(workdir, step)
    except (OSError, ValueError, KeyError) as e:
      meta, why = None, f"unreadable meta ({_first_line(e)})"
    if meta is not None:
      check_meta(meta, step)
      try:
        state, meta = restore(manager, step, abstract_state, data_iter)
        verify(state, meta.get("checksums"), step)
        return step, state, meta
      except DamagedCheckpoint as e:
        why = str(e).split(": ", 1)[1]
      except Exception as e:  # noqa: BLE001 - Orbax/tensorstore raise many types for missing or cut files
        why = _first_line(e)
    where = set_aside(workdir, step)
    multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
    nxt = f"falling back to checkpoint {steps[i + 1]}" if i + 1 < len(steps) else "no older checkpoint is left"
    log(f"Checkpoint {step} in {checkpoint_dir(workdir)} is damaged: {why}; moved it to {where}, {nxt}.")
  manager.reload()
  if steps:
    raise DamagedCheckpoint(f"Every checkpoint in {checkpoint_dir(workdir)} is damaged (moved to "
                            f"{fileio.join(fileio.absolute(workdir), 'damaged_checkpoints')}): start a new workdir, "
                            "or move one back if you know it is usable.")
  return None


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
  return step, json.loads(fileio.read_bytes(fileio.join(checkpoint_dir(workdir), str(step), "meta", "metadata")))


def load_params(workdir: str, step: int | None = None):
  """(CLIPConfig, params) from a training workdir, for inference and export."""
  step, meta = read_meta(workdir, step)
  manager = ocp.CheckpointManager(checkpoint_dir(workdir), item_names=("state", "data", "meta"))
  try:
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  except Exception as e:  # noqa: BLE001 - missing or cut files
    raise DamagedCheckpoint(f"checkpoint {step} in {checkpoint_dir(workdir)} cannot be read ({_first_line(e)}); "
                            "pass an older --step") from None
  try:
    verify(restored["state"], meta.get("checksums"), step)
  except DamagedCheckpoint as e:
    raise DamagedCheckpoint(f"{e} in {checkpoint_dir(workdir)}; pass an older --step") from None
  params = jax.tree.map(lambda x: jax.device_put(x, jax.devices()[0]), restored["state"]["params"])
  return CLIPConfig.from_dict(meta["model_config"]), params
