"""open_clip checkpoints: our CLIP as an open_clip state dict (OpenAI's layout) plus its model
config, and back.

    python launch/export_hf.py --workdir WORKDIR --output_dir runs/oc --format open_clip

    import open_clip
    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:runs/oc")
    # or by name: open_clip.add_model_config("runs/oc/tripletclip.json"), then
    # open_clip.create_model_and_transforms("tripletclip",
    #                                       pretrained="runs/oc/open_clip_model.safetensors")

    clip_benchmark eval --model local-dir:runs/oc --pretrained none --dataset sugar_crepe/swap_att

The weights are written with safetensors (no torch needed to export); open_clip reads them as they
are. The model config names what the weights cannot say: head counts, the activation, the MLP
ratios.
"""

import json
import os

import numpy as np

from tripletclip_jax.interop import hf
from tripletclip_jax.models import CLIPConfig, TextConfig, VisionConfig
from tripletclip_jax.models.config import OPENAI_MEAN, OPENAI_STD

WEIGHTS = "open_clip_model.safetensors"
LOCAL_DIR_CONFIG = "open_clip_config.json"  # what open_clip's "local-dir:" loader reads


def _keys(v_layers: int, t_layers: int):
  """(OpenAI / open_clip key, [Hugging Face keys], kind): kind 'same', 't' (transposed) or 'qkv'
  (the fused in_proj, split in three along dim 0 in Hugging Face's layout). One table for both
  directions."""
  out = [
    ("visual.conv1.weight", ["vision_model.embeddings.patch_embedding.weight"], "same"),
    ("visual.class_embedding", ["vision_model.embeddings.class_embedding"], "same"),
    ("visual.positional_embedding", ["vision_model.embeddings.position_embedding.weight"], "same"),
    ("visual.proj", ["visual_projection.weight"], "t"),
    ("text_projection", ["text_projection.weight"], "t"),
    ("token_embedding.weight", ["text_model.embeddings.token_embedding.weight"], "same"),
    ("positional_embedding", ["text_model.embeddings.position_embedding.weight"], "same"),
    ("logit_scale", ["logit_scale"], "same"),
  ]
  for ours, theirs in (
    ("visual.ln_pre", "vision_model.pre_layrnorm"),
    ("visual.ln_post", "vision_model.post_layernorm"),
    ("ln_final", "text_model.final_layer_norm"),
  ):
    out += [(f"{ours}.{p}", [f"{theirs}.{p}"], "same") for p in ("weight", "bias")]
  for src, dst, n in (
    ("visual.transformer", "vision_model.encoder", v_layers),
    ("transformer", "text_model.encoder", t_layers),
  ):
    for i in range(n):
      s, d = f"{src}.resblocks.{i}", f"{dst}.layers.{i}"
      for p in ("weight", "bias"):
        qkv = [f"{d}.self_attn.{x}_proj.{p}" for x in "qkv"]
        out.append((f"{s}.attn.in_proj_{p}", qkv, "qkv"))
        for a, b in (
          ("attn.out_proj", "self_attn.out_proj"),
          ("mlp.c_fc", "mlp.fc1"),
          ("mlp.c_proj", "mlp.fc2"),
          ("ln_1", "layer_norm1"),
          ("ln_2", "layer_norm2"),
        ):
          out.append((f"{s}.{a}.{p}", [f"{d}.{b}.{p}"], "same"))
  return out


def state_dict(config: CLIPConfig, params) -> dict:
  """{open_clip key: float32 numpy} of `params` (a whole CLIP: the towers and `logit_scale`)."""
  state = hf.params_to_hf_state(config, params)
  out = {}
  for key, theirs, kind in _keys(config.vision.layers, config.text.layers):
    parts = [state[k] for k in theirs]
    value = np.concatenate(parts, 0) if kind == "qkv" else parts[0].T if kind == "t" else parts[0]
    out[key] = np.ascontiguousarray(value, np.float32)
  return out


def model_config(config: CLIPConfig) -> dict:
  """open_clip's model config (the `open_clip/model_configs/*.json` format) for `config`."""
  vc, tc = config.vision, config.text
  out = {
    "embed_dim": config.embed_dim,
    "vision_cfg": {
      "image_size": vc.image_size,
      "layers": vc.layers,
      "width": vc.width,
      "head_width": vc.width // vc.heads,
      "patch_size": vc.patch_size,
      "mlp_ratio": vc.mlp_ratio,
    },
    "text_cfg": {
      "context_length": tc.context_length,
      "vocab_size": tc.vocab_size,
      "width": tc.width,
      "heads": tc.heads,
      "layers": tc.layers,
      "mlp_ratio": tc.mlp_ratio,
    },
  }
  if config.act == "quick_gelu":
    out["quick_gelu"] = True  # open_clip's default is exact GELU, as our "gelu"
  return out


