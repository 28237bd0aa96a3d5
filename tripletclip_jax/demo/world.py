"""The demo world: procedural scenes in which compositional binding is the whole task.

TripletCLIP maps onto it one to one: a rule that edits the scene graph plays
the LLM, a renderer plays the text-to-image model. docs/demo_world.md gives
the reasons for every choice below; in short:

- Scenes hold 2-3 objects (colour, shape, size) in the cells of a small grid,
  so that spatial relations are legible at 64 px.
- Captions name at least two objects, in any order and not always all of
  them, sometimes as a relation ("a red circle left of a blue square").
- Training negatives come from a weighted mix of the edits that need binding:
  swap_att, swap_obj, replace_rel, and replace_att / replace_obj whose new
  colour or shape already appears in the scene. Every training triplet is
  checked against its scene graph: y true of x, y' false of x, y' true of x',
  y false of x'. Edits that fail are never written, and are counted.
- Held-out colour-shape pairings are whole symbols of a Latin square, so every
  colour and every shape is seen in training equally often. A held-out
  benchmark item names at least one held-out pairing, and its negative names
  exactly as many, so that familiarity favours neither caption.
- The benchmarks are written in SugarCrepe's exact file format, seen and
  held-out, all seven subsets.
"""

import collections
import dataclasses
import io
import itertools
import json
import os
import time

import numpy as np
from PIL import Image, ImageDraw

from tripletclip_jax.data import records
from tripletclip_jax.demo import layout
from tripletclip_jax.evaluate.sugarcrepe import (
  SUBSETS,
)  # the benchmark format the world is written in

COLORS = {
  "red": (220, 40, 40),
  "green": (40, 170, 60),
  "blue": (40, 80, 220),
  "yellow": (235, 205, 30),
  "purple": (150, 60, 190),
  "orange": (245, 140, 30),
  "white": (250, 250, 250),
  "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
PREFIXES = ("", "a photo of ", "an image of ", "there is ", "a picture showing ")
RELATIONS = ("left of", "right of", "above", "below")
SIZES = ("small", "large")


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """Every parameter of the world; `write_demo_data` records it in the manifests."""

  colors: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple")
  shapes: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond")
  grid: int = 3  # objects sit in the cells of a grid x grid layout
  min_objects: int = 2
  max_objects: int = 3
  max_named: int = 3  # captions name 2..max_named objects
  relation_prob: float = 0.4  # share of captions stating a relation between two named objects
  size_word_prob: float = 0.25
  # Latin-square symbols (i + j) mod n of colour i and shape j that are held out of training.
  heldout_symbols: tuple[int, ...] = (0, 1)
  # Relative frequency of each edit among the training negatives (the binding edits only), sorted by name.
  edit_weights: tuple[tuple[str, float], ...] = (
    ("replace_att", 3.0),
    ("replace_obj", 2.0),
    ("replace_rel", 1.0),
    ("swap_att", 3.0),
    ("swap_obj", 1.0),
  )
  image_size: int = 48  # 16 px per cell: the "demo" model preset's patch size
  background: tuple[int, int, int] = (128, 128, 128)

  def __post_init__(self):
    if len(self.colors) != len(self.shapes):
      raise ValueError(
        f"The held-out split is a Latin square: give as many colours ({len(self.colors)}) as "
        f"shapes ({len(self.shapes)})."
      )
    unknown = [c for c in self.colors if c not in COLORS] + [
      s for s in self.shapes if s not in SHAPES
    ]
    if unknown:
      raise ValueError(
        f"Unknown colours or shapes {unknown}; choose from {sorted(COLORS)} and {SHAPES}."
      )
    if not 2 <= self.min_objects <= self.max_objects <= self.grid**2 or self.max_named < 2:
      raise ValueError("Need 2 <= min_objects <= max_objects <= grid**2 and max_named >= 2.")
    bad = [k for k, _ in self.edit_weights if k not in TRAIN_EDITS]
    if bad or not any(w > 0 for _, w in self.edit_weights):
      raise ValueError(f"edit_weights must weight some of {TRAIN_EDITS}; got {self.edit_weights}.")
    if len(set(self.heldout_symbols)) >= len(self.colors):
      raise ValueError("heldout_symbols would hold out every pairing of some colour.")

  @classmethod
  def from_dict(cls, d) -> "WorldConfig":
    """From a (config) dict: lists become tuples, and `edit_weights` may be a {edit: weight} dict."""
    d = dict(d)
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"Unknown demo world parameters {sorted(unknown)}; see WorldConfig.")
    if hasattr(d.get("edit_weights"), "items"):
      d["edit_weights"] = tuple(sorted((k, float(v)) for k, v in d["edit_weights"].items()))
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

  def to_dict(self) -> dict:
    """JSON-ready, and `from_dict` of it is equal to self."""
    d = dataclasses.asdict(self)
    d["edit_weights"] = dict(self.edit_weights)
    return d

  def heldout(self) -> frozenset:
    """Held-out (colour, shape) pairs: each symbol is a transversal, one pairing per colour and per shape."""
    n = len(self.colors)
    return frozenset(
      (c, s)
      for i, c in enumerate(self.colors)
      for j, s in enumerate(self.shapes)
      if (i + j) % n in set(self.heldout_symbols)
    )

  def pairings(self, heldout_ok: bool) -> list[tuple[str, str]]:
    held = self.heldout()
    return [(c, s) for c in self.colors for s in self.shapes if heldout_ok or (c, s) not in held]


