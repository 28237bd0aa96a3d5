"""Orbax checkpoints: train state, Grain iterator state and metadata, saved together.

Layout: WORKDIR/checkpoints/STEP/{state, data, meta}. Orbax writes each
checkpoint into a temporary directory and renames it when complete, so a
checkpoint that was half written when the process died is never listed.

What Orbax cannot see is damage after the fact (a flipped byte, a deleted or
truncated file): the meta holds a checksum of every state leaf and of each
process's iterator state, taken at save time, and `restore_intact` verifies them
and falls back to an older checkpoint. Only that counts as damage: the meta also
holds every leaf's shape, so a config that no longer fits the state is refused
before anything is read or moved (`state_differences`).
"""

import json
import os
import shutil
import time
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from tripletclip_jax import fileio
from tripletclip_jax.models import CLIPConfig


def checkpoint_dir(workdir: str) -> str:
  """WORKDIR/checkpoints, absolute for a local workdir; a gs:// workdir as it is."""
  return fileio.join(fileio.absolute(workdir), "checkpoints")


def make_manager(
  workdir: str, max_to_keep: int = 3, async_save: bool = True, use_ocdbt: bool = True
) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
    max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True
  )
  handlers = None if use_ocdbt else {"state": ocp.StandardCheckpointHandler(use_ocdbt=False)}
  return ocp.CheckpointManager(
    checkpoint_dir(workdir),
    options=options,
    item_names=("state", "data", "meta"),
    item_handlers=handlers,
  )


def check_reachable(workdir: str, timeout_s: float = 60.0) -> None:
  """Raises StorageError in one line, within about `timeout_s`, when tensorstore (Orbax's array
  writer, with its own GCS client and endpoint setting) cannot reach a gs:// workdir. Its default
  retries would otherwise spend about 15 minutes on a wrong endpoint before the first save fails."""
  if not str(workdir).startswith("gs://"):
    return
  import tensorstore as ts

  bucket, _, path = workdir[len("gs://") :].partition("/")
  retries = ts.Context(
    {"gcs_request_retries": {"max_retries": 3, "initial_delay": "0.5s", "max_delay": "2s"}}
  )
  try:
    store = ts.KvStore.open(
      {"driver": "gcs", "bucket": bucket, "path": path.rstrip("/") + "/"}, context=retries
    )
    store.result(timeout=timeout_s).read("trainer.lock").result(timeout=timeout_s)
  except Exception as e:  # noqa: BLE001 - tensorstore raises ValueError, TimeoutError ...
    endpoint = os.environ.get("TENSORSTORE_GCS_HTTP_URL")
    raise fileio.StorageError(
      f"Cannot reach {workdir} through tensorstore, which writes the checkpoints' arrays ({_first_line(e)}): "
      f"check the network, the credentials and the bucket"
      f"{f', and TENSORSTORE_GCS_HTTP_URL={endpoint}' if endpoint else ''}."
    ) from None


