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
import functools
import io
import itertools
import json
import os
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tripletclip_jax.data import records
from tripletclip_jax.demo import layout

# the benchmark format the world is written in
from tripletclip_jax.evaluate.sugarcrepe import (
  SUBSETS,
)

# Hues far apart at 48 px, and from every background below.
COLORS = {
  "red": (220, 40, 40),
  "green": (40, 170, 60),
  "blue": (40, 80, 220),
  "yellow": (235, 205, 30),
  "purple": (150, 60, 190),
  "orange": (245, 140, 30),
  "white": (250, 250, 250),
  "black": (20, 20, 20),
  "pink": (250, 130, 190),
  "cyan": (40, 210, 220),
  "brown": (125, 75, 35),
  "lime": (170, 240, 60),
}
SHAPES = (
  "circle",
  "square",
  "triangle",
  "star",
  "diamond",
  "cross",
  "ring",
  "crescent",
  "heart",
  "arrow",
  "bar",
  "semicircle",
)
TEXTURES = ("plain", "striped", "spotted", "checkered")
# World v4's vocabulary: 8 hues and 8 silhouettes that stay distinct at 48 px, drawn uniformly, so that a
# small model learns every value (v3's 12 x 12 long-tailed vocabulary left shapes unlearned).
V4_COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
V4_SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "heart", "bar")
PREFIXES = ("", "a photo of ", "an image of ", "there is ", "a picture showing ")
# The captioning LLM's own phrasing: y' never uses y's templates.
NEG_PREFIXES = ("a rendering of ", "an illustration of ", "a scene with ", "generated: ")
RELATIONS = ("left of", "right of", "above", "below")
SIZES = ("small", "large")
# The text-to-image model's domain: other backgrounds than the real images' grey.
SHIFT_BACKGROUNDS = ((196, 186, 160), (84, 96, 112), (150, 172, 150), (176, 160, 190))


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """Every parameter of the world; `write_demo_data` records it in `world.json`."""

  colors: tuple[str, ...] = V4_COLORS
  shapes: tuple[str, ...] = V4_SHAPES
  textures: tuple[str, ...] = TEXTURES
  # The k-th colour (and shape) in the order above is drawn with weight 1 / (k + 1) ** zipf: web
  # captions' long tail. 0 draws them uniformly.
  zipf: float = 0.0
  grid: int = 3  # objects sit near the centres of the cells of a grid x grid layout
  jitter: int = 2  # px: each centre moves by up to this much, so objects straddle patch borders
  min_objects: int = 2
  max_objects: int = 3
  max_named: int = 3  # captions name 2..max_named objects
  relation_prob: float = 0.4  # share of captions stating a relation between two named objects
  size_word_prob: float = 0.25
  texture_word_prob: float = 1.0
  # Latin-square symbols (i + j) mod n of colour i and shape j that are held out of training.
  heldout_symbols: tuple[int, ...] = (0, 1)
  # Relative frequency of each edit among the training negatives (the binding edits only), sorted by name.
  edit_weights: tuple[tuple[str, float], ...] = (
    ("replace_att", 1.0),
    ("replace_obj", 1.0),
    ("replace_rel", 1.0),
    ("swap_att", 1.0),
    ("swap_obj", 1.0),
  )
  # Share of training x' that do not show the edit (they show x's scene in the negatives' domain).
  failed_negatives: float = 0.2
  negative_shift: bool = True  # draw training x' with the text-to-image domain shift
  image_size: int = 48  # 16 px per cell, one patch of the "demo" preset
  background: tuple[int, int, int] = (128, 128, 128)
  # Radius of a small and of a large object, as a fraction of a cell (v3: 0.3 and 0.42).
  object_radius: tuple[float, float] = (0.36, 0.46)
  # The new value of a benchmark's replace_att / replace_obj item: "absent" from the scene (SugarCrepe's
  # rule, so that the subset measures recognising the value) or "present" in another object (v3's rule,
  # which a bag-of-words scorer passes for add/replace items alike). Training edits always take a present
  # value, so that every word of y' also describes something in x.
  benchmark_replace: str = "absent"

  def __post_init__(self):
    if len(self.colors) != len(self.shapes):
      raise ValueError(
        f"The held-out split is a Latin square: give as many colours ({len(self.colors)}) as "
        f"shapes ({len(self.shapes)})."
      )
    unknown = [c for c in self.colors if c not in COLORS]
    unknown += [s for s in self.shapes if s not in SHAPES]
    unknown += [t for t in self.textures if t not in TEXTURES]
    if unknown:
      raise ValueError(
        f"Unknown colours, shapes or textures {unknown}; choose from {sorted(COLORS)}, {SHAPES} "
        f"and {TEXTURES}."
      )
    if not 2 <= self.min_objects <= self.max_objects <= self.grid**2 or self.max_named < 2:
      raise ValueError("Need 2 <= min_objects <= max_objects <= grid**2 and max_named >= 2.")
    bad = [k for k, _ in self.edit_weights if k not in TRAIN_EDITS]
    if bad or not any(w > 0 for _, w in self.edit_weights):
      raise ValueError(f"edit_weights must weight some of {TRAIN_EDITS}; got {self.edit_weights}.")
    if len(set(self.heldout_symbols)) >= len(self.colors):
      raise ValueError("heldout_symbols would hold out every pairing of some colour.")
    if not 0 <= self.failed_negatives < 1:
      raise ValueError(f"failed_negatives must lie in [0, 1); got {self.failed_negatives}.")
    if self.benchmark_replace not in ("absent", "present"):
      raise ValueError(
        f"benchmark_replace must be 'absent' or 'present'; got {self.benchmark_replace!r}."
      )
    if not 0 < self.object_radius[0] <= self.object_radius[1] <= 0.5:
      raise ValueError("object_radius must be (small, large) with 0 < small <= large <= 0.5.")
    if self.jitter > self.image_size / self.grid / 8:
      raise ValueError("jitter must stay within an eighth of a cell, or relations turn ambiguous.")

  @classmethod
  def from_dict(cls, d) -> "WorldConfig":
    """From a (config) dict: lists become tuples, and `edit_weights` may be a {edit: weight}
    dict."""
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

  @functools.cache
  def heldout(self) -> frozenset:
    """Held-out (colour, shape) pairs: each symbol is a transversal, one pairing per colour and per
    shape."""
    n = len(self.colors)
    return frozenset(
      (c, s)
      for i, c in enumerate(self.colors)
      for j, s in enumerate(self.shapes)
      if (i + j) % n in set(self.heldout_symbols)
    )

  @functools.cache
  def pairings(self, heldout_ok: bool) -> tuple[list[tuple[str, str]], np.ndarray]:
    """The (colour, shape) pairings a scene may hold, and their Zipf probabilities."""
    held = self.heldout()
    rank = lambda k: 1.0 / (k + 1) ** self.zipf  # noqa: E731
    pairs = [
      ((c, s), rank(i) * rank(j))
      for i, c in enumerate(self.colors)
      for j, s in enumerate(self.shapes)
      if heldout_ok or (c, s) not in held
    ]
    p = np.asarray([w for _, w in pairs])
    return [pair for pair, _ in pairs], p / p.sum()