TRAIN_EDITS = ("swap_att", "swap_obj", "replace_rel", "replace_att", "replace_obj")
NEEDS_RELATION = ("swap_obj", "replace_rel")


@dataclasses.dataclass
class Obj:
  color: str
  shape: str
  size: str  # "small" | "large"
  row: int
  col: int


@dataclasses.dataclass
class Caption:
  """A claim about a scene: objects (colour, shape, size or None), an optional relation of the first two.

  `refs` are the scene objects the caption was made from; the claim itself (what `holds` checks) ignores them.
  """

  objs: list[tuple[str, str, str | None]]
  relation: str | None
  prefix: str
  refs: list[int]


def relation_holds(rel: str, a: Obj, b: Obj) -> bool:
  """Whether `a rel b` is true on the grid (a diagonal pair satisfies two relations)."""
  return {
    "left of": a.col < b.col,
    "right of": a.col > b.col,
    "above": a.row < b.row,
    "below": a.row > b.row,
  }[rel]


def _matches(desc, o: Obj) -> bool:
  color, shape, size = desc
  return o.color == color and o.shape == shape and (size is None or o.size == size)


def holds(scene: list[Obj], cap: Caption) -> bool:
  """True iff distinct objects of `scene` fit every object the caption names, and its relation."""
  for pick in itertools.permutations(range(len(scene)), len(cap.objs)):
    if all(_matches(d, scene[i]) for d, i in zip(cap.objs, pick)) and (
      cap.relation is None or relation_holds(cap.relation, scene[pick[0]], scene[pick[1]])
    ):
      return True
  return False


def check_triplet(x, y, x_neg, y_neg) -> bool:
  """TripletCLIP's data rule: y true of x, y' false of x, y' true of x', y false of x'."""
  return holds(x, y) and not holds(x, y_neg) and holds(x_neg, y_neg) and not holds(x_neg, y)


def num_heldout(cfg: WorldConfig, cap: Caption) -> int:
  held = cfg.heldout()
  return sum((c, s) in held for c, s, _ in cap.objs)


def _describe(desc) -> str:
  color, shape, size = desc
  words = f"{size} {color} {shape}" if size else f"{color} {shape}"
  return ("an " if words[0] in "aeiou" else "a ") + words


def caption_text(cap: Caption) -> str:
  parts = [_describe(d) for d in cap.objs]
  if cap.relation:
    body = f"{parts[0]} {cap.relation} {parts[1]}"
  else:
    body = ", ".join(parts[:-1]) + " and " + parts[-1]
  return cap.prefix + body


