"""The demo world: deterministic, SugarCrepe-format, scene-graph-checked, held-out pairings really
held out."""

import collections
import filecmp
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tripletclip_jax.demo import render as demo_render, scenes as ds, world as dw
from tripletclip_jax.data import records

CFG = ds.WorldConfig()


def _files(d):
  return sorted(os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs)


def test_byte_identical_for_a_seed(tmp_path):
  a, b, c = (str(tmp_path / n) for n in "abc")
  for d, seed in ((a, 3), (b, 3), (c, 4)):
    subprocess.run(
      [
        sys.executable,
        "launch/make_demo_data.py",
        "--output_dir",
        d,
        "--num_train",
        "40",
        "--num_eval",
        "5",
        "--seed",
        str(seed),
      ],
      check=True,
      capture_output=True,
    )
  assert _files(a) == _files(b)
  _, mismatch, errors = filecmp.cmpfiles(a, b, _files(a), shallow=False)
  assert not mismatch and not errors
  assert (
    open(f"{a}/train/demo-00000-of-00004.tfrecord", "rb").read()
    != open(f"{c}/train/demo-00000-of-00004.tfrecord", "rb").read()
  )


def _obj(color, shape, row, col, size="small"):
  return ds.Obj(color, shape, size, row, col)


def _cap(*objs, relation=None):
  return ds.Caption([(c, s, z, None) for c, s, z in objs], relation, "", list(range(len(objs))))


def test_the_scene_graph_check_rejects_false_negatives():
  x = [_obj("red", "circle", 0, 0), _obj("blue", "square", 0, 2)]
  y = _cap(("red", "circle", None), ("blue", "square", None))
  # An add edit: y' adds a green star, x' gains one. y is still true of x', so TripletCLIP's second
  # term would push a true caption away: a false negative, rejected.
  x_add = x + [_obj("green", "star", 2, 1)]
  y_add = _cap(("red", "circle", None), ("blue", "square", None), ("green", "star", None))
  assert ds.holds(x, y) and not ds.holds(x, y_add) and ds.holds(x_add, y_add) and ds.holds(x_add, y)
  assert not ds.check_triplet(x, y, x_add, y_add)
  # A colour replacement that the third, unnamed object already makes true of x: rejected.
  x3 = x + [_obj("blue", "circle", 2, 2)]
  y_rep = _cap(("blue", "circle", None), ("blue", "square", None))
  x3_neg = [
    _obj("blue", "circle", 0, 0),
    _obj("blue", "square", 0, 2),
    _obj("blue", "circle", 2, 2),
  ]
  assert not ds.check_triplet(x3, y, x3_neg, y_rep)
  # A genuine binding negative passes: swap the colours.
  x_swap = [_obj("blue", "circle", 0, 0), _obj("red", "square", 0, 2)]
  y_swap = _cap(("blue", "circle", None), ("red", "square", None))
  assert ds.check_triplet(x, y, x_swap, y_swap)
  # Relations: "circle left of square" vs the mirrored scene.
  y_rel = _cap(("red", "circle", None), ("blue", "square", None), relation="left of")
  x_rel = [_obj("red", "circle", 0, 2), _obj("blue", "square", 0, 0)]
  y_rel_neg = _cap(("red", "circle", None), ("blue", "square", None), relation="right of")
  assert ds.check_triplet(x, y_rel, x_rel, y_rel_neg)
  assert ds.caption_text(y_rel) == "a red circle left of a blue square"


