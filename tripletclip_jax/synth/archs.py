"""The negatives tool's real models by their published architectures, with random weights: what
their throughput is measured on without a download (throughput depends on the shapes, not on the
weights).

  llm("mistral-7b", device, dtype, shrink=1)   -> a transformers causal LM
  t2i("sdxl-turbo", device, dtype, shrink=1)   -> a diffusers StableDiffusionXLPipeline

The configs are the published ones (the `config.json` files of mistralai/Mistral-7B-Instruct-v0.2,
microsoft/Phi-3-mini-4k-instruct and stabilityai/sdxl-turbo), written here because this project
downloads nothing. `shrink=k` divides every width and depth by k (heads and groups kept valid), so
the same code path runs on a CPU in seconds; shrink=1 is the real size.
"""

LLMS = {
  "mistral-7b": dict(
    model_type="mistral",
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=32000,
    max_position_embeddings=32768,
    rope_theta=1e6,
    rms_norm_eps=1e-5,
    sliding_window=None,
    hidden_act="silu",
    tie_word_embeddings=False,
  ),
  "phi-3-mini": dict(
    model_type="phi3",
    hidden_size=3072,
    intermediate_size=8192,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    vocab_size=32064,
    max_position_embeddings=4096,
    original_max_position_embeddings=4096,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    sliding_window=2047,
    hidden_act="silu",
    tie_word_embeddings=False,
  ),
}

# stabilityai/sdxl-turbo: unet/, vae/, text_encoder/ (CLIP ViT-L/14's text tower), text_encoder_2/
# (OpenCLIP ViT-bigG/14's), scheduler/ (Euler ancestral, trailing timesteps: one step from pure
# noise)
SDXL_TURBO = dict(
  unet=dict(
    act_fn="silu",
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    attention_head_dim=[5, 10, 20],
    block_out_channels=[320, 640, 1280],
    cross_attention_dim=2048,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    projection_class_embeddings_input_dim=2816,
    sample_size=64,
    transformer_layers_per_block=[1, 2, 10],
    use_linear_projection=True,
  ),
  vae=dict(
    block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.13025,
    force_upcast=True,
  ),
  text_encoder=dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    projection_dim=768,
    hidden_act="quick_gelu",
  ),
  text_encoder_2=dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    projection_dim=1280,
    hidden_act="gelu",
  ),
  scheduler=dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    prediction_type="epsilon",
    steps_offset=1,
    timestep_spacing="trailing",
  ),
)

ARCHS = (*LLMS, "sdxl-turbo")


