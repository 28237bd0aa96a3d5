"""The demo world's edits: a scene graph and its caption changed the way an LLM's hard negative
changes a caption (swap_att, swap_obj, replace_rel, replace_att/obj, add_obj/att)."""

import dataclasses

from tripletclip_jax.demo.scenes import (
  RELATIONS,
  SIZES,
  Caption,
  Obj,
  WorldConfig,
  draw,
  relation_holds,
)

# the benchmark format the world is written in
from tripletclip_jax.evaluate.sugarcrepe import (
  SUBSETS,
)


# Hues far apart at 48 px, and from every background below.
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
  color, shape = allowed_list[options[draw(rng, p)]]
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
