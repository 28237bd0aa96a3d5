"""CLIP towers, presets and FLOP counts."""

from tripletclip_jax.models.clip import CLIP, init_params, l2_normalize
from tripletclip_jax.models.config import CLIPConfig, PRESETS, TextConfig, VisionConfig, get_preset
from tripletclip_jax.models.flops import forward_flops, train_flops_per_example

__all__ = [
  "CLIP",
  "CLIPConfig",
  "PRESETS",
  "TextConfig",
  "VisionConfig",
  "forward_flops",
  "get_preset",
  "init_params",
  "l2_normalize",
  "train_flops_per_example",
]