TRAIN_EDITS = ("swap_att", "swap_obj", "replace_rel", "replace_att", "replace_obj")
NEEDS_RELATION = ("swap_obj", "replace_rel")


@dataclasses.dataclass
class Obj:
  color: str
  shape: str
  size: str  # "small" | "large"
  row: int
  col: int
  texture: str = "plain"
  dx: int = (
    0  # px offset of the centre from its cell's centre (rendering only; relations use cells)
  )
  dy: int = 0


@dataclasses.dataclass
class Caption:
  """A claim about a scene: objects (colour, shape, size or None, texture or None), an optional
  relation of the first two. `refs` are the scene objects the caption was made from; the claim
  itself
  (what `holds` checks) ignores them, and `prefix` and `style` only change the wording."""

  objs: list[tuple[str, str, str | None, str | None]]
  relation: str | None
  prefix: str
  refs: list[int]
  style: str = "real"  # "real" (y) | "negative" (y', the LLM's phrasing)


def relation_holds(rel: str, a: Obj, b: Obj) -> bool:
  """Whether `a rel b` is true on the grid (a diagonal pair satisfies two relations)."""
  return {
    "left of": a.col < b.col,
    "right of": a.col > b.col,
    "above": a.row < b.row,
    "below": a.row > b.row,
  }[rel]


