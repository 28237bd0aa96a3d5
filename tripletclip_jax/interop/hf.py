"""Hugging Face interop: transformers `CLIPModel` directories <-> our Flax parameters.

transformers 5 has no Flax models, so the conversion is ours: Dense kernels
are the transposed torch weights, the patch conv kernel is
W.transpose(2, 3, 1, 0), and the projections are transposed. Import needs no
torch for safetensors checkpoints; export needs none at all.
"""

import contextlib
import json
import os
import tempfile

import numpy as np

from tripletclip_jax import fileio
from tripletclip_jax.losses import TEMPERATURE
from tripletclip_jax.data.tokenizer import EOT_ID, SOT_ID, get_tokenizer
from tripletclip_jax.models import CLIPConfig, TextConfig, VisionConfig
from tripletclip_jax.models.config import OPENAI_MEAN, OPENAI_STD

_LN = {"weight": "scale", "bias": "bias"}
_BLOCK = {
  "self_attn.q_proj": "attn/q_proj",
  "self_attn.k_proj": "attn/k_proj",
  "self_attn.v_proj": "attn/v_proj",
  "self_attn.out_proj": "attn/out_proj",
  "mlp.fc1": "c_fc",
  "mlp.fc2": "c_proj",
}
_BLOCK_LN = {"layer_norm1": "ln_1", "layer_norm2": "ln_2"}


# ----------------------------------------------------------------------------- config


def config_from_hf_dict(d: dict) -> CLIPConfig:
  t, v = d["text_config"], d["vision_config"]
  acts = {t.get("hidden_act", "quick_gelu"), v.get("hidden_act", "quick_gelu")}
  if len(acts) != 1 or not acts <= {"quick_gelu", "gelu"}:
    raise ValueError(
      f"Unsupported activations {sorted(acts)}: both towers must use quick_gelu or gelu."
    )
  return CLIPConfig(
    embed_dim=d.get("projection_dim", 512),
    vision=VisionConfig(
      image_size=v["image_size"],
      patch_size=v["patch_size"],
      width=v["hidden_size"],
      layers=v["num_hidden_layers"],
      heads=v["num_attention_heads"],
      mlp_ratio=v["intermediate_size"] / v["hidden_size"],
    ),
    text=TextConfig(
      vocab_size=t["vocab_size"],
      context_length=t["max_position_embeddings"],
      width=t["hidden_size"],
      layers=t["num_hidden_layers"],
      heads=t["num_attention_heads"],
      mlp_ratio=t["intermediate_size"] / t["hidden_size"],
    ),
    act=acts.pop(),
  )


@contextlib.contextmanager
def local_dir(path: str):
  """`with local_dir(path) as d:` a local directory with the files of `path`: a local directory as
  is; a gs:// directory downloaded to a temporary folder that is removed when the block ends;
  otherwise a Hub id, downloaded (to the Hub's cache) when the machine is online."""
  if fileio.is_remote(path):
    if not fileio.isdir(path):
      raise FileNotFoundError(f"{path} is not a folder: pass a Hugging Face CLIP directory.")
    with tempfile.TemporaryDirectory(prefix="tripletclip-hf-") as tmp:
      yield fileio.local_copy(path, tmp)
    return
  if os.path.isdir(path):
    yield path
    return
  if os.path.exists(path):
    raise ValueError(
      f"{path} is a file: pass a Hugging Face CLIP directory (config.json + model.safetensors)."
    )
  from huggingface_hub import snapshot_download

  try:
    local = snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "*.txt"])
  except Exception as e:  # noqa: BLE001 - offline, unknown repo, ...: one clear line
    raise FileNotFoundError(
      f"{path!r} is neither a local directory nor a reachable Hub id ({type(e).__name__})."
    ) from e
  yield local


def config_from_hf(path: str) -> CLIPConfig:
  """CLIPConfig of a transformers CLIP directory (local, gs:// or a Hub id)."""
  with local_dir(path) as d:
    return _config_from_dir(d)