def test_every_training_triplet_passes_the_check_with_the_configured_mix():
  rng, counts = np.random.default_rng(0), collections.Counter()
  kinds = collections.Counter()
  for _ in range(600):
    kind = dw.sample_edit(CFG, rng)
    t = dw.make_triplet(CFG, rng, kind, counts=counts, training=True)
    kinds[kind] += 1
    assert ds.check_triplet(t["scene"], t["cap"], t["neg_scene"], t["neg_cap"]), t["caption"]
    assert t["caption"] != t["neg_caption"]
    assert len(t["cap"].objs) >= 2
    if kind in ("replace_att", "replace_obj"):  # the new colour / shape is already in the scene
      att = 0 if kind == "replace_att" else 1
      (new,) = [b[att] for a, b in zip(t["cap"].objs, t["neg_cap"].objs) if a != b]
      assert new in {(o.color, o.shape)[att] for o in t["scene"]}
  assert set(kinds) == set(ds.TRAIN_EDITS)
  weights = dict(CFG.edit_weights)
  assert all(abs(n / 600 - weights[k] / sum(weights.values())) < 0.06 for k, n in kinds.items())
  assert sum(counts.values()) > 0  # rejected edits are counted


def test_heldout_split_is_a_latin_square_and_never_trained_on(tmp_path):
  held = CFG.heldout()
  n = len(CFG.colors)
  assert len(held) == n * len(CFG.heldout_symbols)
  assert all(
    sum((c, s) in held for s in CFG.shapes) == len(CFG.heldout_symbols) for c in CFG.colors
  )
  assert all(
    sum((c, s) in held for c in CFG.colors) == len(CFG.heldout_symbols) for s in CFG.shapes
  )
  seen = set(CFG.pairings(heldout_ok=False)[0])
  assert {c for c, _ in seen} == set(CFG.colors) and {s for _, s in seen} == set(CFG.shapes)
  rng = np.random.default_rng(1)
  # No held-out pairing in any training scene, positive or negative, named or not.
  for _ in range(300):
    t = dw.make_triplet(CFG, rng, dw.sample_edit(CFG, rng))
    assert all((o.color, o.shape) in seen for o in t["scene"] + t["neg_scene"])
  out = dw.write_demo_data(str(tmp_path), num_train=60, num_eval=30, seed=0, cfg=CFG)
  assert out["train"] == 60 and sum(out["train_edit_mix"].values()) == 60
  texts = [
    (
      records.decode_example(r)["caption"] + b" " + records.decode_example(r)["neg_caption"]
    ).decode()
    for p in records.resolve_shards(str(tmp_path / "train"))
    for r in records.iter_records(p)
  ]
  assert len(texts) == 60 and not any(f"{c} {s}" in t for t in texts for c, s in held)
  # y' is in the captioning LLM's phrasing, never y's.
  for p in records.resolve_shards(str(tmp_path / "train")):
    for r in records.iter_records(p):
      ex = records.decode_example(r)
      assert ex["neg_caption"].decode().startswith(ds.NEG_PREFIXES)
      assert not ex["caption"].decode().startswith(ds.NEG_PREFIXES)
  world = json.load(open(tmp_path / "world.json"))
  assert (
    ds.WorldConfig.from_dict(
      {k: v for k, v in world["world"].items() if k not in ("seed", "heldout_pairings")}
    )
    == CFG
  )


@pytest.mark.parametrize("subset", dw.SUBSETS)
def test_heldout_benchmark_is_familiarity_balanced(subset):
  rng = np.random.default_rng(2)
  for _ in range(40):
    t = dw.make_triplet(CFG, rng, subset, heldout=True)
    assert ds.holds(t["scene"], t["cap"]) and not ds.holds(t["scene"], t["neg_cap"])
    assert ds.num_heldout(CFG, t["cap"]) >= 1
    assert ds.num_heldout(CFG, t["neg_cap"]) == ds.num_heldout(CFG, t["cap"])


def test_sugarcrepe_format(tmp_path):
  dw.write_demo_data(str(tmp_path), num_train=20, num_eval=12, seed=0)
  for split in ("sugarcrepe", "sugarcrepe_seen"):
    for subset in dw.SUBSETS:
      entries = json.load(open(tmp_path / split / f"{subset}.json"))
      assert len(entries) == 12
      for e in entries.values():
        assert set(e) == {"filename", "caption", "negative_caption"}
        assert e["caption"] != e["negative_caption"]
        assert os.path.exists(tmp_path / split / "images" / e["filename"])


