"""Analytic FLOP counts (2 FLOPs per multiply-add), as in the CLIP and ViT papers."""

from tripletclip_jax.models.config import CLIPConfig


def _transformer_macs(tokens: int, width: int, layers: int, mlp_ratio: float) -> float:
  dense = (4 + 2 * mlp_ratio) * tokens * width * width  # q, k, v, out + MLP in/out
  attention = 2 * tokens * tokens * width  # scores and weighted sum
  return layers * (dense + attention)


def forward_flops(config: CLIPConfig) -> dict:
  """Forward FLOPs for one image and one text: {'image', 'text', 'pair'}."""
  vc, tc, d = config.vision, config.text, config.embed_dim
  patches = (vc.image_size // vc.patch_size) ** 2
  image = (
    patches * 3 * vc.patch_size**2 * vc.width
    + _transformer_macs(vc.num_tokens, vc.width, vc.layers, vc.mlp_ratio)
    + vc.width * d
  )
  text = _transformer_macs(tc.context_length, tc.width, tc.layers, tc.mlp_ratio) + tc.width * d
  return {"image": 2 * image, "text": 2 * text, "pair": 2 * (image + text)}


def train_flops_per_example(config: CLIPConfig, loss) -> float:
  """Training FLOPs per positive pair: 3x forward (backward = 2x forward) of every encode.

  `loss` is a `losses.Loss`: its `encodes_per_example` says how many images and texts each positive
  pair costs ((2, 2) for TripletCLIP). The N x 2N similarity matrices are omitted: below 0.1% at
  batch 1024 for ViT-B/32.
  """
  f = forward_flops(config)
  n_img, n_txt = loss.encodes_per_example
  return 3 * (n_img * f["image"] + n_txt * f["text"])