def _div(n: int, k: int, multiple: int = 1) -> int:
  """n / k rounded down to a multiple, at least `multiple`."""
  return max(multiple, n // k // multiple * multiple)


def _llm_config(name: str, shrink: int) -> dict:
  cfg = dict(LLMS[name])
  if shrink > 1:
    heads = _div(cfg["num_attention_heads"], shrink)
    kv = max(1, cfg["num_key_value_heads"] * heads // cfg["num_attention_heads"])
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    cfg.update(
      num_attention_heads=heads,
      num_key_value_heads=kv,
      # head_dim kept, so attention's shape per head is the real one
      hidden_size=heads * head_dim,
      intermediate_size=_div(cfg["intermediate_size"], shrink, 64),
      num_hidden_layers=_div(cfg["num_hidden_layers"], shrink),
    )
  return cfg


def llm(name: str, device: str = "cpu", dtype=None, shrink: int = 1):
  """A random-weight causal LM of `name`'s published architecture, initialised on `device`."""
  import torch
  from transformers import AutoConfig, AutoModelForCausalLM

  if name not in LLMS:
    raise ValueError(f"Unknown LLM architecture {name!r}; choose from {', '.join(LLMS)}.")
  cfg = _llm_config(name, shrink)
  config = AutoConfig.for_model(**cfg)
  torch.manual_seed(0)
  # built on the device in its dtype: a 7B model is never materialised in float32 on the host
  with torch.device(device):
    model = AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32)
  return model.eval()


def _sdxl_parts(shrink: int) -> dict:
  """SDXL-Turbo's part configs, every width and depth divided by `shrink`."""
  c = {k: dict(v) for k, v in SDXL_TURBO.items()}
  if shrink == 1:
    return c
  u, v = c["unet"], c["vae"]
  groups = max(1, 32 // shrink)
  u["block_out_channels"] = [_div(ch, shrink, groups * 2) for ch in u["block_out_channels"]]
  # diffusers reads SDXL's attention_head_dim as heads per block: keep it dividing the width
  u["attention_head_dim"] = [max(1, h // shrink) for h in u["attention_head_dim"]]
  u["block_out_channels"] = [
    ch // h * h for ch, h in zip(u["block_out_channels"], u["attention_head_dim"])
  ]
  u["transformer_layers_per_block"] = [
    max(1, n // shrink) for n in u["transformer_layers_per_block"]
  ]
  u["norm_num_groups"] = groups
  u["addition_time_embed_dim"] = _div(u["addition_time_embed_dim"], shrink, 8)
  v["block_out_channels"] = [_div(ch, shrink, groups) for ch in v["block_out_channels"]]
  v["norm_num_groups"] = groups
  for te in ("text_encoder", "text_encoder_2"):
    t = c[te]
    heads = _div(t["num_attention_heads"], shrink)
    t.update(
      hidden_size=heads * (t["hidden_size"] // t["num_attention_heads"]),
      num_attention_heads=heads,
      intermediate_size=_div(t["intermediate_size"], shrink, 16),
      num_hidden_layers=_div(t["num_hidden_layers"], shrink),
    )
    t["projection_dim"] = t["hidden_size"]
  # the cross-attention reads both encoders' hidden states side by side; the added embedding reads
  # the second's pooled projection and six time ids
  u["cross_attention_dim"] = c["text_encoder"]["hidden_size"] + c["text_encoder_2"]["hidden_size"]
  u["projection_class_embeddings_input_dim"] = (
    c["text_encoder_2"]["projection_dim"] + 6 * u["addition_time_embed_dim"]
  )
  return c


def t2i(name: str = "sdxl-turbo", device: str = "cpu", dtype=None, shrink: int = 1):
  """A random-weight StableDiffusionXLPipeline of SDXL-Turbo's published architecture, on
  `device`; its two tokenizers are this project's CLIP BPE (the same vocabulary as OpenAI's)."""
  import torch
  from diffusers import (
    AutoencoderKL,
    EulerAncestralDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
  )
  from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
  )

  from tripletclip_jax.synth.tiny import clip_tokenizer

  if name != "sdxl-turbo":
    raise ValueError(f"Unknown text-to-image architecture {name!r}; choose sdxl-turbo.")
  c = _sdxl_parts(shrink)
  torch.manual_seed(0)
  default = torch.get_default_dtype()
  # built in place on the device in the wanted dtype (no float32 copy on the host first)
  torch.set_default_dtype(dtype or torch.float32)
  try:
    with torch.device(device):
      unet = UNet2DConditionModel(**c["unet"])
      vae = AutoencoderKL(**c["vae"])
      text = CLIPTextModel(CLIPTextConfig(**c["text_encoder"]))
      text_2 = CLIPTextModelWithProjection(CLIPTextConfig(**c["text_encoder_2"]))
  finally:
    torch.set_default_dtype(default)
  tok = clip_tokenizer()
  pipe = StableDiffusionXLPipeline(
    vae=vae,
    text_encoder=text,
    text_encoder_2=text_2,
    tokenizer=tok,
    tokenizer_2=tok,
    unet=unet,
    scheduler=EulerAncestralDiscreteScheduler(**c["scheduler"]),
  )
  return pipe


def count_params(module) -> int:
  """Parameters of a torch module (or of a pipeline's components), for the report."""
  if hasattr(module, "components"):
    return sum(count_params(m) for m in module.components.values() if hasattr(m, "parameters"))
  return sum(p.numel() for p in module.parameters())
