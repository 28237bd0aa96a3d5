"""docs/extending.md, section by section: each extension is one module (here, code in this file)
plus one registry line (here, added with monkeypatch), and nothing else changes."""

import base64
import os
import sys

import jax
import numpy as np
import pytest

from tripletclip_jax import evaluate, losses, sharding
from tripletclip_jax.data import formats, pipeline, records
from tripletclip_jax.data.sources import SourceItem, decoded
from tripletclip_jax.inference import Model
from tripletclip_jax.models import PRESETS, CLIPConfig, TextConfig, VisionConfig, forward_flops
from tripletclip_jax.train.experiment import build
from tripletclip_jax.train.loop import train_and_evaluate
from tripletclip_jax.train.metrics import read_metrics

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_trainer import data_dir, small_config  # noqa: E402, F401 - the shared demo world


# ---- A loss: the module, and its registry line.
def margin(e, p, rows):
  import jax.numpy as jnp

  pos = jnp.sum(e["img"] * e["txt"], axis=1)
  neg = jnp.sum(e["img"] * e["neg_txt"], axis=1)
  n = rows.global_size  # this device's share: sums over its rows, divided by the global batch size
  loss = jnp.sum(jnp.maximum(0.0, 0.2 - pos + neg)) / n
  return loss, {"i2t_acc": jnp.sum(pos > neg) / n, "t2i_acc": jnp.sum(pos > neg) / n}


def test_a_loss(monkeypatch, data_dir, tmp_path):
  monkeypatch.setitem(
    losses.REGISTRY, "margin", losses.Loss("margin", margin, neg_texts=True, params=())
  )
  # The shares of 8 devices sum to the one-device value.
  e = {k: np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32) for k in ("img", "txt")}
  e["neg_txt"] = e["txt"][::-1].copy()
  one = losses.get("margin")(e, {})
  split = losses.get("margin")(e, {}, sharding.make_mesh(-1, 1))
  for a, b in zip(jax.tree.leaves(split), jax.tree.leaves(one)):
    assert float(a) == pytest.approx(float(b), rel=1e-6)
  config = small_config(data_dir, loss="margin", total_steps=2, compute_matched=True)
  exp = build(config)
  assert (
    exp.loss.batch_keys == ("image", "text", "neg_text") and "logit_scale" not in exp.state.params
  )
  assert exp.total_steps == round(2 * 2 / 1.5)  # matched to TripletCLIP's image-text pairs
  with config.unlocked():
    config.export_hf_dir = "hf"
  out = train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:2])
  assert out["step"] == 3 and "logit_scale" not in out and "eval/sugarcrepe_heldout/mean" in out
  assert np.isfinite(read_metrics(str(tmp_path))[3]["loss"])
  assert os.path.exists(tmp_path / "hf" / "model.safetensors")


# ---- An evaluator: the module, and its registry line.
def mybench(model, data_dir: str, batch_size: int = 8) -> dict:
  captions = open(os.path.join(data_dir, "captions.txt")).read().split("\n")
  t = model.encode_texts(captions)
  return {"self_similarity": 100.0 * float(np.mean(np.sum(t * t, axis=1))), "n": len(captions)}


def test_an_evaluator(monkeypatch, tmp_path):
  monkeypatch.setitem(evaluate.REGISTRY, "mybench", mybench)
  (tmp_path / "captions.txt").write_text("a red circle\na blue square")
  evs = evaluate.build({"mybench": dict(type="mybench", data_dir=str(tmp_path), every_steps=2000)})
  cfg = PRESETS["demo"]
  from tiny_models import clip_params

  out = evaluate.run(Model(cfg, clip_params(cfg)), evs)
  assert out == {"eval/mybench/self_similarity": pytest.approx(100.0), "eval/mybench/n": 2}
  assert evaluate.option_types("mybench") == {"data_dir": (str, None), "batch_size": (int, 8)}


