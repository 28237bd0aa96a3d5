"""Device mesh, parameter sharding rules and batch placement.

The mesh has two axes: `data` (pure data parallelism) and `fsdp` (data
parallelism whose devices also split each large weight). The batch is split
over both axes; a weight is split over `fsdp` on its largest dimension that
divides, and small weights are replicated. Inside the train step each device
sees its own rows of the batch (`Rows`); `train/step.py` gathers the split
weights and sums the gradients explicitly.
"""

import dataclasses
import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
  """A ("data", "fsdp") mesh over `devices` (default: all); -1 fills the rest.

  Built by `jax.make_mesh`, which lays the axes along the TPU's physical topology (fsdp, the
  chattier axis, on the nearest chips); on CPU and GPU that is the plain device order. Axes are
  Auto: shardings are given explicitly where they matter and propagated elsewhere.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  sizes = [data, fsdp]
  if sizes.count(-1) > 1:
    raise ValueError(f"Only one mesh axis may be -1, got data={data} fsdp={fsdp}.")
  known = math.prod(s for s in sizes if s != -1)
  if known <= 0 or n % known:
    raise ValueError(
      f"Mesh data={data} x fsdp={fsdp} does not divide the {n} devices; "
      f"choose axis sizes whose product divides {n}."
    )
  sizes = [n // known if s == -1 else s for s in sizes]
  if math.prod(sizes) != n:
    raise ValueError(
      f"Mesh data={sizes[0]} x fsdp={sizes[1]} uses {math.prod(sizes)} of {n} devices; "
      "set one axis to -1 to fill."
    )
  auto = (jax.sharding.AxisType.Auto,) * 2
  return jax.make_mesh(tuple(sizes), BATCH_AXES, axis_types=auto, devices=devices)


def num_batch_shards(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def check_batch_divides(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
  n = num_batch_shards(mesh)
  if batch_size % n:
    raise ValueError(
      f"{what}={batch_size} does not divide over the {n} devices of mesh "
      f"{dict(mesh.shape)}; use a multiple of {n}."
    )


def param_spec(shape, fsdp_size: int, min_size: int = 2**16) -> P:
  """FSDP rule: split the largest dimension divisible by `fsdp_size`; replicate small arrays."""
  if fsdp_size == 1 or math.prod(shape) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def tree_shardings(shape_tree, mesh: Mesh, min_size: int = 2**16):
  """NamedShardings for every leaf (arrays or ShapeDtypeStructs) by the FSDP rule."""
  fsdp = mesh.shape["fsdp"]
  return jax.tree.map(
    lambda x: NamedSharding(mesh, param_spec(x.shape, fsdp, min_size)), shape_tree
  )


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over every device."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


@dataclasses.dataclass(frozen=True)
class Rows:
  """This device's rows of a global batch, inside `jax.shard_map` over the batch axes (or all of it
  on one device).

  The `global_size` rows are split in order over `shards` devices along the mesh `axes`
  (`BATCH_AXES`), so every device holds global_size / shards of them. Losses score their own rows
  against every device's columns (`gather`) and return their share; the shares sum to the loss
  (`losses.Loss`).
  """

  global_size: int
  axes: tuple[str, ...] = ()
  shards: int = 1

  @property
  def size(self) -> int:
    return self.global_size // self.shards

  def gather(self, x):
    """[n, ...] -> [N, ...]: every device's rows in batch order (an all-gather; its gradient a
    reduce-scatter)."""
    return x if self.shards == 1 else jax.lax.all_gather(x, self.axes, tiled=True)

  def offset(self):
    """Global index of this device's first row (0 on one device)."""
    return 0 if self.shards == 1 else jax.lax.axis_index(self.axes) * self.size

  def pass_on(self, x):
    """x from this device to the next one round the ring of the batch axes (a
    collective-permute)."""
    ring = [(i, (i + 1) % self.shards) for i in range(self.shards)]
    return jax.lax.ppermute(x, self.axes, ring)


def put_batch(batch: dict, mesh: Mesh) -> dict:
  """Process-local numpy batch -> global jax.Arrays split over the mesh.

  Each process passes its own slice (global batch / process count); works
  unchanged on one host and on pods.
  """
  sharding = batch_sharding(mesh)
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
  }
