"""The demo world's scenes and captions: the vocabulary, the world's settings, scene graphs, what
a caption says of a scene (truth, words, the bag-of-words oracles) and random scenes and captions.

The demo world as a whole is described in world.py and docs/demo_world.md."""

import collections
import dataclasses
import functools
import itertools

import numpy as np

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
# World v4's vocabulary: 8 hues and 8 silhouettes that stay distinct at 48 px, drawn uniformly, so
# that a small model learns every value (v3's 12 x 12 long-tailed vocabulary left shapes unlearned).
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
  # Relative frequency of each edit among the training negatives (the binding edits only), sorted by
  # name.
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
  # The new value of a benchmark's replace_att / replace_obj item: "absent" from the scene
  # (SugarCrepe's rule, so that the subset measures recognising the value) or "present" in another
  # object (v3's rule, which a bag-of-words scorer passes for add/replace items alike). Training
  # edits always take a present value, so that every word of y' also describes something in x.
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


def draw(rng, probs) -> int:
  return int(rng.choice(len(probs), p=probs))


def random_scene(cfg: WorldConfig, rng, heldout_ok: bool, must_include=None) -> list[Obj]:
  """min..max_objects objects in distinct grid cells, (colour, shape) drawn by Zipf frequency;
  `must_include` forces one (colour, shape) in."""
  pairings, p = cfg.pairings(heldout_ok)
  n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
  cells = rng.choice(cfg.grid**2, size=n, replace=False)
  scene = []
  for k, cell in enumerate(cells):
    color, shape = must_include if (k == 0 and must_include) else pairings[draw(rng, p)]
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
