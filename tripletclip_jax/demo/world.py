"""The demo world (v3): procedural scenes in which compositional binding is the whole task.

TripletCLIP maps onto it one to one: a rule that edits the scene graph plays
the LLM, a renderer with a domain shift plays the text-to-image model.
docs/demo_world.md gives the reasons for every choice below; in short:

- Scenes hold 2-3 objects (colour, shape, texture, size) near the cells of a
  3 x 3 grid, their centres jittered by a few pixels so that an object spans
  several 8 px patches at varying offsets (what lets a ViT see relations).
- Colours and shapes are drawn with long-tailed (Zipf) frequencies from a
  large vocabulary, as in web captions, so that a random in-batch caption is
  rarely a hard negative; the generator measures that rate (`world.json`).
- Captions name at least two objects, in any order and not always all of
  them, sometimes as a relation ("a red circle left of a blue square").
- Training negatives come from the edits that need binding: swap_att,
  swap_obj, replace_rel, and replace_att / replace_obj whose new colour or
  shape already appears in the scene. Every training triplet is checked
  against its scene graph: y true of x, y' false of x, y' true of x', y false
  of x'. y' is written in another template style than y.
- x' is drawn the way a text-to-image model would: another background,
  brightness, blur and noise; and a fixed fraction q of the x' do not show
  the edit (they show x's scene), kept as real data keeps them.
- Held-out colour-shape pairings are whole symbols of a Latin square, so every
  colour and every shape is held out equally. A held-out benchmark item names
  at least one held-out pairing, and its negative names exactly as many.
- The benchmarks are written in SugarCrepe's exact file format, seen and
  held-out, all seven subsets, in the clean (real-image) domain.
"""

import collections
import dataclasses
import json
import os
import time

import numpy as np

from tripletclip_jax.data import records
from tripletclip_jax.demo import layout
from tripletclip_jax.demo.edits import edit
from tripletclip_jax.demo.render import draw_shift, png, render
from tripletclip_jax.demo.scenes import (
  ATTRIBUTES,
  NEEDS_RELATION,
  NEG_PREFIXES,
  ORACLES,
  PREFIXES,
  SIZES,
  Caption,
  Obj,
  WorldConfig,
  accidental_hard_negatives,
  caption_text,
  check_triplet,
  draw,
  holds,
  num_heldout,
  oracle_choice,
  random_caption,
  random_scene,
  rejected_only_by,
)

# the benchmark format the world is written in
from tripletclip_jax.evaluate.sugarcrepe import (
  SUBSETS,
)


# Hues far apart at 48 px, and from every background below.
def make_triplet(
  cfg: WorldConfig,
  rng,
  kind: str,
  heldout: bool = False,
  counts=None,
  max_tries: int = 1000,
  training: bool = False,
  failed: bool = False,
  render_negative: bool = True,
):
  """One (x, y, x', y') whose negative is the edit `kind`, as a dict of PIL images and captions.

  Held-out triplets name at least one held-out pairing and their negative names as many. Training
  and binding edits must pass `check_triplet`; add edits (evaluation only) make y still true of x',
  so they are held to SugarCrepe's rule alone: y true of x, y' false of x. `counts` (a Counter)
  tallies rejections. `training` writes y' in the LLM's style and x' in the text-to-image domain (if
  `negative_shift`); `failed` draws an x' that does not show the edit (x's scene, `neg_scene` is
  what x' shows). `render_negative=False` leaves `neg_image` None (a SugarCrepe item has no negative
  image).
  """
  counts = collections.Counter() if counts is None else counts
  held = sorted(cfg.heldout())
  for _ in range(max_tries):
    must = held[rng.integers(len(held))] if heldout else None
    scene = random_scene(cfg, rng, heldout_ok=heldout, must_include=must)
    relation = True if kind in NEEDS_RELATION else False if kind == "add_obj" else None
    cap = random_caption(cfg, scene, rng, relation=relation, must_name=0 if heldout else None)
    new_value = "present" if training else cfg.benchmark_replace
    neg = edit(cfg, scene, cap, kind, rng, heldout_ok=heldout, new_value=new_value)
    if neg is None:
      counts[f"{kind}/infeasible"] += 1
      continue
    n_scene, n_cap = neg
    ok = (
      (holds(scene, cap) and not holds(scene, n_cap))
      if kind.startswith("add_")
      else check_triplet(scene, cap, n_scene, n_cap)
    )
    if not ok:
      counts[f"{kind}/failed_check"] += 1
      continue
    if heldout and num_heldout(cfg, n_cap) != num_heldout(cfg, cap):
      counts[f"{kind}/unbalanced"] += 1
      continue
    if training:
      n_cap.prefix, n_cap.style = str(rng.choice(NEG_PREFIXES)), "negative"
    if failed:
      n_scene = [dataclasses.replace(o) for o in scene]
    shift = draw_shift(rng) if training and cfg.negative_shift else None
    return {
      "image": render(cfg, scene),
      "caption": caption_text(cap),
      "neg_image": render(cfg, n_scene, shift) if render_negative else None,
      "neg_caption": caption_text(n_cap),
      "neg_type": kind,
      "scene": scene,
      "neg_scene": n_scene,
      "cap": cap,
      "neg_cap": n_cap,
    }
  raise ValueError(
    f"No feasible {kind!r} triplet in {max_tries} tries: the demo world's parameters are too "
    "restrictive; allow more objects, pairings or edit kinds."
  )


