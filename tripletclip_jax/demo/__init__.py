"""The demo world as its own layer, above `data` and `evaluate`: it writes the world once and hands the
trainer what any dataset gives it, a training source and evaluator entries.

    world = demo.prepare("runs/demo/data/seed0", num_train=1000, num_eval=2400, seed=0, num_base=4000)
    world.train   # -> the training shards' folder
    world.base    # -> the single-object base set's folder (None without num_base)
    world.evals   # -> {"sugarcrepe_heldout": {...}, "sugarcrepe_seen": {...}, "triplet_heldout": {...}}

The generator is `demo/world.py`; the folder layout and benchmark names are `demo/layout.py`.
"""

import dataclasses
import json
import tempfile

from tripletclip_jax import fileio
from tripletclip_jax.demo import layout, world as world_lib
from tripletclip_jax.demo.layout import BINDING_SUBSETS, scores

__all__ = ["BINDING_SUBSETS", "DemoWorld", "layout", "prepare", "scores"]


@dataclasses.dataclass(frozen=True)
class DemoWorld:
  root: str
  train: str  # training shards: a `config.data.train` value
  base: str | None  # the single-object base set's shards, if the world has one
  evals: dict  # `config.evals` entries for the world's benchmarks


def prepare(
  root: str,
  num_train: int,
  num_eval: int,
  world: dict | None = None,
  seed: int = 0,
  log=print,
  num_base: int = 0,
) -> DemoWorld:
  """Writes the world (parameters `world`: `world.WorldConfig` fields, drawn from `seed`) into `root`
  unless it is there; a world already there must have been drawn with the same settings.

  On several processes process 0 writes and every process waits for it. A gs:// root gets the
  finished world, its manifests last, so a half-written world is never taken for a whole one.
  """
  import jax
  from jax.experimental import multihost_utils

  cfg = world_lib.WorldConfig.from_dict(world or {})
  # As world.json records them (JSON: tuples as lists), to tell a world drawn otherwise.
  want = json.loads(
    json.dumps(
      {
        "train": num_train,
        "base": num_base,
        "sugarcrepe_per_subset": num_eval,
        "seed": seed,
        **cfg.to_dict(),
      }
    )
  )
  written = fileio.join(root, layout.WORLD_JSON)
  if fileio.exists(fileio.join(root, layout.TRAIN, "manifest.json")) and fileio.exists(written):
    have = json.loads(fileio.read_bytes(written))
    have = dict(
      have["world"],
      train=have["train"],
      base=have.get("base", 0),
      sugarcrepe_per_subset=have["sugarcrepe_per_subset"],
    )
    differ = [f"{k} {have.get(k)!r} -> {v!r}" for k, v in want.items() if have.get(k) != v]
    if differ:
      raise ValueError(
        f"{root} holds a demo world drawn with other settings ({'; '.join(differ[:3])}): use another "
        "data directory (data.demo_data_dir), or delete it."
      )
  elif jax.process_index() == 0:
    with tempfile.TemporaryDirectory() as tmp:
      local = tmp if fileio.is_remote(root) else root
      out = world_lib.write_demo_data(
        local, num_train, num_eval, seed=seed, cfg=cfg, num_base=num_base
      )
      if local != root:
        fileio.upload(local, root)
    log(
      f"Generated the demo world in {root}: {out['train']} training triplets ({out['seconds']:.1f}s)"
    )
  multihost_utils.sync_global_devices("demo data")
  base = fileio.join(root, layout.BASE) if num_base else None
  return DemoWorld(root, fileio.join(root, layout.TRAIN), base, layout.evals(root))
