"""The demo world: deterministic, SugarCrepe-format, held-out combinations really held out."""

import filecmp
import json
import os
import subprocess
import sys

import numpy as np

from tripletclip_jax.data import demo_world, records


def _files(d):
  return sorted(os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs)


def test_byte_identical_for_a_seed(tmp_path):
  a, b, c = (str(tmp_path / n) for n in "abc")
  for d, seed in ((a, 3), (b, 3), (c, 4)):
    subprocess.run([sys.executable, "launch/make_demo_data.py", "--output_dir", d, "--num_train", "40",
                    "--num_eval", "5", "--seed", str(seed)], check=True, capture_output=True)
  assert _files(a) == _files(b)
  _, mismatch, errors = filecmp.cmpfiles(a, b, _files(a), shallow=False)
  assert not mismatch and not errors
  assert open(f"{a}/train/demo-00000-of-00004.tfrecord", "rb").read() != open(
      f"{c}/train/demo-00000-of-00004.tfrecord", "rb").read()


def test_sugarcrepe_format_and_heldout_combinations(tmp_path):
  cfg = demo_world.WorldConfig()
  demo_world.write_demo_data(str(tmp_path), num_train=200, num_eval=20, seed=0, cfg=cfg)
  held = {f"{c} {s}" for c, s in cfg.heldout()}
  for subset in demo_world.SUBSETS:
    entries = json.load(open(tmp_path / "sugarcrepe" / f"{subset}.json"))
    assert len(entries) == 20
    for e in entries.values():
      assert set(e) == {"filename", "caption", "negative_caption"}
      assert e["caption"] != e["negative_caption"]
      assert os.path.exists(tmp_path / "sugarcrepe" / "images" / e["filename"])
      assert any(h in e["caption"] for h in held)  # the benchmark is about unseen combinations
  train_caps = [records.decode_example(r) for p in records.resolve_shards(str(tmp_path / "train"))
                for r in records.iter_records(p)]
  assert len(train_caps) == 200
  for ex in train_caps:
    text = (ex["caption"] + b" " + ex["neg_caption"]).decode()
    assert not any(h in text for h in held), text
  kinds = {ex["neg_type"].decode() for ex in train_caps}
  assert kinds == set(demo_world.SUBSETS)


def test_negatives_change_the_meaning():
  cfg = demo_world.WorldConfig()
  rng = np.random.default_rng(0)
  for _ in range(300):
    t = demo_world.make_triplet(cfg, rng)
    assert t is not None and t["caption"] != t["neg_caption"]
    if t["neg_type"] in ("replace_att", "replace_obj", "swap_att", "add_att", "add_obj"):
      assert np.asarray(t["image"]).tobytes() != np.asarray(t["neg_image"]).tobytes()