# ---- A model preset: one entry.
def test_a_preset(monkeypatch, data_dir):
  monkeypatch.setitem(
    PRESETS,
    "mini",
    CLIPConfig(
      embed_dim=32,
      vision=VisionConfig(image_size=48, patch_size=16, width=64, layers=1, heads=2),
      text=TextConfig(context_length=24, width=64, layers=1, heads=2),
    ),
  )
  exp = build(
    small_config(data_dir, **{"model.preset": "mini"}), devices=jax.devices()[:2], abstract=True
  )
  assert (
    exp.model_config.vision.width == 64
    and exp.flops_per_example == 3 * 2 * forward_flops(exp.model_config)["pair"]
  )
  from tripletclip_jax.interop import hf

  assert (
    hf.config_from_hf_dict(hf.config_to_hf(exp.model_config, 2.0).to_dict()) == exp.model_config
  )


# ---- A parameter group: no code, config keys only.
def test_a_parameter_group(data_dir, tmp_path):
  """A text tower at half the rate moves exactly half as far in the first step; the image tower as
  before."""
  from tripletclip_jax import sharding

  def first_delta(name, **over):
    exp = build(
      small_config(data_dir, **{"optimizer.warmup_steps": 0, **over}),
      str(tmp_path / name),
      devices=jax.devices()[:2],
    )
    batch = {k: v for k, v in next(exp.train_data).items() if k not in ("key", "bad_counts")}
    before = jax.device_get(exp.state.params)
    state, _ = exp.train_step(exp.state, sharding.put_batch(batch, exp.mesh))
    return exp, jax.tree.map(lambda a, b: np.asarray(a) - b, jax.device_get(state.params), before)

  exp, half = first_delta("half", **{"optimizer.lr_multipliers": ((r"text/.*", 0.5),)})
  _, full = first_delta("full")
  n_text = sum(x.size for x in jax.tree.leaves(exp.state.params["text"]))
  assert exp.param_groups[1] == f"lr0 'text/.*': {n_text:,} parameters at 0.5 x the rate"
  for a, b in zip(jax.tree.leaves(half["text"]), jax.tree.leaves(full["text"])):
    np.testing.assert_allclose(a, 0.5 * b, rtol=2e-3, atol=1e-8)  # the sharded reductions' rounding
  for a, b in zip(jax.tree.leaves(half["visual"]), jax.tree.leaves(full["visual"])):
    np.testing.assert_array_equal(a, b)


# ---- A data format: the module (a source class), and its registry line.
class B64LinesSource:
  """Each line of a `.b64lines` file is one base64 tf.train.Example."""

  def __init__(self, paths):
    self.rows = [
      (os.path.basename(p), i, line) for p in paths for i, line in enumerate(open(p).read().split())
    ]

  def __len__(self):
    return len(self.rows)

  def __getitem__(self, i) -> SourceItem:
    shard, index, line = self.rows[int(i)]
    return decoded(shard, index, base64.b64decode(line))


def test_a_data_format(monkeypatch, data_dir, tmp_path):
  monkeypatch.setattr(
    formats, "FORMATS", formats.FORMATS + (formats.Format("b64lines", ".b64lines", B64LinesSource),)
  )
  for path in records.resolve_shards(os.path.join(data_dir, "train")):
    name = os.path.basename(path).replace(".tfrecord", ".b64lines")
    (tmp_path / name).write_text(
      "\n".join(base64.b64encode(p).decode() for p in records.iter_records(path))
    )
  kw = dict(batch_size=8, image_size=48, context_length=24, seed=3, num_workers=0)
  ours = pipeline.make_dataset(str(tmp_path), **kw)
  ref = pipeline.make_dataset(os.path.join(data_dir, "train"), **kw)
  for a, b in zip(ours, ref):
    for k in ("image", "neg_image", "text", "neg_text", "key"):
      np.testing.assert_array_equal(a[k], b[k])
    break