def _matches(desc, o: Obj) -> bool:
  color, shape, size, texture = desc
  return (
    (color is None or o.color == color)
    and (shape is None or o.shape == shape)
    and (size is None or o.size == size)
    and (texture is None or o.texture == texture)
  )


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


def scene_words(scene: list[Obj]) -> frozenset:
  """Every word that describes something in the scene: its attribute values and the relations that
  hold between some two of its objects."""
  words = {w for o in scene for w in (o.color, o.shape, o.size, o.texture)}
  words |= {
    r for a, b in itertools.permutations(scene, 2) for r in RELATIONS if relation_holds(r, a, b)
  }
  return frozenset(words)


def caption_words(cap: Caption) -> frozenset:
  return frozenset(w for d in cap.objs for w in d if w) | (
    {cap.relation} if cap.relation else set()
  )


def _per_image_in_batches(n: int, rng, batch_size: int, batches: int, counts) -> float:
  """Mean over the images of random batches of `counts(i, j)` summed over the batch's other items
  j."""
  found, images = 0, 0
  for _ in range(batches):
    idx = rng.choice(n, size=min(batch_size, n), replace=False)
    for i in idx:
      found += sum(1 for j in idx if j != i and counts(i, j))
    images += len(idx)
  return found / images


def accidental_hard_negatives(
  scenes, captions, rng, batch_size: int = 64, batches: int = 200
) -> float:
  """In random batches, the mean number per image of other captions whose every word describes
  something in it, yet which are false of it: the hard negatives a random batch already holds."""
  words = [scene_words(s) for s in scenes]
  cwords = [caption_words(c) for c in captions]
  return _per_image_in_batches(
    len(scenes),
    rng,
    batch_size,
    batches,
    lambda i, j: cwords[j] <= words[i] and not holds(scenes[i], captions[j]),
  )


ATTRIBUTES = {"color": 0, "shape": 1}  # index in a caption's object description


def without(cap: Caption, attr: str) -> Caption:
  """The caption with every object's `attr` ("color" or "shape") unsaid."""
  k = ATTRIBUTES[attr]
  return dataclasses.replace(cap, objs=[d[:k] + (None,) + d[k + 1 :] for d in cap.objs])


def rejected_only_by(
  attr: str, scenes, captions, rng, batch_size: int = 64, batches: int = 25
) -> float:
  """In random batches, the mean number per image of other captions that are false of it only
  because of their `attr` words (true once those are unsaid): the in-batch pressure to learn that
  attribute."""
  blind = [without(c, attr) for c in captions]
  return _per_image_in_batches(
    len(scenes),
    rng,
    batch_size,
    batches,
    lambda i, j: holds(scenes[i], blind[j]) and not holds(scenes[i], captions[j]),
  )


def _word_counts(cap: Caption, kind: str) -> collections.Counter:
  """How often the caption says each word the oracle `kind` reads (a word per named object)."""
  if kind == "bow":
    words = [w for d in cap.objs for w in d if w] + ([cap.relation] if cap.relation else [])
  else:
    words = [d[ATTRIBUTES[kind]] for d in cap.objs]
  return collections.Counter(words)


def _scene_counts(scene: list[Obj]) -> collections.Counter:
  """How many objects carry each attribute value, and how many ordered pairs each relation holds
  for."""
  counts = collections.Counter(w for o in scene for w in (o.color, o.shape, o.size, o.texture))
  counts.update(
    r for a, b in itertools.permutations(scene, 2) for r in RELATIONS if relation_holds(r, a, b)
  )
  return counts


