"""Model presets, FLOP counts and tower behaviour."""

import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tripletclip_jax import losses
from tripletclip_jax.models import (
  CLIP,
  forward_flops,
  get_preset,
  init_params,
  train_flops_per_example,
)


def _count(cfg):
  shapes = jax.eval_shape(lambda r: init_params(cfg, r), jax.random.key(0))
  return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes)), shapes


def test_vit_b32_parameter_count_matches_openai():
  n, shapes = _count(get_preset("vit_b32"))
  assert n + 1 == 151_277_313  # OpenAI's count includes the temperature, which the loss owns here
  tower = lambda k: sum(math.prod(x.shape) for x in jax.tree.leaves(shapes[k]))
  assert tower("visual") == 87_849_216
  assert tower("text") == 63_428_096


def test_vit_b32_flops_within_2_percent():
  f = forward_flops(get_preset("vit_b32"))
  assert abs(f["pair"] / 14.78e9 - 1) < 0.02
  assert abs(f["image"] / 8.82e9 - 1) < 0.02
  assert abs(f["text"] / 5.96e9 - 1) < 0.02
  # TripletCLIP: two pairs, forward + backward = 3x forward -> about 88.7 GFLOPs.
  assert (
    abs(train_flops_per_example(get_preset("vit_b32"), losses.get("tripletclip")) / 88.7e9 - 1)
    < 0.02
  )
  assert train_flops_per_example(get_preset("vit_b32"), losses.get("clip")) == pytest.approx(
    3 * f["pair"]
  )


def test_benchmark_info_prints_params_and_flops():
  out = subprocess.run(
    [sys.executable, "benchmarks/train_step.py", "--preset", "vit_b32", "--info"],
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  last = dict(kv.split("=") for kv in out.strip().splitlines()[-1].split())
  assert int(last["params"]) == 151_277_313
  assert abs(float(last["fwd_gflops_per_pair"]) - 14.78) / 14.78 < 0.02


def _inputs(cfg, n=3, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(n, cfg.vision.image_size, cfg.vision.image_size, 3)).astype(np.float32)
  text = rng.integers(1, 1000, size=(n, cfg.text.context_length)).astype(np.int32)
  text[:, 5] = 49407  # eot
  text[:, 6:] = 0
  return images, text


@pytest.mark.parametrize("act", ["gelu", "quick_gelu"])
def test_tiny_forward_is_normalised(act):
  cfg = get_preset("tiny", act=act)
  params = init_params(cfg, jax.random.key(0))
  img, txt = CLIP(cfg).apply({"params": params}, *_inputs(cfg))
  assert img.shape == (3, cfg.embed_dim) and txt.shape == (3, cfg.embed_dim)
  np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1, rtol=1e-5)


def test_text_pools_at_first_eot_and_is_causal():
  cfg = get_preset("tiny")
  params = init_params(cfg, jax.random.key(1))
  _, text = _inputs(cfg, n=1)
  model = CLIP(cfg)
  base = model.apply({"params": params}, text, method=CLIP.encode_text)
  changed = text.copy()
  changed[0, 10] = 123  # after eot: the causal mask hides it from the pooled token
  np.testing.assert_allclose(
    model.apply({"params": params}, changed, method=CLIP.encode_text), base, atol=1e-6
  )
  changed = text.copy()
  changed[0, 2] = 777  # before eot: must matter
  assert not np.allclose(
    model.apply({"params": params}, changed, method=CLIP.encode_text), base, atol=1e-4
  )


def test_bf16_and_remat_agree_with_fp32():
  cfg = get_preset("tiny")
  params = init_params(cfg, jax.random.key(2))
  images, text = _inputs(cfg)
  ref = CLIP(cfg).apply({"params": params}, images, text)
  remat = CLIP(cfg.replace(remat=True)).apply({"params": params}, images, text)
  bf16 = CLIP(cfg.replace(dtype="bfloat16")).apply({"params": params}, images, text)
  for a, b in zip(ref[:2], remat[:2]):
    np.testing.assert_allclose(a, b, atol=1e-5)
  for a, b in zip(ref[:2], bf16[:2]):
    assert a.dtype == jnp.float32 and b.dtype == jnp.float32
    np.testing.assert_allclose(a, b, atol=5e-2)
  # Parameters stay float32 whatever the compute dtype.
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))


def test_unknown_preset_is_clear():
  with pytest.raises(ValueError, match="Unknown model preset 'vit_z99'"):
    get_preset("vit_z99")