def export(config: CLIPConfig, params, out_dir: str, name: str = "tripletclip") -> tuple[str, str]:
  """Writes `out_dir/NAME.json` (the model config), `out_dir/open_clip_config.json` (the same with
  the preprocessing, for open_clip's `local-dir:` loader) and `out_dir/open_clip_model.safetensors`;
  returns the model config's and the weights' paths. A gs:// `out_dir` is written locally, then
  uploaded."""
  from safetensors.numpy import save_file

  from tripletclip_jax import fileio

  if fileio.is_remote(out_dir):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
      export(config, params, tmp, name)
      fileio.upload(tmp, out_dir)
    return fileio.join(out_dir, f"{name}.json"), fileio.join(out_dir, WEIGHTS)
  os.makedirs(out_dir, exist_ok=True)
  cfg_path, weights = os.path.join(out_dir, f"{name}.json"), os.path.join(out_dir, WEIGHTS)
  with open(cfg_path, "w") as f:
    json.dump(model_config(config), f, indent=2)
  preprocess = {
    "size": config.vision.image_size,
    "mean": OPENAI_MEAN.tolist(),
    "std": OPENAI_STD.tolist(),
    "interpolation": "bicubic",
    "resize_mode": "shortest",  # shortest side to the size, then a centre crop: our eval transform
  }
  with open(os.path.join(out_dir, LOCAL_DIR_CONFIG), "w") as f:
    json.dump({"model_cfg": model_config(config), "preprocess_cfg": preprocess}, f, indent=2)
  save_file(dict(sorted(state_dict(config, params).items())), weights)
  return cfg_path, weights


def config_from_open_clip(d: dict) -> CLIPConfig:
  """CLIPConfig from open_clip's model config dict (what `model_config` writes, or a stock one)."""
  v, t = d["vision_cfg"], d["text_cfg"]
  width, t_width = v["width"], t["width"]
  return CLIPConfig(
    embed_dim=d["embed_dim"],
    vision=VisionConfig(
      image_size=v["image_size"],
      patch_size=v["patch_size"],
      width=width,
      layers=v["layers"],
      heads=width // v.get("head_width", 64),
      mlp_ratio=v.get("mlp_ratio", 4.0),
    ),
    text=TextConfig(
      vocab_size=t.get("vocab_size", 49408),
      context_length=t.get("context_length", 77),
      width=t_width,
      layers=t["layers"],
      heads=t.get("heads", 8),
      mlp_ratio=t.get("mlp_ratio", 4.0),
    ),
    act="quick_gelu" if d.get("quick_gelu") else "gelu",
  )


def from_state_dict(state: dict, config: CLIPConfig | None = None, act: str = "quick_gelu"):
  """(CLIPConfig, params) from an OpenAI / open_clip state dict (numpy or torch tensors).

  Without `config`, sizes come from the shapes and head counts are guessed as width / 64 (they are
  not in the weights): pass the model config (`config_from_open_clip`) when there is one.
  """
  sd = {
    k: np.asarray(v.float().numpy() if hasattr(v, "float") else v, np.float32)
    for k, v in state.items()
  }
  if config is None:
    config = _config_from_shapes(sd, act)
  hf_state = {}
  for key, theirs, kind in _keys(config.vision.layers, config.text.layers):
    value = sd[key]
    parts = np.split(value, 3, axis=0) if kind == "qkv" else [value.T if kind == "t" else value]
    hf_state.update(zip(theirs, parts))
  return config, hf.params_from_hf_state(config, hf_state, source="open_clip state dict")


def _config_from_shapes(sd: dict, act: str) -> CLIPConfig:
  def layers(prefix):
    return len({k[len(prefix) :].split(".")[0] for k in sd if k.startswith(prefix)})

  vw, t_width = sd["visual.conv1.weight"], sd["token_embedding.weight"].shape[1]
  width, patch = vw.shape[0], vw.shape[-1]
  grid = int(round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5))
  return CLIPConfig(
    embed_dim=sd["visual.proj"].shape[1],
    vision=VisionConfig(
      image_size=grid * patch,
      patch_size=patch,
      width=width,
      layers=layers("visual.transformer.resblocks."),
      heads=max(width // 64, 1),
      mlp_ratio=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width,
    ),
    text=TextConfig(
      vocab_size=sd["token_embedding.weight"].shape[0],
      context_length=sd["positional_embedding"].shape[0],
      width=t_width,
      layers=layers("transformer.resblocks."),
      heads=max(t_width // 64, 1),
      mlp_ratio=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / t_width,
    ),
    act=act,
  )


def load(config_json: str, weights: str):
  """(CLIPConfig, params) of an open_clip export: its model config JSON and its weights
  (.safetensors, or a torch .bin / .pt state dict)."""
  with open(config_json) as f:
    config = config_from_open_clip(json.load(f))
  if weights.endswith(".safetensors"):
    from safetensors.numpy import load_file

    state = load_file(weights)
  else:
    import torch

    state = torch.load(weights, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
  return from_state_dict(state, config)