ORACLES = ("bow", "color", "shape")


def oracle_choice(scene: list[Obj], cap: Caption, neg: Caption, kind: str = "bow") -> float:
  """A bag-of-words scorer: it knows how many objects of the scene each word describes, but not
  which words belong together. 1 if the caption has the larger share of words the scene supports (a
  word said k times counts at most as often as the scene has it), 0.5 on a tie, else 0.

  `kind` "bow" reads every word (colours, shapes, textures, sizes, relations); "color" and "shape"
  read only those words, as a model that has learned one attribute alone would. Swaps use the same
  words, so the oracle is at chance on them; a replacement that names a value absent from the scene,
  or one more object of a value than the scene has, it rejects.
  """
  have = _scene_counts(scene)

  def share(c):
    said = _word_counts(c, kind)
    return sum(min(n, have[w]) for w, n in said.items()) / max(sum(said.values()), 1)

  a, b = share(cap), share(neg)
  return 1.0 if a > b else 0.5 if a == b else 0.0


def num_heldout(cfg: WorldConfig, cap: Caption) -> int:
  held = cfg.heldout()
  return sum((d[0], d[1]) in held for d in cap.objs)


def _describe(desc) -> str:
  color, shape, size, texture = desc
  words = " ".join(w for w in (size, texture, color, shape) if w)
  return ("an " if words[0] in "aeiou" else "a ") + words


def caption_text(cap: Caption) -> str:
  """y style: "a photo of a red circle, a blue square and a star"; y' style (the LLM's): "a scene
  with a blue circle plus a red square", "... a red circle, placed left of a blue square"."""
  parts = [_describe(d) for d in cap.objs]
  neg = cap.style == "negative"
  if cap.relation:
    body = f"{parts[0]}{', placed' if neg else ''} {cap.relation} {parts[1]}"
  elif len(parts) == 1:
    body = parts[0]
  else:
    body = ", ".join(parts[:-1]) + (" plus " if neg else " and ") + parts[-1]
  return cap.prefix + body


def _draw(rng, probs) -> int:
  return int(rng.choice(len(probs), p=probs))


def random_scene(cfg: WorldConfig, rng, heldout_ok: bool, must_include=None) -> list[Obj]:
  """min..max_objects objects in distinct grid cells, (colour, shape) drawn by Zipf frequency;
  `must_include` forces one (colour, shape) in."""
  pairings, p = cfg.pairings(heldout_ok)
  n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
  cells = rng.choice(cfg.grid**2, size=n, replace=False)
  scene = []
  for k, cell in enumerate(cells):
    color, shape = must_include if (k == 0 and must_include) else pairings[_draw(rng, p)]
    scene.append(
      Obj(
        color,
        shape,
        SIZES[rng.integers(2)],
        int(cell) // cfg.grid,
        int(cell) % cfg.grid,
        cfg.textures[rng.integers(len(cfg.textures))],
        *(int(v) for v in rng.integers(-cfg.jitter, cfg.jitter + 1, size=2)),
      )
    )
  return scene


def _mention(cfg: WorldConfig, o: Obj, rng):
  """How a caption names `o`: colour and shape, a size and a texture word with the world's odds."""
  size = o.size if rng.uniform() < cfg.size_word_prob else None
  texture = o.texture if rng.uniform() < cfg.texture_word_prob else None
  return (o.color, o.shape, size, texture)


def random_caption(
  cfg: WorldConfig,
  scene: list[Obj],
  rng,
  relation: bool | None = None,
  must_name: int | None = None,
) -> Caption:
  """Names 2..max_named objects in random order (`must_name` among the first two); a relation
  caption names two and states a relation that holds. `relation` None draws it with
  `relation_prob`."""
  order = [int(i) for i in rng.permutation(len(scene))]
  if must_name is not None:
    order.remove(must_name)
    order.insert(int(rng.integers(0, 2)), must_name)
  if relation is None:
    relation = bool(rng.uniform() < cfg.relation_prob)
  prefix = str(rng.choice(PREFIXES))

  desc = lambda o: _mention(cfg, o, rng)  # noqa: E731
  if relation:
    a, b = scene[order[0]], scene[order[1]]
    rels = [r for r in RELATIONS if relation_holds(r, a, b)]
    return Caption([desc(a), desc(b)], str(rng.choice(rels)), prefix, order[:2])
  k = int(rng.integers(2, min(len(scene), cfg.max_named) + 1))
  return Caption([desc(scene[i]) for i in order[:k]], None, prefix, order[:k])


