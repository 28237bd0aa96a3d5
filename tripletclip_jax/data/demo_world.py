"""The demo world: procedural scenes where compositional reasoning is the whole task.

TripletCLIP maps onto it one to one (design.md section 5): a rule that edits
the scene graph plays the LLM, a renderer plays the text-to-image model.
Captions name some of the objects, in any order, sometimes with a spatial
relation, as web captions do. Negatives edit the scene in one of SugarCrepe's
seven ways. Some colour-shape combinations never appear in training and make
up the held-out benchmark, written in SugarCrepe's exact file format.
"""

import dataclasses
import io
import json
import os
import time

import numpy as np
from PIL import Image, ImageDraw

from tripletclip_jax.data import records

SUBSETS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 205, 30),
          "purple": (150, 60, 190), "orange": (245, 140, 30), "white": (250, 250, 250), "black": (20, 20, 20)}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
PREFIXES = ("", "a photo of ", "an image of ", "there is ", "a picture showing ")


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  colors: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple")
  shapes: tuple[str, ...] = ("circle", "square", "triangle", "star")
  min_objects: int = 1
  max_objects: int = 3
  max_named: int = 2        # a caption names at most this many objects
  relation_prob: float = 0.35
  size_word_prob: float = 0.3
  num_heldout: int = 5      # colour-shape combinations never seen in training
  image_size: int = 64
  background: tuple[int, int, int] = (128, 128, 128)

  def heldout(self) -> frozenset:
    """Held-out (colour, shape) pairs: a fixed diagonal, so every colour and shape is still seen."""
    c, s = self.colors, self.shapes
    return frozenset((c[i % len(c)], s[(2 * i + 1) % len(s)]) for i in range(self.num_heldout))


@dataclasses.dataclass
class Obj:
  shape: str
  color: str
  size: str  # "small" | "large"
  x: float   # centre, in [0, 1]
  y: float


@dataclasses.dataclass
class Caption:
  """Which objects a caption names, in which order, and an optional relation between the first two."""
  named: list[int]
  with_size: list[bool]
  relation: bool
  prefix: str


def _radius(size: str) -> float:
  return 0.17 if size == "large" else 0.11  # >= 14 px wide at 64 px: shapes stay legible to 8 px patches


def relation(a: Obj, b: Obj) -> str | None:
  """'left of' / 'right of' / 'above' / 'below' for a vs b, or None when ambiguous."""
  dx, dy = b.x - a.x, b.y - a.y
  if max(abs(dx), abs(dy)) < 0.2 or 0.6 < abs(dx) / max(abs(dy), 1e-6) < 1.6:
    return None
  if abs(dx) > abs(dy):
    return "left of" if dx > 0 else "right of"
  return "above" if dy > 0 else "below"


def describe(o: Obj, with_size: bool) -> str:
  words = f"{o.size} {o.color} {o.shape}" if with_size else f"{o.color} {o.shape}"
  return ("an " if words[0] in "aeiou" else "a ") + words


_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def meaning(scene: list[Obj], cap: Caption):
  """A canonical form of what the caption claims: equal forms mean the same thing."""
  parts = [describe(scene[i], w) for i, w in zip(cap.named, cap.with_size)]
  if cap.relation:
    rel = relation(scene[cap.named[0]], scene[cap.named[1]])
    return min((parts[0], rel, parts[1]), (parts[1], _INVERSE[rel], parts[0]))
  return tuple(sorted(parts))


def caption_text(scene: list[Obj], cap: Caption) -> str:
  parts = [describe(scene[i], w) for i, w in zip(cap.named, cap.with_size)]
  if cap.relation:
    body = f"{parts[0]} {relation(scene[cap.named[0]], scene[cap.named[1]])} {parts[1]}"
  elif len(parts) == 1:
    body = parts[0]
  else:
    body = ", ".join(parts[:-1]) + " and " + parts[-1]
  return cap.prefix + body


def _fits(scene: list[Obj], o: Obj) -> bool:
  r = _radius(o.size)
  if not (r <= o.x <= 1 - r and r <= o.y <= 1 - r):
    return False
  return all(np.hypot(o.x - p.x, o.y - p.y) > r + _radius(p.size) + 0.02 for p in scene)


def _place(scene, shape, color, size, rng, tries=60) -> Obj | None:
  for _ in range(tries):
    o = Obj(shape, color, size, float(rng.uniform(0, 1)), float(rng.uniform(0, 1)))
    if _fits(scene, o):
      return o
  return None


def _combos(cfg: WorldConfig, heldout_ok: bool):
  held = cfg.heldout()
  return [(c, s) for c in cfg.colors for s in cfg.shapes if heldout_ok or (c, s) not in held]


def random_scene(cfg: WorldConfig, rng, must_include=None) -> list[Obj]:
  """1..max_objects non-overlapping objects; `must_include` forces one (colour, shape) in."""
  combos = _combos(cfg, heldout_ok=False)
  n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
  scene = []
  wanted = [must_include] if must_include else []
  for k in range(n):
    color, shape = wanted[k] if k < len(wanted) else combos[rng.integers(len(combos))]
    o = _place(scene, shape, color, str(rng.choice(["small", "large"])), rng)
    if o is not None:
      scene.append(o)
  if not scene:  # cannot happen on an empty canvas, but keep the invariant explicit
    raise RuntimeError("could not place any object")
  return scene


