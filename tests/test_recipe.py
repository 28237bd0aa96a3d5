"""The release's recipe switches and the union baseline each change exactly what they say."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

from tiny_models import one_block
from tripletclip_jax import losses as loss_lib
from tripletclip_jax import sharding
from tripletclip_jax.data import image_ops, pipeline, records
from tripletclip_jax.demo import world as demo_world
from tripletclip_jax.data.tokenizer import tokenize
from tripletclip_jax.models import forward_flops, get_preset
from tripletclip_jax.train.config import optimizer_config
from tripletclip_jax.train import create_train_state, make_optimizer, make_train_step
from tripletclip_jax.configlib import load_config_file
from tripletclip_jax.train.config import base_config, resolve_total_steps
from tripletclip_jax.train.optim import MAX_LOG_LOGIT_SCALE, decay_mask

flags.FLAGS.mark_as_parsed()
CFG = one_block(get_preset("tiny"))  # the recipe, not the depth, is the subject
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("demo"))
  demo_world.write_demo_data(d, num_train=24, num_eval=2, seed=0, num_shards=2)
  return d


def _examples(demo_dir):
  return {
    records.decode_example(r)["key"].decode(): records.decode_example(r)
    for p in records.resolve_shards(f"{demo_dir}/train")
    for r in records.iter_records(p)
  }


def test_union_baseline_feeds_negative_pairs_as_positives(demo_dir):
  ds = pipeline.make_dataset(
    f"{demo_dir}/train",
    batch_size=48,
    image_size=32,
    context_length=32,
    train=False,
    union_negatives=True,
    fields=loss_lib.get("clip_union").batch_keys,
    process_index=0,
    process_count=1,
  )
  (b,) = list(ds)
  assert set(b) == {"image", "text", "key", "bad_counts"}  # clip_union encodes no negative columns
  ex = _examples(demo_dir)
  assert len(b["key"]) == 2 * len(ex)
  first, second = b["key"][:24], b["key"][24:]
  # every record twice: once real, once negative
  assert [k + b"#neg" for k in first] == list(second)
  for i, k in enumerate(second):
    e = ex[k.decode().removesuffix("#neg")]
    np.testing.assert_array_equal(b["text"][24 + i], tokenize([e["neg_caption"].decode()], 32)[0])
    np.testing.assert_array_equal(b["image"][24 + i], image_ops.eval_transform(e["neg_image"], 32))
    np.testing.assert_array_equal(b["text"][i], tokenize([e["caption"].decode()], 32)[0])
  # Shuffled for training, a record's two pairs land apart: no in-batch hard negative.
  ds = pipeline.make_dataset(
    f"{demo_dir}/train",
    batch_size=8,
    image_size=32,
    context_length=32,
    seed=3,
    union_negatives=True,
    fields=("image", "text"),
    process_index=0,
    process_count=1,
  )
  batches = [
    [k.removesuffix(b"#neg") for k in b["key"]] for _, b in zip(range(6), ds)
  ]  # one epoch: 48 pairs
  assert sorted(k for b in batches for k in b) == sorted(k.encode() for k in ex for _ in range(2))
  together = sum(len(b) - len(set(b)) for b in batches)  # records whose two pairs share a batch
  # about 7/47 of 24 by chance; the loss-level pairing of tripletclip would give 24
  assert together < 12


def test_clip_union_is_compute_matched_like_clip():
  c = base_config()
  c.total_steps, c.compute_matched = 400, True
  for loss, steps in (("tripletclip", 400), ("clip", 800), ("clip_union", 800), ("negclip", 533)):
    c.loss = loss
    assert resolve_total_steps(c, loss_lib.get(c.loss), CFG) == steps
  c.compute_rule, c.loss = "flops", "clip"
  f = forward_flops(CFG)
  assert resolve_total_steps(c, loss_lib.get(c.loss), CFG) == 800  # images and texts both double
  c.loss = "negclip"  # one image, two texts: FLOPs weigh the cheap text tower less than pairs do
  assert resolve_total_steps(c, loss_lib.get(c.loss), CFG) == round(
    400 * (2 * f["image"] + 2 * f["text"]) / (f["image"] + 2 * f["text"])
  )
  c.compute_rule = "bogus"
  with pytest.raises(ValueError, match="compute_rule"):
    resolve_total_steps(c, loss_lib.get(c.loss), CFG)


def test_decay_rules_choose_the_decayed_parameters():
  params = {"w": jnp.ones((3, 3)), "b": jnp.ones((3,)), "logit_scale": jnp.ones(())}
  assert decay_mask(params, "open_clip") == {"w": True, "b": False, "logit_scale": False}
  assert decay_mask(params, "all") == {"w": True, "b": True, "logit_scale": True}
  zeros = jax.tree.map(jnp.zeros_like, params)
  for rule, decayed in (("open_clip", {"w"}), ("all", {"w", "b", "logit_scale"})):
    tx, _ = make_optimizer(
      optimizer_config(learning_rate=0.1, warmup_steps=0, weight_decay=0.5, decay_rule=rule), 10
    )
    # zero gradients: only decay moves a parameter
    updates, _ = tx.update(zeros, tx.init(params), params)
    moved = {k for k, u in updates.items() if float(jnp.abs(u).max()) > 0}
    assert moved == decayed, rule
  with pytest.raises(ValueError, match="decay_rule"):
    make_optimizer(optimizer_config(learning_rate=0.1, warmup_steps=0, decay_rule="none"), 10)


def test_center_crop_augment_is_the_eval_transform(demo_dir):
  data = next(iter(_examples(demo_dir).values()))["image"]
  center = pipeline.Preprocess(48, 32, train=True, augment="center_crop", fields=("image",))
  rrc = pipeline.Preprocess(
    48, 32, train=True, augment="random_resized_crop", crop_scale=(0.3, 0.5), fields=("image",)
  )
  item = (
    "s",
    {"key": b"k", "image": data, "neg_image": data, "caption": b"a", "neg_caption": b"b"},
    None,
    "",
  )
  a = center(item, np.random.default_rng(0))["image"]
  b = center(item, np.random.default_rng(1))["image"]
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(a, image_ops.eval_transform(data, 48))
  assert not np.array_equal(
    rrc(item, np.random.default_rng(0))["image"], rrc(item, np.random.default_rng(1))["image"]
  )
  with pytest.raises(ValueError, match="augment"):
    pipeline.Preprocess(48, 32, train=True, augment="mixup")


@pytest.mark.parametrize("clamp", [True, False])
def test_logit_scale_clamp_to_zero_and_ln100(clamp):
  mesh = sharding.make_mesh(1, 1, jax.devices()[:1])
  tx, schedule = make_optimizer(
    optimizer_config(learning_rate=1e-6, warmup_steps=0, weight_decay=0.0), 10
  )
  rng = np.random.default_rng(0)
  n, s, L = 4, CFG.vision.image_size, CFG.text.context_length
  batch = {
    "image": rng.normal(size=(n, s, s, 3)).astype(np.float32),
    "text": tokenize(["a red circle", "a blue square", "a star", "two cats"], L),
  }
  for start, clamped in ((-1.0, 0.0), (5.0, MAX_LOG_LOGIT_SCALE)):
    state, sh = create_train_state(CFG, tx, mesh, jax.random.key(0), loss_lib.get("tripletclip"))
    state = state.replace(params=dict(state.params, logit_scale=jnp.asarray(start, jnp.float32)))
    step = make_train_step(
      CFG, tx, schedule, loss_lib.get("clip"), mesh, sh, clamp_logit_scale=clamp
    )
    state, _ = step(state, sharding.put_batch(batch, mesh))
    got = float(state.params["logit_scale"])
    if clamp:
      assert got == pytest.approx(clamped, abs=1e-6)
    else:
      assert got == pytest.approx(start, abs=1e-4)  # lr 1e-6: the update itself is negligible


def test_release_configs_state_their_switches():
  hq, cc3m = (
    load_config_file(os.path.join(ROOT, "configs", f"{name}.py"))
    for name in ("tripletclip_hq", "cc3m")
  )
  # 10 epochs of 1M rows at batch 1024
  assert resolve_total_steps(hq, loss_lib.get(hq.loss)) == 9766
  assert (hq.optimizer.decay_rule, hq.data.augment, hq.clamp_logit_scale) == (
    "all",
    "center_crop",
    False,
  )
  assert (cc3m.optimizer.decay_rule, cc3m.data.augment, cc3m.clamp_logit_scale) == (
    "all",
    "center_crop",
    True,
  )
  for c in (hq, cc3m):
    assert (c.batch_size, c.optimizer.learning_rate, c.optimizer.weight_decay) == (1024, 5e-4, 0.5)
    assert (c.optimizer.b1, c.optimizer.b2, c.optimizer.eps, c.optimizer.warmup_steps) == (
      0.9,
      0.999,
      1e-8,
      1000,
    )