def single_object_item(cfg: WorldConfig, rng) -> dict:
  """One item of the base set: a single object of a seen pairing in a random cell, named by its
  colour and shape alone, so that learning those two is the whole task (a random batch of 64 holds
  about 7 captions per image that only the shape word rejects, and as many for colour) and there is
  no binding to learn. Its negative names an absent shape (a CLIP base never reads it), which keeps
  the record a complete TripletData record. Same keys as `make_triplet`."""
  pairings, p = cfg.pairings(False)
  color, shape = pairings[draw(rng, p)]
  cell = int(rng.integers(cfg.grid**2))
  o = Obj(
    color,
    shape,
    SIZES[rng.integers(2)],
    cell // cfg.grid,
    cell % cfg.grid,
    cfg.textures[rng.integers(len(cfg.textures))],
    *(int(v) for v in rng.integers(-cfg.jitter, cfg.jitter + 1, size=2)),
  )
  cap = Caption([(color, shape, None, None)], None, str(rng.choice(PREFIXES)), [0])
  n_scene, n_cap = edit(cfg, [o], cap, "replace_obj", rng, heldout_ok=False, new_value="absent")
  return {
    "image": render(cfg, [o]),
    "caption": caption_text(cap),
    "neg_image": render(cfg, n_scene),
    "neg_caption": caption_text(n_cap),
    "neg_type": "replace_obj",
    "scene": [o],
    "neg_scene": n_scene,
    "cap": cap,
    "neg_cap": n_cap,
  }


def sample_edit(cfg: WorldConfig, rng) -> str:
  kinds, weights = zip(*cfg.edit_weights)
  p = np.asarray(weights, np.float64)
  return str(kinds[rng.choice(len(kinds), p=p / p.sum())])