def _copy(scene, cap):
  return [dataclasses.replace(o) for o in scene], dataclasses.replace(
    cap, objs=list(cap.objs), refs=list(cap.refs)
  )


def _replace(cfg, scene, cap, rng, allowed, att: int, new_value: str) -> bool:
  """replace_att (att 0) / replace_obj (att 1): a named object's colour / shape becomes another."""
  options = []
  for k in range(len(cap.objs)):
    o = scene[cap.refs[k]]
    present = {(p.color, p.shape)[att] for p in scene}
    values = present if new_value == "present" else set((cfg.colors, cfg.shapes)[att]) - present
    for new in sorted(values - {(o.color, o.shape)[att]}):
      pairing = (new, o.shape) if att == 0 else (o.color, new)
      if pairing in allowed:
        options.append((k, pairing))
  if not options:
    return False
  k, (color, shape) = options[rng.integers(len(options))]
  o = scene[cap.refs[k]]
  o.color, o.shape = color, shape
  cap.objs[k] = (color, shape, *cap.objs[k][2:])
  return True


def _swap_att(cfg, scene, cap, rng, allowed) -> bool:
  """Two named objects trade colours (each new pairing allowed)."""
  named = range(len(cap.objs))
  obj = lambda k: scene[cap.refs[k]]  # noqa: E731
  options = [
    (i, j)
    for i in named
    for j in named
    if i < j
    and obj(i).color != obj(j).color
    and obj(i).shape != obj(j).shape
    and (obj(j).color, obj(i).shape) in allowed
    and (obj(i).color, obj(j).shape) in allowed
  ]
  if not options:
    return False
  i, j = options[rng.integers(len(options))]
  a, b = obj(i), obj(j)
  a.color, b.color = b.color, a.color
  cap.objs[i] = (a.color, *cap.objs[i][1:])
  cap.objs[j] = (b.color, *cap.objs[j][1:])
  return True


def _swap_obj(cfg, scene, cap, rng, allowed) -> bool:
  """ "A left of B" -> "B left of A", and the image shows B left of A."""
  if cap.relation is None:
    return False
  a, b = scene[cap.refs[0]], scene[cap.refs[1]]
  a.row, a.col, b.row, b.col = b.row, b.col, a.row, a.col
  cap.objs.reverse()
  cap.refs.reverse()
  return True


def _replace_rel(cfg, scene, cap, rng, allowed) -> bool:
  """ "A left of B" -> "A above B", and the image moves A and B so that only the new relation
  holds."""
  if cap.relation is None:
    return False
  a, b = scene[cap.refs[0]], scene[cap.refs[1]]
  new_rels = [r for r in RELATIONS if r != cap.relation and not relation_holds(r, a, b)]
  if not new_rels:
    return False
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
    return False
  (a.row, a.col), (b.row, b.col) = placements[rng.integers(len(placements))]
  cap.relation = rel
  return True


def _add_obj(cfg, scene, cap, rng, allowed, allowed_list, allowed_p) -> bool:
  """Names one more object, which the image lacks (x' gains it)."""
  if cap.relation is not None or len(cap.objs) >= cfg.max_named or len(scene) >= cfg.grid**2:
    return False
  present = {(o.color, o.shape) for o in scene}
  options = [k for k, pair in enumerate(allowed_list) if pair not in present]
  if not options:
    return False
  p = allowed_p[options] / allowed_p[options].sum()
  color, shape = allowed_list[options[_draw(rng, p)]]
  occupied = {(o.row, o.col) for o in scene}
  free = [(r, c) for r in range(cfg.grid) for c in range(cfg.grid) if (r, c) not in occupied]
  row, col = free[rng.integers(len(free))]
  size = SIZES[rng.integers(2)]
  scene.append(Obj(color, shape, size, row, col, cfg.textures[rng.integers(len(cfg.textures))]))
  pos = int(rng.integers(0, len(cap.objs) + 1))
  cap.objs.insert(pos, (color, shape, None, None))
  cap.refs.insert(pos, len(scene) - 1)
  return True