def random_scene(cfg: WorldConfig, rng, heldout_ok: bool, must_include=None) -> list[Obj]:
  """min..max_objects objects in distinct grid cells; `must_include` forces one (colour, shape) in."""
  pairings = cfg.pairings(heldout_ok)
  n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
  cells = rng.choice(cfg.grid**2, size=n, replace=False)
  scene = []
  for k, cell in enumerate(cells):
    color, shape = (
      must_include if (k == 0 and must_include) else pairings[rng.integers(len(pairings))]
    )
    scene.append(
      Obj(color, shape, SIZES[rng.integers(2)], int(cell) // cfg.grid, int(cell) % cfg.grid)
    )
  return scene


def random_caption(
  cfg: WorldConfig,
  scene: list[Obj],
  rng,
  relation: bool | None = None,
  must_name: int | None = None,
) -> Caption:
  """Names 2..max_named objects in random order (`must_name` among the first two); a relation caption
  names two and states a relation that holds. `relation` None draws it with `relation_prob`."""
  order = [int(i) for i in rng.permutation(len(scene))]
  if must_name is not None:
    order.remove(must_name)
    order.insert(int(rng.integers(0, 2)), must_name)
  if relation is None:
    relation = bool(rng.uniform() < cfg.relation_prob)
  prefix = str(rng.choice(PREFIXES))
  sized = lambda o: o.size if rng.uniform() < cfg.size_word_prob else None  # noqa: E731
  if relation:
    a, b = scene[order[0]], scene[order[1]]
    rels = [r for r in RELATIONS if relation_holds(r, a, b)]
    return Caption(
      [(a.color, a.shape, sized(a)), (b.color, b.shape, sized(b))],
      str(rng.choice(rels)),
      prefix,
      order[:2],
    )
  k = int(rng.integers(2, min(len(scene), cfg.max_named) + 1))
  return Caption(
    [(scene[i].color, scene[i].shape, sized(scene[i])) for i in order[:k]], None, prefix, order[:k]
  )


def _copy(scene, cap):
  return [dataclasses.replace(o) for o in scene], dataclasses.replace(
    cap, objs=list(cap.objs), refs=list(cap.refs)
  )


def edit(cfg: WorldConfig, scene: list[Obj], cap: Caption, kind: str, rng, heldout_ok: bool):
  """Edits (scene, caption) the SugarCrepe way `kind` -> (scene', caption'), or None if infeasible.

  replace_att / replace_obj take the new colour / shape from another object of the
  scene, so that only binding tells the two captions apart.
  """
  scene, cap = _copy(scene, cap)
  allowed = set(cfg.pairings(heldout_ok))
  named = list(range(len(cap.objs)))
  if kind in ("replace_att", "replace_obj"):
    att = 0 if kind == "replace_att" else 1
    options = []
    for k in named:
      o = scene[cap.refs[k]]
      for new in sorted({(p.color, p.shape)[att] for p in scene} - {(o.color, o.shape)[att]}):
        pairing = (new, o.shape) if att == 0 else (o.color, new)
        if pairing in allowed:
          options.append((k, pairing))
    if not options:
      return None
    k, (color, shape) = options[rng.integers(len(options))]
    o = scene[cap.refs[k]]
    o.color, o.shape = color, shape
    cap.objs[k] = (color, shape, cap.objs[k][2])
  elif kind == "swap_att":
    options = [
      (i, j)
      for i in named
      for j in named
      if i < j
      and scene[cap.refs[i]].color != scene[cap.refs[j]].color
      and scene[cap.refs[i]].shape != scene[cap.refs[j]].shape
      and (scene[cap.refs[j]].color, scene[cap.refs[i]].shape) in allowed
      and (scene[cap.refs[i]].color, scene[cap.refs[j]].shape) in allowed
    ]
    if not options:
      return None
    i, j = options[rng.integers(len(options))]
    a, b = scene[cap.refs[i]], scene[cap.refs[j]]
    a.color, b.color = b.color, a.color
    cap.objs[i] = (a.color, a.shape, cap.objs[i][2])
    cap.objs[j] = (b.color, b.shape, cap.objs[j][2])
  elif kind == "swap_obj":  # "A left of B" -> "B left of A", and the image shows B left of A
    if cap.relation is None:
      return None
    a, b = scene[cap.refs[0]], scene[cap.refs[1]]
    a.row, a.col, b.row, b.col = b.row, b.col, a.row, a.col
    cap.objs.reverse()
    cap.refs.reverse()
  elif (
    kind == "replace_rel"
  ):  # "A left of B" -> "A above B", and the image moves A and B to make it so
    if cap.relation is None:
      return None
    a, b = scene[cap.refs[0]], scene[cap.refs[1]]
    new_rels = [r for r in RELATIONS if r != cap.relation and not relation_holds(r, a, b)]
    if not new_rels:
      return None
    rel = str(rng.choice(new_rels))
    occupied = {(o.row, o.col) for o in scene if o is not a and o is not b}
    free = [(r, c) for r in range(cfg.grid) for c in range(cfg.grid) if (r, c) not in occupied]
    cell = lambda rc: Obj("", "", "", *rc)  # noqa: E731 - relations depend on the cells alone
    placements = [
      (p, q)
      for p in free
      for q in free
      if p != q
      and relation_holds(rel, cell(p), cell(q))
      and not relation_holds(cap.relation, cell(p), cell(q))
    ]
    if not placements:
      return None
    (a.row, a.col), (b.row, b.col) = placements[rng.integers(len(placements))]
    cap.relation = rel
  elif kind == "add_obj":  # names one more object, which the image lacks (x' gains it)
    if cap.relation is not None or len(cap.objs) >= cfg.max_named or len(scene) >= cfg.grid**2:
      return None
    present = {(o.color, o.shape) for o in scene}
    options = sorted(p for p in allowed if p not in present)
    if not options:
      return None
    color, shape = options[rng.integers(len(options))]
    occupied = {(o.row, o.col) for o in scene}
    free = [(r, c) for r in range(cfg.grid) for c in range(cfg.grid) if (r, c) not in occupied]
    row, col = free[rng.integers(len(free))]
    scene.append(Obj(color, shape, SIZES[rng.integers(2)], row, col))
    pos = int(rng.integers(0, len(cap.objs) + 1))
    cap.objs.insert(pos, (color, shape, None))
    cap.refs.insert(pos, len(scene) - 1)
  elif kind == "add_att":  # gives a named object a size word, the wrong one (x' flips the size)
    bare = [k for k in named if cap.objs[k][2] is None]
    if not bare:
      return None
    k = int(rng.choice(bare))
    o = scene[cap.refs[k]]
    o.size = "small" if o.size == "large" else "large"
    cap.objs[k] = (o.color, o.shape, o.size)
  else:
    raise ValueError(f"Unknown edit {kind!r}; choose one of {SUBSETS}.")
  return scene, cap


def _star(cx, cy, r):
  pts = []
  for k in range(10):
    a = -np.pi / 2 + k * np.pi / 5
    rr = r if k % 2 == 0 else r * 0.45
    pts.append((cx + rr * np.cos(a), cy + rr * np.sin(a)))
  return pts


def render(cfg: WorldConfig, scene: list[Obj]) -> Image.Image:
  """Scene -> RGB image, each object centred in its grid cell (drawn at 2x, then box-downsampled)."""
  s = cfg.image_size * 2
  cell = s / cfg.grid
  img = Image.new("RGB", (s, s), cfg.background)
  d = ImageDraw.Draw(img)
  for o in scene:
    cx, cy = (o.col + 0.5) * cell, (o.row + 0.5) * cell
    r = cell * (0.45 if o.size == "large" else 0.3)
    fill = COLORS[o.color]
    if o.shape == "circle":
      d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif o.shape == "square":
      q = r * 0.85
      d.rectangle((cx - q, cy - q, cx + q, cy + q), fill=fill)
    elif o.shape == "triangle":
      d.polygon(
        [(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)], fill=fill
      )
    elif o.shape == "star":
      d.polygon(_star(cx, cy, r), fill=fill)
    elif o.shape == "diamond":
      d.polygon([(cx, cy - r), (cx + r * 0.75, cy), (cx, cy + r), (cx - r * 0.75, cy)], fill=fill)
    elif o.shape == "cross":
      w = r * 0.35
      d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
      d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
  return img.reduce(2)


def png(img: Image.Image) -> bytes:
  buf = io.BytesIO()
  img.save(buf, format="PNG", compress_level=1)
  return buf.getvalue()


def make_triplet(
  cfg: WorldConfig, rng, kind: str, heldout: bool = False, counts=None, max_tries: int = 1000
):
  """One (x, y, x', y') whose negative is the edit `kind`, as a dict of PIL images and captions.

  Held-out triplets name at least one held-out pairing and their negative names as many. Training and
  binding edits must pass `check_triplet`; add edits (evaluation only) make y still true of x', so they
  are held to SugarCrepe's rule alone: y true of x, y' false of x. `counts` (a Counter) tallies rejections.
  """
  counts = collections.Counter() if counts is None else counts
  held = sorted(cfg.heldout())
  for _ in range(max_tries):
    must = held[rng.integers(len(held))] if heldout else None
    scene = random_scene(cfg, rng, heldout_ok=heldout, must_include=must)
    relation = True if kind in NEEDS_RELATION else False if kind == "add_obj" else None
    cap = random_caption(cfg, scene, rng, relation=relation, must_name=0 if heldout else None)
    neg = edit(cfg, scene, cap, kind, rng, heldout_ok=heldout)
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
    return {
      "image": render(cfg, scene),
      "caption": caption_text(cap),
      "neg_image": render(cfg, n_scene),
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


def sample_edit(cfg: WorldConfig, rng) -> str:
  kinds, weights = zip(*cfg.edit_weights)
  p = np.asarray(weights, np.float64)
  return str(kinds[rng.choice(len(kinds), p=p / p.sum())])


def write_demo_data(
  output_dir: str,
  num_train: int = 600,
  num_eval: int = 1200,
  seed: int = 0,
  cfg: WorldConfig = WorldConfig(),
  num_shards: int = 4,
) -> dict:
  """Writes training shards, held-out / seen SugarCrepe-format benchmarks and held-out triplet shards.

  Layout: train/demo-*.tfrecord (+ manifest.json), sugarcrepe/{subset}.json + sugarcrepe/images/,
  sugarcrepe_seen/..., heldout/demo_heldout-*.tfrecord, world.json (parameters and rejection counts).
  Byte-identical for a seed.
  """
  t0 = time.perf_counter()
  train_rng, heldout_rng, seen_rng, triplet_rng = (
    np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
  )
  world = {"seed": seed, **cfg.to_dict(), "heldout_pairings": sorted(map(list, cfg.heldout()))}
  how = {"tool": "tripletclip_jax.demo.world", "world": world}
  rejected = {
    "train": collections.Counter(),
    "heldout": collections.Counter(),
    "seen": collections.Counter(),
  }
  mix = collections.Counter()

  def write_shards(subdir, name, n, rng, heldout, counts):
    directory = os.path.join(output_dir, subdir)
    paths, sizes, i = [], [], 0
    per = -(-n // num_shards)
    for s in range(num_shards):
      path = os.path.join(directory, records.shard_name(name, s, num_shards))
      with records.ShardWriter(path) as w:
        while w.count < per and i < n:
          t = make_triplet(cfg, rng, sample_edit(cfg, rng), heldout=heldout, counts=counts)
          if not heldout:
            mix[t["neg_type"]] += 1
          w.write(
            {
              "key": f"{name}-{i:07d}",
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
    return int(sum(sizes))

  def write_sugarcrepe(subdir, rng, heldout, counts):
    directory = os.path.join(output_dir, subdir)
    os.makedirs(os.path.join(directory, "images"), exist_ok=True)
    for kind in SUBSETS:
      entries = {}
      for i in range(num_eval):
        t = make_triplet(cfg, rng, kind, heldout=heldout, counts=counts)
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

  n_train = write_shards(layout.TRAIN, "demo", num_train, train_rng, False, rejected["train"])
  write_sugarcrepe(layout.SUGARCREPE_HELDOUT, heldout_rng, True, rejected["heldout"])
  write_sugarcrepe(layout.SUGARCREPE_SEEN, seen_rng, False, rejected["seen"])
  n_held = write_shards(
    layout.HELDOUT, "demo_heldout", num_eval, triplet_rng, True, rejected["heldout"]
  )
  summary = {
    "train": n_train,
    "heldout_triplets": n_held,
    "sugarcrepe_per_subset": num_eval,
    "train_edit_mix": dict(sorted(mix.items())),
    "rejected": {k: dict(sorted(v.items())) for k, v in rejected.items()},
  }
  with open(os.path.join(output_dir, layout.WORLD_JSON), "w") as f:
    json.dump({"world": world, **summary}, f, indent=1)
  return dict(summary, seconds=time.perf_counter() - t0)
