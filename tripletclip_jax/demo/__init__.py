"""The demo world as its own layer, above `data` and `evaluate`: it writes the world once and hands
the trainer what any dataset gives it, a training source and evaluator entries.

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
from tripletclip_jax.configlib import DRIVING, NEUTRAL, REFUSED, ConfigError, Key
from tripletclip_jax.demo import layout, scenes, world as world_lib
from tripletclip_jax.demo.layout import BINDING_SUBSETS, scores

__all__ = [
  "BINDING_SUBSETS",
  "DemoWorld",
  "OPTIONS",
  "check_options",
  "layout",
  "prepare",
  "prepare_source",
  "scores",
]

# The demo world as the trainer's data source (`config.data.source`, type "demo"): its options, each
# with its default, help and resume tag, as the trainer's schema declares its own keys.
OPTIONS = dict(
  dir=Key(None, "where to write the world (default WORKDIR/data)", DRIVING, str),
  num_train=Key(1000, "training triplets, one fixed negative each", REFUSED),
  num_eval=Key(0, "items per benchmark subset", NEUTRAL),
  num_base=Key(0, "single-object scenes for a CLIP base (launch/reproduce.py trains it)", REFUSED),
  train_set=Key("train", 'the set trained on: "train", or "base" (the single objects)', REFUSED),
  world_seed=Key(None, "the world's seed (None: the run's seed)", REFUSED, int),
  world=Key({}, "the world's parameters: demo/world.py WorldConfig fields", REFUSED),
)


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
  """Writes the world (parameters `world`: `scenes.WorldConfig` fields, drawn from `seed`) into
  `root` unless it is there; a world already there must have been drawn with the same settings.

  On several processes process 0 writes and every process waits for it. A gs:// root gets the
  finished world, its manifests last, so a half-written world is never taken for a whole one.
  """
  import jax
  from jax.experimental import multihost_utils

  cfg = scenes.WorldConfig.from_dict(world or {})
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
        "data directory (data.source.dir), or delete it."
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


def check_options(options) -> None:
  """Raises ConfigError in one line, naming `data.source.KEY`, for options no world can be drawn
  with."""
  if options.num_train < 1:
    raise ConfigError(f"config.data.source.num_train={options.num_train}: must be at least 1.")
  if options.train_set not in ("train", "base") or (
    options.train_set == "base" and options.num_base < 1
  ):
    raise ConfigError(
      f'config.data.source.train_set={options.train_set!r}: choose "train", or "base" with '
      "data.source.num_base > 0."
    )


def prepare_source(options, workdir: str, seed: int, log=print) -> tuple[str, dict]:
  """(training shards, `config.evals` entries) of the world that `options` (OPTIONS) describe,
  written into `options.dir` (default WORKDIR/data) unless it is there; drawn from `seed` unless
  `options.world_seed` is set."""
  world = prepare(
    options.dir or f"{workdir.rstrip('/')}/data",
    options.num_train,
    options.num_eval,
    options.world.to_dict() if hasattr(options.world, "to_dict") else dict(options.world),
    seed=seed if options.world_seed is None else options.world_seed,
    log=log,
    num_base=options.num_base,
  )
  return (world.base if options.train_set == "base" else world.train), world.evals