def checkpoint_bytes(workdir: str, step: int | None, state) -> int:
  """Bytes the next checkpoint of `state` will take on disk: the size of checkpoint `step` when it
  exists, else an estimate from compressing a sample of every leaf (Orbax compresses; the raw size
  is ~2.5x too high for a fresh model). The estimate copies each leaf's first local shard to the
  host, once per run."""
  if step is not None:
    root = os.path.join(checkpoint_dir(workdir), str(step))
    if os.path.isdir(root):
      return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)
  total = 0
  for x in jax.tree.leaves(state):
    x = jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
    local = np.asarray(x.addressable_shards[0].data).reshape(-1).view(np.uint8)
    blocks = local[: local.size // 4096 * 4096].reshape(-1, 4096)
    sample = (
      local
      if len(blocks) <= 16
      else blocks[np.linspace(0, len(blocks) - 1, 16).astype(int)].reshape(-1)
    )
    total += (
      len(zlib.compress(sample.tobytes(), 1)) * x.size * x.dtype.itemsize / max(sample.size, 1)
    )
  return int(total)


def check_space(workdir: str, state, last_good: int | None) -> None:
  """Raises ValueError in one line when the workdir's disk cannot hold one more checkpoint of
  `state`.

  Orbax reports a full disk from its writer threads as hundreds of lines of tracebacks; this check
  runs at the start and before each save. `last_good` is the newest complete checkpoint, measured
  for the need.
  """
  if fileio.is_remote(workdir) or not os.path.isdir(workdir):
    return  # a bucket has no fixed size
  # training makes the state a little less compressible
  need = 1.1 * checkpoint_bytes(workdir, last_good, state)
  free = shutil.disk_usage(workdir).free
  if free < need:
    last = f"step {last_good}" if last_good is not None else "none yet"
    raise ValueError(
      f"No space for a checkpoint in {workdir}: {free / 2**20:.1f} MiB free, about "
      f"{need / 2**20:.1f} MiB needed. Free space or move the run to a larger disk; the last "
      f"complete checkpoint is {last}."
    )


class _IteratorState:
  """An iterator state as Grain's checkpoint handler sees it (bytes): what we save, or what it
  restores.

  Taking the bytes ourselves lets the meta hold their checksum, and lets a resume move the state to
  another number of data workers before the real iterator sees it.
  """

  def __init__(self, data: bytes = b""):
    self.data = data

  def get_state(self) -> bytes:
    return self.data

  def set_state(self, data: bytes) -> None:
    self.data = data

  def start_prefetch(self) -> None:
    pass


def _per_process(crc: int) -> list[int]:
  """[crc of process 0, crc of process 1, ...] on every process, for a 32-bit checksum `crc`.

  Gathered as uint32: JAX without x64 gathers an int64 as int32, which wrapped every crc of 2**31 or
  more to a negative number (half of a pod's checkpoints then failed their check on restart).
  """
  if jax.process_count() == 1:
    return [crc]
  from jax.experimental import multihost_utils

  return [int(v) for v in multihost_utils.process_allgather(np.uint32(crc)).reshape(-1)]


def save(
  manager: ocp.CheckpointManager, step: int, state, data_iter, meta: dict, force: bool = False
) -> bool:
  """Saves `state`, the iterator's position and `meta` (plus the checksums and shapes that a resume
  checks)."""
  import grain  # the JAX-only readers of checkpoints (tc.load) need no Grain

  meta = dict(
    meta, checksums=checksums(state), shapes=shapes(state), process_count=jax.process_count()
  )
  args = {"state": ocp.args.StandardSave(state)}
  if data_iter is not None:
    data = json.dumps(data_iter.get_state(), sort_keys=True).encode()
    meta["data_checksums"] = _per_process(zlib.crc32(data))
    args["data"] = grain.checkpoint.CheckpointSave(_IteratorState(data))
  args["meta"] = ocp.args.JsonSave(meta)
  return manager.save(step, args=ocp.args.Composite(**args), force=force)


def shapes(tree) -> dict[str, str]:
  """{leaf path: "dtype[shape]"} of a pytree of arrays or jax.ShapeDtypeStructs."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {
    jax.tree_util.keystr(p, simple=True, separator="/"): f"{x.dtype}{list(x.shape)}"
    for p, x in flat
  }


def state_differences(meta: dict, abstract_state) -> list[str]:
  """How the checkpoint's state (from its meta) differs from `abstract_state`: leaves only in one of
  them, or with another shape or dtype. Empty when it fits (or the meta is too old to say)."""
  saved = meta.get("shapes") or dict.fromkeys(meta.get("checksums") or {})
  if not saved:
    return []
  now = shapes(abstract_state)
  out = [f"{k} {saved[k]} -> {now[k]}" for k in now if saved.get(k) not in (None, now[k])]
  out += [f"{k} only in this config" for k in now if k not in saved]
  return out + [f"{k} only in the checkpoint" for k in saved if k not in now]


class Saver:
  """Saves checkpoints in the background and knows the newest one that completed (`last_good`).

  A save that fails (a bucket gone for longer than its clients' retries) is one StorageError naming
  the checkpoint and the last complete one, raised by the next `wait` or `save`.
  """

  def __init__(self, manager: ocp.CheckpointManager, workdir: str, last_good: int | None):
    self.manager, self.workdir, self.last_good, self._in_flight = manager, workdir, last_good, None

  def _failed(self, step: int, e: Exception) -> fileio.StorageError:
    last = f"step {self.last_good}" if self.last_good is not None else "none yet"
    return fileio.StorageError(
      f"Writing checkpoint {step} to {checkpoint_dir(self.workdir)} failed "
      f"({_first_line(e)}); the last complete checkpoint ({last}) is intact: restart to "
      "resume once the storage answers."
    )

  def wait(self) -> None:
    """Waits for the save in flight, if any."""
    step, self._in_flight = self._in_flight, None
    if step is None:
      return
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - tensorstore, gcsfs and Orbax raise many types
      raise self._failed(step, e) from None
    self.last_good = step

  def save(self, step: int, state, data_iter, meta: dict) -> None:
    self.wait()
    try:
      save(self.manager, step, state, data_iter, meta, force=True)
    except Exception as e:  # noqa: BLE001
      raise self._failed(step, e) from None
    self._in_flight = step


class DamagedCheckpoint(ValueError):
  """A checkpoint whose files are missing, unreadable or differ from their save-time checksums."""


# odd: weights position * GOLDEN + 1 are distinct for 2**32 positions
_GOLDEN = np.uint32(0x9E3779B1)


def _leaf_checksum(x):
  """uint32 sum over the leaf's bit patterns, each weighted by its flat position (catches flips and
  swaps).

  Integer sums wrap and commute, so the value does not depend on sharding or reduction order.
  """
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  bits = jax.lax.bitcast_convert_type(
    x, {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
  )
  pos = jnp.zeros(x.shape, jnp.uint32)
  stride = 1
  # The flat position from broadcast iotas: no reshape, so no resharding.
  for d in reversed(range(x.ndim)):
    pos = pos + jax.lax.broadcasted_iota(jnp.uint32, x.shape, d) * jnp.uint32(stride % 2**32)
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
    raise DamagedCheckpoint(
      f"checkpoint {step}: {len(bad)} array(s) differ from their save-time checksum "
      f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})"
    )


def restore(manager: ocp.CheckpointManager, step: int, abstract_state):
  """(state, meta, iterator state) at `step`, the state in the shardings of `abstract_state`.

  Raises DamagedCheckpoint when a state leaf or this process's iterator state differs from its
  save-time checksum.
  """
  import grain

  holder = _IteratorState()
  out = manager.restore(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      meta=ocp.args.JsonRestore(),
      data=grain.checkpoint.CheckpointRestore(holder),
    ),
  )
  state, meta = out["state"], out["meta"]
  verify(state, meta.get("checksums"), step)
  expected = meta.get("data_checksums")
  if (
    expected
    and len(expected) == jax.process_count()
    # modulo 2**32: checkpoints of earlier versions hold the wrapped negative crcs (see _per_process)
    and zlib.crc32(holder.data) != expected[jax.process_index()] % 2**32
  ):
    raise DamagedCheckpoint(
      f"checkpoint {step}: the data iterator's state (data/process_{jax.process_index()}"
      f"-of-{jax.process_count()}.json) differs from its save-time checksum"
    )
  return state, meta, json.loads(holder.data)


def _first_line(e: Exception) -> str:
  # Orbax wraps tensorstore's error, which names the array and the file, in one that names neither.
  while "See full TensorStore details" in str(e) and (e.__cause__ or e.__context__):
    e = e.__cause__ or e.__context__
  lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
  return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"


def set_aside(workdir: str, step: int) -> str:
  """Moves checkpoint `step` to WORKDIR/damaged_checkpoints/STEP-TIME (kept for inspection, no
  longer listed)."""
  dst = fileio.join(fileio.absolute(workdir), "damaged_checkpoints", f"{step}-{int(time.time())}")
  if jax.process_index() == 0:
    fileio.move(fileio.join(checkpoint_dir(workdir), str(step)), dst)
  return dst


def clean_partial(manager: ocp.CheckpointManager, workdir: str, log=print) -> None:
  """Deletes the step folders that a killed save left incomplete (on a bucket: no
  commit_success.txt; on a disk: Orbax's temporary folder), before any save writes that step again.
  Orbax would delete such a folder inside the save itself, where one lost DELETE answer fails the
  save; here a 404 counts as done (fileio.rmtree). Every process waits for process 0 to finish."""
  from jax.experimental import multihost_utils

  root, committed = checkpoint_dir(workdir), {str(s) for s in manager.all_steps()}
  if jax.process_index() == 0 and fileio.isdir(root):
    for name in fileio.listdir(root):
      step, _, tmp = name.partition(".orbax-checkpoint-tmp")
      partial = step.isdigit() and (
        tmp
        or (
          step not in committed and not fileio.exists(fileio.join(root, name, "commit_success.txt"))
        )
      )
      if partial:
        fileio.rmtree(fileio.join(root, name))
        log(f"Deleted {fileio.join(root, name)}: a save of step {step} that did not finish.")
  multihost_utils.sync_global_devices("cleaned partial checkpoints")
  manager.reload()


def restore_intact(
  manager: ocp.CheckpointManager, workdir: str, abstract_state, check_meta, log=print
):
  """(step, state, meta, iterator state) of the newest intact checkpoint, or None if there is none.

  `check_meta(meta, step)` runs on each candidate's meta before anything else is read; it raises to
  refuse a resume (a changed config is the user's call, not damage: nothing is moved). Only an
  unreadable meta, a missing or unreadable file, or a checksum mismatch counts as damage: such a
  checkpoint is reported in one line and set aside, and the next older one is tried; if every one is
  damaged, raises DamagedCheckpoint.
  """
  from jax.experimental import multihost_utils

  clean_partial(manager, workdir, log)
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
        state, meta, data_state = restore(manager, step, abstract_state)
        return step, state, meta, data_state
      except DamagedCheckpoint as e:
        why = str(e).split(": ", 1)[1]
      except Exception as e:  # noqa: BLE001 - the layout was checked above: what fails now is the files
        why = _first_line(e)
    where = set_aside(workdir, step)
    multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
    nxt = (
      f"falling back to checkpoint {steps[i + 1]}"
      if i + 1 < len(steps)
      else "no older checkpoint is left"
    )
    log(
      f"Checkpoint {step} in {checkpoint_dir(workdir)} is damaged: {why}; moved it to {where}, {nxt}."
    )
  manager.reload()
  if steps:
    raise DamagedCheckpoint(
      f"Every checkpoint in {checkpoint_dir(workdir)} is damaged (moved to "
      f"{fileio.join(fileio.absolute(workdir), 'damaged_checkpoints')}): start a new workdir, "
      "or move one back if you know it is usable."
    )
  return None


def read_meta(workdir: str, step: int | None = None) -> tuple[int, dict]:
  """(step, metadata) of the latest (or given) complete checkpoint in `workdir`, as the storage
  lists it now (not as this process last listed it)."""
  root = checkpoint_dir(workdir)
  fileio.forget_listings(root)
  # Orbax's manager creates a folder that is missing: a workdir without one has no checkpoint.
  items = ("state", "data", "meta")
  steps = ocp.CheckpointManager(root, item_names=items).all_steps() if fileio.exists(root) else []
  if step is None:
    if not steps:
      raise FileNotFoundError(f"{workdir} holds no complete checkpoint (looked in {root}).")
    step = max(steps)
  elif step not in steps:
    raise FileNotFoundError(
      f"{workdir} has no checkpoint at step {step}; it has steps "
      f"{', '.join(map(str, sorted(steps))) or 'none'}."
    )
  return step, json.loads(fileio.read_bytes(fileio.join(root, str(step), "meta", "metadata")))


def load_params(workdir: str, step: int | None = None):
  """(CLIPConfig, params on the first local device) from a training workdir, for inference and
  export.

  Works whatever the number of devices or processes that wrote the checkpoint (a pod's checkpoint
  loads on a laptop): the targets come from the checkpoint's own metadata, placed on one device.
  """
  step, meta = read_meta(workdir, step)
  manager = ocp.CheckpointManager(checkpoint_dir(workdir), item_names=("state", "data", "meta"))
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  try:
    saved = ocp.StandardCheckpointHandler().metadata(
      fileio.Path(checkpoint_dir(workdir)) / str(step) / "state"
    )
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved)
    restored = manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
    )
  except Exception as e:  # noqa: BLE001 - missing or cut files
    raise DamagedCheckpoint(
      f"checkpoint {step} in {checkpoint_dir(workdir)} cannot be read ({_first_line(e)}); "
      "pass an older --step"
    ) from None
  try:
    verify(restored["state"], meta.get("checksums"), step)
  except DamagedCheckpoint as e:
    raise DamagedCheckpoint(f"{e} in {checkpoint_dir(workdir)}; pass an older --step") from None
  return CLIPConfig.from_dict(meta["model_config"]), restored["state"]["params"]