def test_world_config_rejects_bad_parameters():
  with pytest.raises(ValueError, match="Latin square"):
    ds.WorldConfig(colors=("red", "green"), shapes=("circle", "square", "star"))
  with pytest.raises(ValueError, match="edit_weights"):
    ds.WorldConfig.from_dict({"edit_weights": {"add_obj": 1.0}})
  with pytest.raises(ValueError, match="Unknown demo world parameters"):
    ds.WorldConfig.from_dict({"colours": ("red",)})


def test_generator_defaults_are_the_demo_config():
  # launch/make_demo_data.py uses WorldConfig's defaults, the trainer uses configs/demo.py: one
  # world.
  import inspect
  from tripletclip_jax.configlib import load_config_file

  c = load_config_file(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo.py")
  )
  assert ds.WorldConfig.from_dict(c.data.source.world) == ds.WorldConfig()
  defaults = inspect.signature(dw.write_demo_data).parameters
  assert (defaults["num_train"].default, defaults["num_eval"].default) == (
    c.data.source.num_train,
    c.data.source.num_eval,
  )


def test_random_negatives_are_easy_as_on_web_data(tmp_path):
  # World v4's vocabulary with textures always named: a random batch of 64 holds at most 0.2
  # captions per image whose every word describes something in it yet which are false of it (the
  # measured rate is in world.json). v2's 5 x 5 uniform vocabulary without texture words held about
  # 3.
  out = dw.write_demo_data(str(tmp_path), num_train=600, num_eval=2, seed=5)
  assert out["accidental_hard_negatives_per_image"] <= 0.2
  world = json.load(open(tmp_path / "world.json"))
  assert world["accidental_hard_negatives_per_image"] == out["accidental_hard_negatives_per_image"]
  v2 = ds.WorldConfig(
    colors=("red", "green", "blue", "yellow", "purple"),
    shapes=("circle", "square", "triangle", "star", "diamond"),
    textures=("plain",),
    zipf=0.0,
    texture_word_prob=0.0,
  )
  rng = np.random.default_rng(0)
  ts = [dw.make_triplet(v2, rng, dw.sample_edit(v2, rng)) for _ in range(300)]
  rate = ds.accidental_hard_negatives([t["scene"] for t in ts], [t["cap"] for t in ts], rng)
  assert rate > 1.5
  # The counted captions are exactly "every word true, yet false": check one batch by hand.
  scene = [_obj("red", "circle", 0, 0), _obj("blue", "square", 0, 2)]
  swapped = _cap(("blue", "circle", None), ("red", "square", None))
  other = _cap(("green", "circle", None), ("blue", "square", None))
  own = _cap(("red", "circle", None), ("blue", "square", None))
  n = ds.accidental_hard_negatives([scene] * 3, [own, swapped, other], rng, batch_size=3, batches=1)
  assert n == 2 / 3  # for each copy of the scene, the swapped caption (of another item) only


def test_failed_negatives_are_kept_at_rate_q(tmp_path):
  out = dw.write_demo_data(str(tmp_path / "q"), num_train=50, num_eval=2, seed=1)
  assert out["failed_negatives"]["count"] == 10 and out["failed_negatives"]["q"] == 0.2
  failed = set(out["failed_negatives"]["keys"])
  assert len(failed) == 10
  # The same world drawn with q = 0: the same triplets, except that exactly the listed x' now
  # differ.
  dw.write_demo_data(
    str(tmp_path / "q0"),
    num_train=50,
    num_eval=2,
    seed=1,
    cfg=ds.WorldConfig(failed_negatives=0.0),
  )

  def train_records(d):
    return {
      ex["key"].decode(): ex
      for p in records.resolve_shards(str(d / "train"))
      for ex in map(records.decode_example, records.iter_records(p))
    }

  with_q, without = train_records(tmp_path / "q"), train_records(tmp_path / "q0")
  assert set(with_q) == set(without) and len(with_q) == 50
  for key, ex in with_q.items():
    other = without[key]
    assert (ex["image"], ex["caption"], ex["neg_caption"]) == (
      other["image"],
      other["caption"],
      other["neg_caption"],
    )
    assert (ex["neg_image"] != other["neg_image"]) == (key in failed), key
  rng = np.random.default_rng(4)
  for kind in ds.TRAIN_EDITS:
    t = dw.make_triplet(CFG, rng, kind, training=True, failed=True)
    # x' shows x's scene: y is true of it and y' false, the way a text-to-image model fails.
    assert ds.holds(t["neg_scene"], t["cap"]) and not ds.holds(t["neg_scene"], t["neg_cap"])
    assert not ds.holds(t["scene"], t["neg_cap"])