def random_caption(cfg: WorldConfig, scene: list[Obj], rng, must_name: int | None = None) -> Caption:
  n = len(scene)
  order = [int(i) for i in rng.permutation(n)]
  if must_name is not None:
    order.remove(must_name)
    order.insert(0, must_name)
  prefix = str(rng.choice(PREFIXES))
  if n >= 2 and rng.uniform() < cfg.relation_prob:
    i, j = order[0], order[1]
    if rng.uniform() < 0.5 and must_name is None:
      i, j = j, i
    if relation(scene[i], scene[j]):
      return Caption([i, j], [bool(rng.uniform() < cfg.size_word_prob) for _ in range(2)], True, prefix)
  k = int(rng.integers(1, min(n, cfg.max_named) + 1))
  named = order[:k]
  return Caption(named, [bool(rng.uniform() < cfg.size_word_prob) for _ in named], False, prefix)


def make_negative(cfg: WorldConfig, scene, cap: Caption, kind: str, rng, heldout_ok: bool):
  """Edits (scene, caption) the SugarCrepe way `kind`. Returns (scene', caption') or None if infeasible."""
  orig_scene, orig_cap = scene, cap
  scene = [dataclasses.replace(o) for o in scene]
  cap = dataclasses.replace(cap, named=list(cap.named), with_size=list(cap.with_size))
  allowed = set(_combos(cfg, heldout_ok))
  if kind in ("replace_att", "replace_obj"):
    idx = int(rng.choice(cap.named))
    o = scene[idx]
    if kind == "replace_att":
      options = [c for c in cfg.colors if c != o.color and (c, o.shape) in allowed]
    else:
      options = [s for s in cfg.shapes if s != o.shape and (o.color, s) in allowed]
    if not options:
      return None
    if kind == "replace_att":
      o.color = str(rng.choice(options))
    else:
      o.shape = str(rng.choice(options))
  elif kind in ("replace_rel", "swap_obj"):
    if not cap.relation:
      return None
    a, b = scene[cap.named[0]], scene[cap.named[1]]
    a.x, a.y, b.x, b.y = b.x, b.y, a.x, a.y  # swapping places flips the relation
    if kind == "swap_obj":  # "A left of B" -> "B left of A"
      cap.named.reverse()
      cap.with_size.reverse()
  elif kind == "swap_att":
    pairs = [(i, j) for i in cap.named for j in cap.named if i < j and scene[i].color != scene[j].color
             and (scene[j].color, scene[i].shape) in allowed and (scene[i].color, scene[j].shape) in allowed]
    if not pairs:
      return None
    i, j = pairs[rng.integers(len(pairs))]
    scene[i].color, scene[j].color = scene[j].color, scene[i].color
  elif kind == "add_obj":
    if cap.relation or len(scene) >= cfg.max_objects or len(cap.named) >= cfg.max_named:
      return None
    present = {(o.color, o.shape) for o in scene}
    options = sorted(c for c in allowed if c not in present)  # sets iterate in hash order
    color, shape = options[rng.integers(len(options))]
    o = _place(scene, shape, color, str(rng.choice(["small", "large"])), rng)
    if o is None:
      return None
    scene.append(o)
    pos = int(rng.integers(0, len(cap.named) + 1))
    cap.named.insert(pos, len(scene) - 1)
    cap.with_size.insert(pos, bool(rng.uniform() < cfg.size_word_prob))
  elif kind == "add_att":
    bare = [k for k, w in enumerate(cap.with_size) if not w]
    if not bare:
      return None
    k = int(rng.choice(bare))
    o = scene[cap.named[k]]
    grown = dataclasses.replace(o, size="small" if o.size == "large" else "large")
    if not _fits([p for p in scene if p is not o], grown):
      return None
    scene[cap.named[k]] = grown
    cap.with_size[k] = True
  else:
    raise ValueError(f"Unknown edit {kind!r}; choose one of {SUBSETS}.")
  if cap.relation and relation(scene[cap.named[0]], scene[cap.named[1]]) is None:
    return None
  if meaning(scene, cap) == meaning(orig_scene, orig_cap):  # e.g. swapping colours of two circles
    return None
  return scene, cap


def _star(cx, cy, r):
  pts = []
  for k in range(10):
    a = -np.pi / 2 + k * np.pi / 5
    rr = r if k % 2 == 0 else r * 0.45
    pts.append((cx + rr * np.cos(a), cy + rr * np.sin(a)))
  return pts


