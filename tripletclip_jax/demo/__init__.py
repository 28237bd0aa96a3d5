"""The demo world as its own layer, above `data` and `evaluate`: it writes the world once and hands the
trainer what any dataset gives it, a training source and evaluator entries.

    world = demo.prepare("runs/demo/data", num_train=600, num_eval=1200, world={"grid": 3})
    world.train   # -> the training shards' folder
    world.evals   # -> {"sugarcrepe_heldout": {...}, "sugarcrepe_seen": {...}, "triplet_heldout": {...}}

The generator is `demo/world.py`; the folder layout and benchmark names are `demo/layout.py`.
"""

import dataclasses
import tempfile

from tripletclip_jax import fileio
from tripletclip_jax.demo import layout, world as world_lib
from tripletclip_jax.demo.layout import BINDING_SUBSETS, scores

__all__ = ["BINDING_SUBSETS", "DemoWorld", "layout", "prepare", "scores"]


@dataclasses.dataclass(frozen=True)
class DemoWorld:
  root: str
  train: str  # training shards: a `config.data.train` value
  evals: dict  # `config.evals` entries for the world's benchmarks


def prepare(
  root: str, num_train: int, num_eval: int, world: dict | None = None, log=print
) -> DemoWorld:
  """Writes the world (seed 0, parameters `world`: `world.WorldConfig` fields) into `root` unless it is there.

  On several processes process 0 writes and every process waits for it. A gs:// root gets the finished
  world, its manifests last, so a half-written world is never taken for a whole one.
  """
  import jax
  from jax.experimental import multihost_utils

  if jax.process_index() == 0 and not fileio.exists(
    fileio.join(root, layout.TRAIN, "manifest.json")
  ):
    cfg = world_lib.WorldConfig.from_dict(world or {})
    with tempfile.TemporaryDirectory() as tmp:
      local = tmp if fileio.is_remote(root) else root
      out = world_lib.write_demo_data(local, num_train, num_eval, seed=0, cfg=cfg)
      if local != root:
        fileio.upload(local, root)
    log(
      f"Generated the demo world in {root}: {out['train']} training triplets ({out['seconds']:.1f}s)"
    )
  multihost_utils.sync_global_devices("demo data")
  return DemoWorld(root, fileio.join(root, layout.TRAIN), layout.evals(root))