def test_scene_graph_check_holds_under_the_domain_shift():
  rng = np.random.default_rng(6)
  for _ in range(200):
    t = dw.make_triplet(CFG, rng, dw.sample_edit(CFG, rng), training=True)
    assert ds.check_triplet(t["scene"], t["cap"], t["neg_scene"], t["neg_cap"])
    x, xn = (np.asarray(t[k], np.float32) for k in ("image", "neg_image"))
    # x' is in another domain: its background is none of the real images' grey.
    assert np.abs(xn[0, 0] - np.asarray(CFG.background)).max() > 10
    assert np.abs(x[0, 0] - np.asarray(CFG.background)).max() == 0
  # Every colour stays legible under the shift: an object's centre is nearest its own colour.
  names = list(ds.COLORS)
  ref = np.asarray([ds.COLORS[c] for c in names], np.float32)
  for k, color in enumerate(names):
    for shift in (None, demo_render.draw_shift(np.random.default_rng(k))):
      img = np.asarray(
        demo_render.render(CFG, [ds.Obj(color, "square", "large", 1, 1)], shift), np.float32
      )
      centre = img[21:27, 21:27].reshape(-1, 3).mean(0)
      assert names[int(np.argmin(((ref - centre) ** 2).sum(1)))] == color, (color, shift)


def test_every_attribute_value_renders_differently():
  base = dict(color="red", shape="circle", size="large", row=1, col=1, texture="plain")
  img = lambda **kw: np.asarray(demo_render.render(CFG, [ds.Obj(**dict(base, **kw))]), np.float32)  # noqa: E731
  for field, values in (
    ("color", CFG.colors),
    ("shape", CFG.shapes),
    ("texture", CFG.textures),
    ("size", ds.SIZES),
  ):
    renders = [img(**{field: v}) for v in values]
    for i in range(len(values)):
      for j in range(i):
        assert np.abs(renders[i] - renders[j]).mean() > 0.5, (field, values[i], values[j])


def test_prepare_refuses_a_world_drawn_otherwise(tmp_path):
  from tripletclip_jax import demo

  root = str(tmp_path / "w")
  first = demo.prepare(root, num_train=20, num_eval=2, seed=3, log=lambda *_: None)
  again = demo.prepare(root, num_train=20, num_eval=2, seed=3, log=lambda *_: None)  # reused
  assert again == first and json.load(open(f"{root}/world.json"))["world"]["seed"] == 3
  with pytest.raises(ValueError, match=r"drawn with other settings \(seed 3 -> 4\)"):
    demo.prepare(root, num_train=20, num_eval=2, seed=4)
  with pytest.raises(ValueError, match="zipf 0.0 -> 0.5"):
    demo.prepare(root, num_train=20, num_eval=2, world={"zipf": 0.5}, seed=3)


