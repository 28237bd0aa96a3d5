"""Where the demo world lies on disk and what its benchmarks are called: defined here once.

ROOT/train/            training TripletData shards (+ manifest.json)
ROOT/base/             single-object scenes for the CLIP base the study fine-tunes from (if drawn)
ROOT/heldout/          held-out TripletData shards (the `triplet_heldout` evaluator)
ROOT/sugarcrepe/       held-out pairings in SugarCrepe's file format (`sugarcrepe_heldout`)
ROOT/sugarcrepe_seen/  seen pairings, same format (`sugarcrepe_seen`)
ROOT/world.json        the world's parameters and what the generator measured
"""

import numpy as np

from tripletclip_jax.evaluate.sugarcrepe import SUBSETS
from tripletclip_jax.fileio import join

TRAIN, BASE, HELDOUT, SUGARCREPE_HELDOUT, SUGARCREPE_SEEN = (
  "train",
  "base",
  "heldout",
  "sugarcrepe",
  "sugarcrepe_seen",
)
WORLD_JSON = "world.json"
# the headline mean of the demo table
BINDING_SUBSETS = (
  "replace_att",
  "replace_rel",
  "swap_att",
  "swap_obj",
)
SPLITS = {"heldout": SUGARCREPE_HELDOUT, "seen": SUGARCREPE_SEEN}  # split name -> benchmark folder
TRIPLET_SCORES = ("text", "image", "group")


def evals(root: str) -> dict:
  """The world's benchmarks as `config.evals` entries (types from `tripletclip_jax.evaluate`)."""
  out = {
    f"sugarcrepe_{split}": {"type": "sugarcrepe", "sugarcrepe_dir": join(root, folder)}
    for split, folder in SPLITS.items()
  }
  out["triplet_heldout"] = {"type": "triplet", "pattern": join(root, HELDOUT)}
  return out


def scores(results: dict) -> dict:
  """A run's `eval/...` metrics -> {"heldout": {subset..., mean, binding_mean}, "seen": {...},
  "triplet_heldout": {text, image, group}} (percentages), the rows of the demo table."""
  out = {}
  for split in SPLITS:
    vals = {s: float(results[f"eval/sugarcrepe_{split}/{s}"]) for s in SUBSETS}
    vals["mean"] = float(np.mean([vals[s] for s in SUBSETS]))
    vals["binding_mean"] = float(np.mean([vals[s] for s in BINDING_SUBSETS]))
    out[split] = vals
  out["triplet_heldout"] = {k: float(results[f"eval/triplet_heldout/{k}"]) for k in TRIPLET_SCORES}
  return out