def render(cfg: WorldConfig, scene: list[Obj]) -> Image.Image:
  """Scene -> RGB image (drawn at 2x, then box-downsampled for clean edges)."""
  s = cfg.image_size * 2
  img = Image.new("RGB", (s, s), cfg.background)
  d = ImageDraw.Draw(img)
  for o in scene:
    cx, cy, r = o.x * s, o.y * s, _radius(o.size) * s
    fill = COLORS[o.color]
    if o.shape == "circle":
      d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif o.shape == "square":
      q = r * 0.85
      d.rectangle((cx - q, cy - q, cx + q, cy + q), fill=fill)
    elif o.shape == "triangle":
      d.polygon([(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)], fill=fill)
    elif o.shape == "star":
      d.polygon(_star(cx, cy, r), fill=fill)
    elif o.shape == "diamond":
      d.polygon([(cx, cy - r), (cx + r * 0.75, cy), (cx, cy + r), (cx - r * 0.75, cy)], fill=fill)
    elif o.shape == "cross":
      w = r * 0.35
      d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
      d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    else:
      raise ValueError(f"Unknown shape {o.shape!r}; choose from {SHAPES}.")
  return img.reduce(2)


def png(img: Image.Image) -> bytes:
  buf = io.BytesIO()
  img.save(buf, format="PNG", compress_level=1)
  return buf.getvalue()


def make_triplet(cfg: WorldConfig, rng, heldout: bool = False, kind: str | None = None):
  """One (scene, caption, negative) sample: dict with images as PIL and captions as text, or None."""
  must = None
  if heldout:
    held = sorted(cfg.heldout())
    must = held[rng.integers(len(held))]
  scene = random_scene(cfg, rng, must_include=must)
  cap = random_caption(cfg, scene, rng, must_name=0 if heldout else None)
  kinds = [kind] if kind else [str(k) for k in rng.permutation(SUBSETS)]
  for k in kinds:
    neg = make_negative(cfg, scene, cap, k, rng, heldout_ok=heldout)
    if neg is not None:
      n_scene, n_cap = neg
      return {"image": render(cfg, scene), "caption": caption_text(scene, cap),
              "neg_image": render(cfg, n_scene), "neg_caption": caption_text(n_scene, n_cap), "neg_type": k}
  return None


def write_demo_data(output_dir: str, num_train: int = 1500, num_eval: int = 200, seed: int = 0,
                    cfg: WorldConfig = WorldConfig(), num_shards: int = 4) -> dict:
  """Writes training shards, held-out / seen SugarCrepe-format benchmarks and held-out triplet shards.

  Layout: train/demo-*.tfrecord (+ manifest.json), sugarcrepe/{subset}.json + sugarcrepe/images/,
  sugarcrepe_seen/..., heldout/demo_heldout-*.tfrecord. Byte-identical for a seed.
  """
  t0 = time.perf_counter()
  train_rng, heldout_rng, seen_rng, triplet_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))
  how = {"tool": "tripletclip_jax.data.demo_world", "seed": seed, "world": dataclasses.asdict(cfg)}

  def write_shards(subdir, name, n, rng, heldout):
    directory = os.path.join(output_dir, subdir)
    paths, counts, i = [], [], 0
    per = -(-n // num_shards)
    for s in range(num_shards):
      path = os.path.join(directory, records.shard_name(name, s, num_shards))
      with records.ShardWriter(path) as w:
        while w.count < per and i < n:
          t = make_triplet(cfg, rng, heldout=heldout)
          if t is None:
            continue
          w.write({"key": f"{name}-{i:07d}", "image": png(t["image"]), "caption": t["caption"],
                   "neg_image": png(t["neg_image"]), "neg_caption": t["neg_caption"],
                   "neg_type": t["neg_type"], "neg_source": "rule", "source": "demo_world"})
          i += 1
      paths.append(path)
      counts.append(w.count)
    records.write_manifest(directory, name, paths, counts, **how)
    return int(sum(counts))

  def write_sugarcrepe(subdir, rng, heldout):
    directory = os.path.join(output_dir, subdir)
    os.makedirs(os.path.join(directory, "images"), exist_ok=True)
    for kind in SUBSETS:
      entries, attempt = {}, 0
      while len(entries) < num_eval:
        t = make_triplet(cfg, rng, heldout=heldout, kind=kind)
        attempt += 1  # infeasible attempts leave gaps in the keys, as the real files have
        if t is None:
          continue
        fname = f"{kind}_{attempt:06d}.png"
        t["image"].save(os.path.join(directory, "images", fname), format="PNG", compress_level=1)
        entries[str(attempt)] = {"filename": fname, "caption": t["caption"], "negative_caption": t["neg_caption"]}
      with open(os.path.join(directory, f"{kind}.json"), "w") as f:
        json.dump(entries, f, indent=1)

  n_train = write_shards("train", "demo", num_train, train_rng, heldout=False)
  write_sugarcrepe("sugarcrepe", heldout_rng, heldout=True)
  write_sugarcrepe("sugarcrepe_seen", seen_rng, heldout=False)
  n_held = write_shards("heldout", "demo_heldout", num_eval, triplet_rng, heldout=True)
  return {"train": n_train, "heldout_triplets": n_held, "sugarcrepe_per_subset": num_eval,
          "seconds": time.perf_counter() - t0}