def test_benchmark_replacements_name_an_absent_value_and_the_oracle_scores_them():
  # SugarCrepe's rule: a replace item's new colour / shape is in no object of the scene, so a
  # bag-of-words scorer passes it (it measures recognising the value); swaps use the same words, so
  # the oracle is at chance there. Training replacements keep a value present in the scene.
  rng = np.random.default_rng(3)
  for kind, att in (("replace_att", 0), ("replace_obj", 1)):
    for heldout in (False, True):
      for _ in range(40):
        t = dw.make_triplet(CFG, rng, kind, heldout=heldout)
        (new,) = [b[att] for a, b in zip(t["cap"].objs, t["neg_cap"].objs) if a != b]
        assert new not in {(o.color, o.shape)[att] for o in t["scene"]}
        assert ds.oracle_choice(t["scene"], t["cap"], t["neg_cap"]) == 1.0
        other = "shape" if att == 0 else "color"
        assert ds.oracle_choice(t["scene"], t["cap"], t["neg_cap"], other) == 0.5
  for kind in ("swap_att", "swap_obj"):
    for _ in range(40):
      t = dw.make_triplet(CFG, rng, kind, heldout=True)
      assert all(ds.oracle_choice(t["scene"], t["cap"], t["neg_cap"], o) == 0.5 for o in ds.ORACLES)
  # By hand: the oracle reads words, not bindings, and counts a tie as half.
  scene = [_obj("red", "circle", 0, 0), _obj("blue", "square", 0, 2)]
  y = _cap(("red", "circle", None), ("blue", "square", None))
  assert ds.oracle_choice(scene, y, _cap(("blue", "circle", None), ("red", "square", None))) == 0.5
  assert ds.oracle_choice(scene, y, _cap(("green", "circle", None), ("blue", "square", None))) == 1
  assert ds.oracle_choice(scene, _cap(("green", "star", None), ("blue", "square", None)), y) == 0
  # A bag counts: "a blue circle and a blue square" names two blue objects where the scene has one
  # (v3's replacements, which reused a value of the scene, were passed this way).
  assert ds.oracle_choice(scene, y, _cap(("blue", "circle", None), ("blue", "square", None))) == 1


def test_world_json_records_the_oracles_and_the_attribute_pressure(tmp_path):
  out = dw.write_demo_data(str(tmp_path), num_train=200, num_eval=40, seed=2, num_base=300)
  world = json.load(open(tmp_path / "world.json"))
  assert world["oracle"] == out["oracle"] and world["base"] == 300
  for split in ("heldout", "seen"):
    o = world["oracle"][split]
    assert set(o) == set(dw.SUBSETS) and all(set(v) == set(ds.ORACLES) for v in o.values())
    assert o["swap_att"] == o["swap_obj"] == {"bow": 50.0, "color": 50.0, "shape": 50.0}
    assert o["replace_att"]["bow"] == o["replace_att"]["color"] == 100.0
    assert o["replace_obj"]["bow"] == o["replace_obj"]["shape"] == 100.0
  # The base set: one object of a seen pairing, named by colour and shape alone; a random batch of
  # 64 holds several captions per image that only the shape word rejects (and as many for colour).
  seen = set(CFG.pairings(heldout_ok=False)[0])
  for p in records.resolve_shards(str(tmp_path / "base")):
    for ex in map(records.decode_example, records.iter_records(p)):
      words = ex["caption"].decode().split()
      color, shape = words[-2:]
      assert (color, shape) in seen and not set(words) & set(CFG.textures + ds.SIZES)
  pressure = world["rejected_only_by_per_image"]
  assert pressure["base"]["shape"] > 4 and pressure["base"]["color"] > 4
  assert pressure["train"]["shape"] < 1


def test_rejected_only_by_counts_captions_false_for_one_attribute_alone():
  rng = np.random.default_rng(0)
  scenes = [[_obj("red", "circle", 0, 0)]] * 4
  caps = [
    _cap(("red", "circle", None)),
    _cap(("red", "square", None)),  # only the shape is wrong
    _cap(("blue", "circle", None)),  # only the colour is wrong
    _cap(("blue", "square", None)),  # both: neither attribute alone rejects it
  ]
  by = lambda a: ds.rejected_only_by(a, scenes, caps, rng, batch_size=4, batches=1)  # noqa: E731
  # Every scene is a red circle: "red square" counts for the 3 images it is not the caption of, and
  # "blue circle" likewise; "blue square" for neither.
  assert by("shape") == by("color") == 3 / 4