def _config_from_dir(path: str) -> CLIPConfig:
  file = os.path.join(path, "config.json")
  try:
    with open(file) as f:
      d = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(
      f"{file}: malformed JSON at line {e.lineno}, column {e.colno} ({e.msg})."
    ) from None
  if not isinstance(d, dict) or d.get("model_type") not in (None, "clip"):
    what = d.get("model_type") if isinstance(d, dict) else type(d).__name__
    raise ValueError(f"{file} has model_type={what!r}; only 'clip' is supported.")
  try:
    return config_from_hf_dict(d)
  except KeyError as e:
    raise ValueError(
      f"{file} lacks the key {e.args[0]!r} (under text_config / vision_config where it belongs): "
      "it is not a complete transformers CLIPConfig."
    ) from None


def config_to_hf(config: CLIPConfig, logit_scale: float):
  """transformers.CLIPConfig for `config`; `logit_scale` (the log temperature) is written as its
  initial value, so a model built from the config alone starts at the exported temperature."""
  import transformers

  vc, tc = config.vision, config.text
  return transformers.CLIPConfig(
    projection_dim=config.embed_dim,
    logit_scale_init_value=float(logit_scale),
    text_config=dict(
      vocab_size=tc.vocab_size,
      hidden_size=tc.width,
      intermediate_size=int(tc.width * tc.mlp_ratio),
      num_hidden_layers=tc.layers,
      num_attention_heads=tc.heads,
      max_position_embeddings=tc.context_length,
      hidden_act=config.act,
      projection_dim=config.embed_dim,
      bos_token_id=SOT_ID,
      eos_token_id=EOT_ID,
      pad_token_id=EOT_ID,
    ),
    vision_config=dict(
      hidden_size=vc.width,
      intermediate_size=int(vc.width * vc.mlp_ratio),
      num_hidden_layers=vc.layers,
      num_attention_heads=vc.heads,
      image_size=vc.image_size,
      patch_size=vc.patch_size,
      hidden_act=config.act,
      projection_dim=config.embed_dim,
    ),
  )


# ----------------------------------------------------------------------------- weights


def _pairs(config: CLIPConfig):
  """(hf key, our path, kind) for every tensor; kind says how the layout differs."""
  out = [
    ("vision_model.embeddings.patch_embedding.weight", "visual/conv1/kernel", "conv"),
    ("vision_model.embeddings.class_embedding", "visual/class_embedding", "same"),
    ("vision_model.embeddings.position_embedding.weight", "visual/positional_embedding", "same"),
    ("visual_projection.weight", "visual/proj", "t"),
    ("text_model.embeddings.token_embedding.weight", "text/token_embedding/embedding", "same"),
    ("text_model.embeddings.position_embedding.weight", "text/positional_embedding", "same"),
    ("text_projection.weight", "text/text_projection", "t"),
    ("logit_scale", "logit_scale", "scalar"),
  ]
  for hf_ln, ours in (
    ("vision_model.pre_layrnorm", "visual/ln_pre"),
    ("vision_model.post_layernorm", "visual/ln_post"),
    ("text_model.final_layer_norm", "text/ln_final"),
  ):
    out += [(f"{hf_ln}.{a}", f"{ours}/{b}", "same") for a, b in _LN.items()]
  for tower, ours, layers in (
    ("vision_model", "visual", config.vision.layers),
    ("text_model", "text", config.text.layers),
  ):
    for i in range(layers):
      hf_p, our_p = f"{tower}.encoder.layers.{i}", f"{ours}/transformer/resblocks_{i}"
      for a, b in _BLOCK.items():
        out += [
          (f"{hf_p}.{a}.weight", f"{our_p}/{b}/kernel", "t"),
          (f"{hf_p}.{a}.bias", f"{our_p}/{b}/bias", "same"),
        ]
      for a, b in _BLOCK_LN.items():
        out += [(f"{hf_p}.{a}.{x}", f"{our_p}/{b}/{y}", "same") for x, y in _LN.items()]
  return out