def _write_shards(directory: str, name: str, n: int, num_shards: int, make, how: dict) -> list:
  """Writes n TripletData records `make(i, key)` into `num_shards` shards and their manifest;
  returns the (scene, caption) of each record, in order."""
  drawn, paths, sizes, i = [], [], [], 0
  per = -(-n // num_shards)
  for s in range(num_shards):
    path = os.path.join(directory, records.shard_name(name, s, num_shards))
    with records.ShardWriter(path) as w:
      while w.count < per and i < n:
        key = f"{name}-{i:07d}"
        t = make(i, key)
        drawn.append((t["scene"], t["cap"]))
        w.write(
          {
            "key": key,
            "image": png(t["image"]),
            "caption": t["caption"],
            "neg_image": png(t["neg_image"]),
            "neg_caption": t["neg_caption"],
            "neg_type": t["neg_type"],
            "neg_source": "rule",
            "source": "demo_world",
          }
        )
        i += 1
    paths.append(path)
    sizes.append(w.count)
  records.write_manifest(directory, name, paths, sizes, **how)
  return drawn


def _write_sugarcrepe(
  cfg: WorldConfig, directory: str, num_eval: int, rng, heldout: bool, counts
) -> dict:
  """The seven subsets in SugarCrepe's file format; returns each one's oracle scores (% correct,
  ties count half)."""
  os.makedirs(os.path.join(directory, "images"), exist_ok=True)
  scores = {}
  for kind in SUBSETS:
    entries, right = {}, collections.Counter()
    for i in range(num_eval):
      t = make_triplet(cfg, rng, kind, heldout=heldout, counts=counts, render_negative=False)
      for oracle in ORACLES:
        right[oracle] += oracle_choice(t["scene"], t["cap"], t["neg_cap"], oracle)
      fname = f"{kind}_{i:06d}.png"
      t["image"].save(os.path.join(directory, "images", fname), format="PNG", compress_level=1)
      # Keys step by 2, so they have gaps as the real files' keys do.
      entries[str(2 * i)] = {
        "filename": fname,
        "caption": t["caption"],
        "negative_caption": t["neg_caption"],
      }
    with open(os.path.join(directory, f"{kind}.json"), "w") as f:
      json.dump(entries, f, indent=1)
    scores[kind] = {o: round(100.0 * right[o] / max(num_eval, 1), 2) for o in ORACLES}
  return scores


def write_demo_data(
  output_dir: str,
  num_train: int = 1000,
  num_eval: int = 2400,
  seed: int = 0,
  cfg: WorldConfig = WorldConfig(),
  num_shards: int = 4,
  num_base: int = 0,
) -> dict:
  """Writes training shards, held-out / seen SugarCrepe-format benchmarks and held-out triplet
  shards, and with `num_base` a base set of single-object scenes.

  Layout: train/demo-*.tfrecord (+ manifest.json), base/demo_base-*.tfrecord,
  sugarcrepe/{subset}.json + sugarcrepe/images/, sugarcrepe_seen/...,
  heldout/demo_heldout-*.tfrecord, world.json (parameters and what was measured: rejections, the
  realised edit mix, failed negatives, the accidental hard-negative rate, the in-batch pressure per
  attribute, and the oracles' score on every benchmark subset). Byte-identical for a seed.
  """
  t0 = time.perf_counter()
  train_rng, heldout_rng, seen_rng, triplet_rng, measure_rng, base_rng = (
    np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(6)
  )
  world = {"seed": seed, **cfg.to_dict(), "heldout_pairings": sorted(map(list, cfg.heldout()))}
  how = {"tool": "tripletclip_jax.demo.world", "world": world}
  rejected = {k: collections.Counter() for k in ("train", "heldout", "seen")}
  mix, failed_keys = collections.Counter(), []
  fails = set(
    train_rng.permutation(num_train)[: int(round(cfg.failed_negatives * num_train))].tolist()
  )
  out = lambda sub: os.path.join(output_dir, sub)  # noqa: E731

  def train_item(i, key):
    kind = sample_edit(cfg, train_rng)
    t = make_triplet(
      cfg, train_rng, kind, False, rejected["train"], training=True, failed=i in fails
    )
    mix[t["neg_type"]] += 1
    failed_keys.extend([key] if i in fails else [])
    return t

  def heldout_item(i, key):
    return make_triplet(cfg, triplet_rng, sample_edit(cfg, triplet_rng), True, rejected["heldout"])

  train = _write_shards(out(layout.TRAIN), "demo", num_train, num_shards, train_item, how)
  oracle = {
    "heldout": _write_sugarcrepe(
      cfg, out(layout.SUGARCREPE_HELDOUT), num_eval, heldout_rng, True, rejected["heldout"]
    ),
    "seen": _write_sugarcrepe(
      cfg, out(layout.SUGARCREPE_SEEN), num_eval, seen_rng, False, rejected["seen"]
    ),
  }
  held = _write_shards(out(layout.HELDOUT), "demo_heldout", num_eval, num_shards, heldout_item, how)
  base = num_base and _write_shards(
    out(layout.BASE),
    "demo_base",
    num_base,
    num_shards,
    lambda *_: single_object_item(cfg, base_rng),
    how,
  )

  def pressure(drawn):
    """Per image of a random batch of 64: captions only colour / only shape rejects."""
    scenes, caps = zip(*drawn)
    return {a: round(rejected_only_by(a, scenes, caps, measure_rng), 3) for a in ATTRIBUTES}

  train_scenes, train_caps = zip(*train)
  summary = {
    "train": len(train),
    "base": len(base) if base else 0,
    "heldout_triplets": len(held),
    "sugarcrepe_per_subset": num_eval,
    "train_edit_mix": dict(sorted(mix.items())),
    "rejected": {k: dict(sorted(v.items())) for k, v in rejected.items()},
    # y true of x', y' false of x': kept, as a text-to-image model's failures are in real data.
    "failed_negatives": {"q": cfg.failed_negatives, "count": len(failed_keys), "keys": failed_keys},
    "accidental_hard_negatives_per_image": round(
      accidental_hard_negatives(train_scenes, train_caps, measure_rng), 4
    ),
    "rejected_only_by_per_image": {
      "train": pressure(train),
      **({"base": pressure(base)} if base else {}),
    },
    "oracle": oracle,
  }
  with open(os.path.join(output_dir, layout.WORLD_JSON), "w") as f:
    json.dump({"world": world, **summary}, f, indent=1)
  return dict(summary, seconds=time.perf_counter() - t0)
