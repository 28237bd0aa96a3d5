"""Model configuration and presets (shapes identical to OpenAI's CLIP)."""

import dataclasses

import jax.numpy as jnp
import numpy as np

# OpenAI CLIP's pixel statistics (RGB in [0, 1]): what every preset's image tower expects. numpy,
# not jnp: a jnp constant at import time would start the XLA backend before
# jax.distributed.initialize.
OPENAI_MEAN = np.asarray([0.48145466, 0.4578275, 0.40821073], np.float32)
OPENAI_STD = np.asarray([0.26862954, 0.26130258, 0.27577711], np.float32)
# (x / 255 - mean) / std for uint8 x, as one multiply-add.
PIXEL_SCALE = (1 / (255.0 * OPENAI_STD)).astype(np.float32)
PIXEL_OFFSET = (-OPENAI_MEAN / OPENAI_STD).astype(np.float32)


# Keys older checkpoints' model configs hold that no longer define anything: the temperature's
# initial value moved to the loss (`losses.Loss.params`, `config.loss_init`).
LEGACY_KEYS = ("logit_scale_init",)


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  image_size: int = 224
  patch_size: int = 32
  width: int = 768
  layers: int = 12
  heads: int = 12
  mlp_ratio: float = 4.0

  @property
  def num_tokens(self) -> int:
    return (self.image_size // self.patch_size) ** 2 + 1


@dataclasses.dataclass(frozen=True)
class TextConfig:
  vocab_size: int = 49408
  context_length: int = 77
  width: int = 512
  layers: int = 12
  heads: int = 8
  mlp_ratio: float = 4.0


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  """Everything that defines the network, plus compute options.

  `act` is "quick_gelu" (OpenAI weights) or "gelu"; `dtype` is the compute
  dtype ("float32" or "bfloat16"); parameters are always float32.
  """

  embed_dim: int = 512
  vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
  text: TextConfig = dataclasses.field(default_factory=TextConfig)
  act: str = "quick_gelu"
  dtype: str = "float32"
  remat: bool = False
  attention_impl: str | None = None  # None lets JAX pick; "cudnn" / "xla" to force.

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def replace(self, **kw) -> "CLIPConfig":
    return dataclasses.replace(self, **kw)

  def with_layers(self, layers: int) -> "CLIPConfig":
    """This network with `layers` residual blocks in each tower (`config.model.layers`)."""
    return self.replace(
      vision=dataclasses.replace(self.vision, layers=layers),
      text=dataclasses.replace(self.text, layers=layers),
    )

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "CLIPConfig":
    d = {k: v for k, v in d.items() if k not in LEGACY_KEYS}
    vision = VisionConfig(**d.pop("vision", {}))
    text = TextConfig(**d.pop("text", {}))
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(
        f"Unknown model config keys {sorted(unknown)}; valid: "
        f"{[f.name for f in dataclasses.fields(cls)]}"
      )
    return cls(vision=vision, text=text, **d)


PRESETS = {
  # Trains in minutes on 2 CPU cores; used by the tests.
  "tiny": CLIPConfig(
    embed_dim=64,
    vision=VisionConfig(image_size=64, patch_size=8, width=128, layers=2, heads=4),
    text=TextConfig(context_length=32, width=128, layers=2, heads=4),
    act="gelu",
  ),
  # The demo world's model: 48 px images of a 3 x 3 grid, one 16 px patch per cell, and the
  # world's captions fit 24 tokens. About 3x cheaper per pair than "tiny" on a CPU.
  "demo": CLIPConfig(
    embed_dim=64,
    vision=VisionConfig(image_size=48, patch_size=16, width=128, layers=2, heads=4),
    text=TextConfig(context_length=24, width=128, layers=2, heads=4),
    act="gelu",
  ),
  "vit_b32": CLIPConfig(),
  "vit_b16": CLIPConfig(vision=VisionConfig(patch_size=16)),
  "vit_l14": CLIPConfig(
    embed_dim=768,
    vision=VisionConfig(patch_size=14, width=1024, layers=24, heads=16),
    text=TextConfig(width=768, layers=12, heads=12),
  ),
}


def get_preset(name: str, **overrides) -> CLIPConfig:
  """Returns preset `name` with top-level fields replaced by `overrides`."""
  if name not in PRESETS:
    raise ValueError(f"Unknown model preset {name!r}; choose one of {sorted(PRESETS)}.")
  return PRESETS[name].replace(**overrides)