def _to_ours(x: np.ndarray, kind: str) -> np.ndarray:
  if kind == "conv":
    return x.transpose(2, 3, 1, 0)
  if kind == "t":
    return x.T
  if kind == "scalar":
    return x.reshape(())
  return x


def _to_hf(x: np.ndarray, kind: str) -> np.ndarray:
  if kind == "conv":
    return x.transpose(3, 2, 0, 1)
  if kind == "t":
    return x.T
  return x


def _expected_shapes(config: CLIPConfig) -> dict:
  import jax
  from tripletclip_jax.models import init_params

  shapes = jax.eval_shape(lambda r: init_params(config, r), jax.random.key(0))
  out = {
    "/".join(str(k.key) for k in path): tuple(x.shape)
    for path, x in jax.tree_util.tree_leaves_with_path(shapes)
  }
  return dict(out, logit_scale=())  # a CLIP checkpoint carries the temperature, which our loss owns


def params_from_hf_state(config: CLIPConfig, state: dict, source: str = "checkpoint") -> dict:
  """HF state dict (numpy) -> our nested params; a missing or misshapen tensor names its key."""
  expected = _expected_shapes(config)
  params: dict = {}
  for hf_key, path, kind in _pairs(config):
    if hf_key not in state:
      raise KeyError(
        f"{source} lacks tensor {hf_key!r} needed for {path}; is it a CLIPModel checkpoint?"
      )
    value = _to_ours(np.asarray(state[hf_key], np.float32), kind)
    if value.shape != expected[path]:
      raise ValueError(
        f"{source}: tensor {hf_key!r} has shape {tuple(state[hf_key].shape)}, which does not match "
        f"the config (expects {expected[path]} as {path})."
      )
    node = params
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return params


def params_to_hf_state(config: CLIPConfig, params) -> dict:
  out = {}
  for hf_key, path, kind in _pairs(config):
    node = params
    for p in path.split("/"):
      node = node[p]
    # keeps 0-d logit_scale 0-d
    out[hf_key] = np.array(_to_hf(np.asarray(node, np.float32), kind), order="C")
  return out


def load_hf(path: str):
  """(CLIPConfig, params) from a transformers CLIP directory (local, gs:// or a Hub id)."""
  with local_dir(path) as d:
    return _load_dir(d)


def _load_dir(path: str):
  config = _config_from_dir(path)
  st = os.path.join(path, "model.safetensors")
  if os.path.exists(st):
    from safetensors.numpy import load_file

    try:
      state = load_file(st)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for damaged files
      raise ValueError(
        f"{st} is not a readable safetensors file ({type(e).__name__}: {str(e)[:120]}): download or "
        "export it again."
      ) from None
  elif os.path.exists(os.path.join(path, "pytorch_model.bin")):
    import torch

    state = {
      k: v.float().numpy()
      for k, v in torch.load(
        os.path.join(path, "pytorch_model.bin"), map_location="cpu", weights_only=True
      ).items()
    }
  else:
    raise FileNotFoundError(f"{path} has no model.safetensors or pytorch_model.bin.")
  return config, params_from_hf_state(config, state, source=path)


# ----------------------------------------------------------------------------- export


def write_tokenizer(out_dir: str, context_length: int = 77) -> None:
  """vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json of our BPE."""
  tok = get_tokenizer()
  rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
  vocab = {rename.get(t, t): i for t, i in tok.encoder.items()}
  with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
    json.dump(vocab, f, ensure_ascii=False)
  with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
    f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in tok.merges) + "\n")
  special = {
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>",
  }
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
    json.dump(
      {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": context_length,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": False,
        **special,
      },
      f,
      indent=2,
    )
  with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
    json.dump(special, f, indent=2)