def _add_att(cfg, scene, cap, rng, allowed) -> bool:
  """Gives a named object a size word, the wrong one (x' flips the size)."""
  bare = [k for k in range(len(cap.objs)) if cap.objs[k][2] is None]
  if not bare:
    return False
  k = int(rng.choice(bare))
  o = scene[cap.refs[k]]
  o.size = "small" if o.size == "large" else "large"
  cap.objs[k] = (o.color, o.shape, o.size, cap.objs[k][3])
  return True


def edit(
  cfg: WorldConfig,
  scene: list[Obj],
  cap: Caption,
  kind: str,
  rng,
  heldout_ok: bool,
  new_value: str = "present",
):
  """Edits (scene, caption) the SugarCrepe way `kind` -> (scene', caption'), or None if infeasible.

  replace_att / replace_obj take the new colour / shape from another object of the scene
  (`new_value="present"`: only binding tells the two captions apart) or from the values no object of
  the scene has (`"absent"`: SugarCrepe's rule).
  """
  if kind not in SUBSETS:
    raise ValueError(f"Unknown edit {kind!r}; choose one of {SUBSETS}.")
  scene, cap = _copy(scene, cap)
  allowed_list, allowed_p = cfg.pairings(heldout_ok)
  allowed = set(allowed_list)
  if kind in ("replace_att", "replace_obj"):
    done = _replace(cfg, scene, cap, rng, allowed, int(kind == "replace_obj"), new_value)
  elif kind == "add_obj":
    done = _add_obj(cfg, scene, cap, rng, allowed, allowed_list, allowed_p)
  else:
    done = {"swap_att": _swap_att, "swap_obj": _swap_obj, "replace_rel": _replace_rel}.get(
      kind, _add_att
    )(cfg, scene, cap, rng, allowed)
  return (scene, cap) if done else None


def _star(cx, cy, r):
  pts = []
  for k in range(10):
    a = -np.pi / 2 + k * np.pi / 5
    rr = r if k % 2 == 0 else r * 0.45
    pts.append((cx + rr * np.cos(a), cy + rr * np.sin(a)))
  return pts


def _shape_mask(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
  """(size, size) bool: the silhouette of `shape` of radius r px centred at (cx, cy)."""
  m = Image.new("L", (size, size), 0)
  d = ImageDraw.Draw(m)
  box = lambda x, y, rr: (x - rr, y - rr, x + rr, y + rr)  # noqa: E731
  if shape == "circle":
    d.ellipse(box(cx, cy, r), fill=255)
  elif shape == "square":
    d.rectangle(box(cx, cy, r * 0.85), fill=255)
  elif shape == "triangle":
    d.polygon(
      [(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)], fill=255
    )
  elif shape == "star":
    d.polygon(_star(cx, cy, r), fill=255)
  elif shape == "diamond":
    d.polygon([(cx, cy - r), (cx + r * 0.75, cy), (cx, cy + r), (cx - r * 0.75, cy)], fill=255)
  elif shape == "cross":
    w = r * 0.35
    d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=255)
    d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=255)
  elif shape == "ring":
    d.ellipse(box(cx, cy, r), fill=255)
    d.ellipse(box(cx, cy, r * 0.5), fill=0)
  elif shape == "crescent":
    d.ellipse(box(cx, cy, r), fill=255)
    d.ellipse(box(cx + r * 0.55, cy - r * 0.15, r * 0.8), fill=0)
  elif shape == "heart":
    d.ellipse(box(cx - r * 0.45, cy - r * 0.3, r * 0.52), fill=255)
    d.ellipse(box(cx + r * 0.45, cy - r * 0.3, r * 0.52), fill=255)
    d.polygon(
      [(cx - r * 0.95, cy - r * 0.15), (cx + r * 0.95, cy - r * 0.15), (cx, cy + r)], fill=255
    )
  elif shape == "bar":
    d.rectangle((cx - r, cy - r * 0.5, cx + r, cy + r * 0.5), fill=255)
  elif shape == "semicircle":  # flat side down
    d.pieslice(box(cx, cy + r * 0.45, r), 180, 360, fill=255)
  elif shape == "arrow":  # points up
    d.polygon([(cx, cy - r), (cx + r * 0.85, cy), (cx - r * 0.85, cy)], fill=255)
    d.rectangle((cx - r * 0.3, cy, cx + r * 0.3, cy + r), fill=255)
  else:
    raise ValueError(f"Unknown shape {shape!r}; choose from {SHAPES}.")
  return np.asarray(m) >= 128


