"""CLIP in Flax with the OpenAI architecture.

Module and parameter names follow OpenAI's CLIP so that OpenAI, open_clip and
Hugging Face weights map onto them one to one (see `interop/`).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from tripletclip_jax.models.config import PIXEL_OFFSET, PIXEL_SCALE, CLIPConfig


def quick_gelu(x):
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": functools.partial(jax.nn.gelu, approximate=False)}


class Attention(nn.Module):
  """Multi-head self-attention through `jax.nn.dot_product_attention`."""

  heads: int
  causal: bool
  dtype: jnp.dtype
  implementation: str | None = None

  @nn.compact
  def __call__(self, x):  # x: [B, T, W]
    b, t, w = x.shape
    hd = w // self.heads
    dense = functools.partial(nn.Dense, w, dtype=self.dtype)
    q, k, v = (
      dense(name=n)(x).reshape(b, t, self.heads, hd) for n in ("q_proj", "k_proj", "v_proj")
    )
    y = jax.nn.dot_product_attention(
      q, k, v, is_causal=self.causal, implementation=self.implementation
    )
    return dense(name="out_proj")(y.reshape(b, t, w))


class ResidualAttentionBlock(nn.Module):
  """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

  heads: int
  mlp_ratio: float
  causal: bool
  act: str
  dtype: jnp.dtype
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x):
    w = x.shape[-1]
    ln = functools.partial(nn.LayerNorm, epsilon=1e-5, dtype=self.dtype)
    x = x + Attention(self.heads, self.causal, self.dtype, self.attention_impl, name="attn")(
      ln(name="ln_1")(x)
    )
    h = nn.Dense(int(w * self.mlp_ratio), dtype=self.dtype, name="c_fc")(ln(name="ln_2")(x))
    h = nn.Dense(w, dtype=self.dtype, name="c_proj")(ACTIVATIONS[self.act](h))
    return x + h


class Transformer(nn.Module):
  layers: int
  heads: int
  mlp_ratio: float
  causal: bool
  act: str
  dtype: jnp.dtype
  remat: bool = False
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x):
    block_cls = nn.remat(ResidualAttentionBlock) if self.remat else ResidualAttentionBlock
    for i in range(self.layers):
      x = block_cls(
        self.heads,
        self.mlp_ratio,
        self.causal,
        self.act,
        self.dtype,
        self.attention_impl,
        name=f"resblocks_{i}",
      )(x)
    return x


class VisionTransformer(nn.Module):
  config: CLIPConfig

  @nn.compact
  def __call__(self, images):
    """images: [B, H, W, 3] normalised floats -> [B, embed_dim] (not normalised)."""
    cfg, vc = self.config, self.config.vision
    dt = cfg.compute_dtype
    p = vc.patch_size
    x = nn.Conv(
      vc.width, (p, p), strides=(p, p), padding="VALID", use_bias=False, dtype=dt, name="conv1"
    )(images.astype(dt))
    b = x.shape[0]
    x = x.reshape(b, -1, vc.width)
    scale = vc.width**-0.5
    cls = self.param("class_embedding", nn.initializers.normal(scale), (vc.width,))
    pos = self.param(
      "positional_embedding", nn.initializers.normal(scale), (vc.num_tokens, vc.width)
    )
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(dt), (b, 1, vc.width)), x], axis=1)
    x = x + pos.astype(dt)
    x = nn.LayerNorm(epsilon=1e-5, dtype=dt, name="ln_pre")(x)
    x = Transformer(
      vc.layers,
      vc.heads,
      vc.mlp_ratio,
      False,
      cfg.act,
      dt,
      cfg.remat,
      cfg.attention_impl,
      name="transformer",
    )(x)
    x = nn.LayerNorm(epsilon=1e-5, dtype=dt, name="ln_post")(x[:, 0])
    proj = self.param("proj", nn.initializers.normal(scale), (vc.width, cfg.embed_dim))
    return x @ proj.astype(dt)


class TextTransformer(nn.Module):
  config: CLIPConfig

  @nn.compact
  def __call__(self, text):
    """text: [B, L] int token ids (eot is the largest id) -> [B, embed_dim]."""
    cfg, tc = self.config, self.config.text
    dt = cfg.compute_dtype
    x = nn.Embed(
      tc.vocab_size, tc.width, embedding_init=nn.initializers.normal(0.02), name="token_embedding"
    )(text).astype(dt)
    pos = self.param(
      "positional_embedding", nn.initializers.normal(0.01), (tc.context_length, tc.width)
    )
    x = x + pos[: text.shape[1]].astype(dt)
    x = Transformer(
      tc.layers,
      tc.heads,
      tc.mlp_ratio,
      True,
      cfg.act,
      dt,
      cfg.remat,
      cfg.attention_impl,
      name="transformer",
    )(x)
    x = nn.LayerNorm(epsilon=1e-5, dtype=dt, name="ln_final")(x)
    # Pool at the first end-of-text token: it has the largest id in the vocabulary.
    x = x[jnp.arange(x.shape[0]), jnp.argmax(text, axis=-1)]
    proj = self.param(
      "text_projection", nn.initializers.normal(tc.width**-0.5), (tc.width, cfg.embed_dim)
    )
    return x @ proj.astype(dt)


def l2_normalize(x, eps=1e-12):
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # float32, or float64 for a reference
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


class CLIP(nn.Module):
  """The two towers. The learned temperature is not theirs: the loss owns it (`losses.Loss.params`).

  `__call__(images, text)` returns L2-normalised float32 embeddings ([B, D], [B', D]).
  """

  config: CLIPConfig

  def setup(self):
    self.visual = VisionTransformer(self.config)
    self.text = TextTransformer(self.config)

  def encode_image(self, images):
    """images: normalised float [N, S, S, 3], or uint8 RGB [N, S, S, 3], normalised here on the
    device (a quarter of the host-to-device bytes). Returns L2-normalised [N, D]."""
    if images.dtype == jnp.uint8:
      images = images.astype(jnp.float32) * PIXEL_SCALE + PIXEL_OFFSET
    return l2_normalize(self.visual(images))

  def encode_text(self, text):
    return l2_normalize(self.text(text))

  def __call__(self, images, text):
    return self.encode_image(images), self.encode_text(text)


def init_params(config: CLIPConfig, rng, batch_size: int = 1):
  """Random parameters of the two towers for `config` (float32 pytree; no temperature, see
  `CLIP`)."""
  vc, tc = config.vision, config.text
  images = jnp.zeros((batch_size, vc.image_size, vc.image_size, 3), jnp.float32)
  text = jnp.zeros((batch_size, tc.context_length), jnp.int32)
  return CLIP(config).init(rng, images, text)["params"]