def write_preprocessor(out_dir: str, image_size: int) -> None:
  from transformers import CLIPImageProcessor
  from transformers.utils import logging as hf_logging

  hf_logging.set_verbosity_error()  # without torchvision it falls back to its PIL backend, and says so at length
  CLIPImageProcessor(
    size={"shortest_edge": image_size},
    crop_size={"height": image_size, "width": image_size},
    image_mean=OPENAI_MEAN.tolist(),
    image_std=OPENAI_STD.tolist(),
    resample=3,
    do_convert_rgb=True,
  ).save_pretrained(out_dir)


def _model_card(config: CLIPConfig, train_config: dict | None, eval_results: dict | None) -> str:
  lines = [
    "---",
    "library_name: transformers",
    "tags: [clip, tripletclip, tripletclip_jax]",
    "---",
    "",
    "# TripletCLIP checkpoint (tripletclip_jax)",
    "",
    "A CLIP model trained with [tripletclip_jax](https://pypi.org/project/tripletclip_jax/) and exported as a "
    "`transformers.CLIPModel`.",
    "",
    "```python",
    "from transformers import CLIPModel, CLIPProcessor",
    "model = CLIPModel.from_pretrained(PATH)",
    "processor = CLIPProcessor.from_pretrained(PATH)",
    "```",
    "",
    "## Model",
    "",
    "```json",
    json.dumps(config.to_dict(), indent=2),
    "```",
    "",
  ]
  if train_config:
    lines += [
      "## Training config",
      "",
      "```json",
      json.dumps(train_config, indent=2, default=str),
      "```",
      "",
    ]
  if eval_results:
    lines += ["## Latest evaluation (accuracy %)", "", "| metric | value |", "|---|---|"]
    lines += [
      f"| {k} | {v:.2f} |" for k, v in sorted(eval_results.items()) if isinstance(v, (int, float))
    ]
    lines.append("")
  return "\n".join(lines)


def export_hf(
  config: CLIPConfig,
  params,
  out_dir: str,
  train_config: dict | None = None,
  eval_results: dict | None = None,
) -> str:
  """Writes a directory that `CLIPModel.from_pretrained` and `CLIPProcessor.from_pretrained` load
  offline.

  A gs:// `out_dir` is written locally, then uploaded. Parameters without a temperature (a loss that
  owns none) are exported with CLIP's initial one.
  """
  if fileio.is_remote(out_dir):
    with tempfile.TemporaryDirectory() as tmp:
      export_hf(config, params, tmp, train_config, eval_results)
      fileio.upload(tmp, out_dir)
    return out_dir
  from safetensors.numpy import save_file

  os.makedirs(out_dir, exist_ok=True)
  # A loss without a temperature: transformers' CLIPModel needs one anyway.
  if "logit_scale" not in params:
    params = dict(params, logit_scale=np.float32(dict(TEMPERATURE)["logit_scale"]))
  config_to_hf(config, np.asarray(params["logit_scale"])).save_pretrained(out_dir)
  state = params_to_hf_state(config, params)
  save_file(
    dict(sorted(state.items())),
    os.path.join(out_dir, "model.safetensors"),
    metadata={"format": "pt"},
  )
  write_tokenizer(out_dir, config.text.context_length)
  write_preprocessor(out_dir, config.vision.image_size)
  with open(os.path.join(out_dir, "README.md"), "w") as f:
    f.write(_model_card(config, train_config, eval_results))
  return out_dir


def push_to_hub(out_dir: str, repo_id: str) -> str:
  """Uploads an exported directory with huggingface_hub (needs a token and network)."""
  from huggingface_hub import HfApi

  api = HfApi()
  api.create_repo(repo_id, exist_ok=True)
  api.upload_folder(repo_id=repo_id, folder_path=out_dir)
  return f"https://huggingface.co/{repo_id}"