@functools.cache
def _texture_mask(texture: str, size: int) -> np.ndarray | None:
  """Where a texture shows its second tone, at the 2x drawing scale: 2 px stripes / 1 px spots every
  4 px of the final image."""
  yy, xx = np.mgrid[0:size, 0:size]
  if texture == "striped":
    return (yy // 4) % 2 == 1
  if texture == "checkered":
    return (yy // 4 + xx // 4) % 2 == 1
  if texture == "spotted":
    return ((xx % 8) - 3.5) ** 2 + ((yy % 8) - 3.5) ** 2 <= 4.5
  return None


def _second_tone(rgb) -> np.ndarray:
  rgb = np.asarray(rgb, np.float32)
  lum = rgb @ np.asarray([0.299, 0.587, 0.114], np.float32)
  return rgb * 0.45 if lum > 90 else rgb + (255 - rgb) * 0.55  # darker, or lighter for dark colours


def draw_shift(rng) -> dict:
  """The text-to-image model's domain for one x': another background, brightness and contrast, blur
  and sensor-like noise."""
  return {
    "background": SHIFT_BACKGROUNDS[int(rng.integers(len(SHIFT_BACKGROUNDS)))],
    "contrast": float(rng.uniform(0.8, 1.1)),
    "brightness": float(rng.uniform(-12, 12)),
    "blur": float(rng.uniform(0.3, 0.8)),
    "noise": 6.0,
    "noise_seed": int(rng.integers(2**31)),
  }


def render(cfg: WorldConfig, scene: list[Obj], shift: dict | None = None) -> Image.Image:
  """Scene -> RGB image (drawn at 2x, then box-downsampled); `shift` (from `draw_shift`) renders it
  in the text-to-image model's domain instead of the real images' one."""
  s = cfg.image_size * 2
  cell = s / cfg.grid
  img = np.empty((s, s, 3), np.float32)
  img[:] = shift["background"] if shift else cfg.background
  for o in scene:
    cx, cy = (o.col + 0.5) * cell + 2 * o.dx, (o.row + 0.5) * cell + 2 * o.dy
    radius = cfg.object_radius[SIZES.index(o.size)]
    mask = _shape_mask(o.shape, cx, cy, cell * radius, s)
    img[mask] = COLORS[o.color]
    tex = _texture_mask(o.texture, s)
    if tex is not None:
      img[mask & tex] = _second_tone(COLORS[o.color])
  img = img.reshape(s // 2, 2, s // 2, 2, 3).mean((1, 3))
  if shift:
    img = (img - 128.0) * shift["contrast"] + 128.0 + shift["brightness"]
    img = np.asarray(
      Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(shift["blur"])
      ),
      np.float32,
    )
    img += np.random.default_rng(shift["noise_seed"]).normal(0, shift["noise"], img.shape)
  return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8))


def png(img: Image.Image) -> bytes:
  buf = io.BytesIO()
  img.save(buf, format="PNG", compress_level=1)
  return buf.getvalue()


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
  color, shape = pairings[_draw(rng, p)]
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
