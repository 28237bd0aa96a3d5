"""Tiny random models for the negatives tool, built offline from configs and saved locally: what its
tests, `benchmarks/negatives.py --tiny` and an offline smoke run load through the same path as real
ones."""


def tiny_tokenizer():
  """A byte-level BPE (300 tokens) trained on a few sentences, with a chat template: any text
  encodes, so it stands in for a real LLM's tokenizer offline."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast

  corpus = [
    "a dog sitting to the left of a cat on a sofa",
    "a man wearing a red helmet riding a motorbike",
    "two red apples on a wooden table",
    "a blue car parked next to a tall tree",
    "output only the new sentence",
  ]
  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(
    corpus * 20,
    trainers.BpeTrainer(
      vocab_size=300,
      special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    ),
  )
  fast = PreTrainedTokenizerFast(
    tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
  )
  fast.chat_template = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant:{% endif %}"
  )
  return fast


def make_tiny_llm(out_dir: str) -> str:
  """A 2-layer random LlamaForCausalLM with tiny_tokenizer(), saved to out_dir."""
  from transformers import LlamaConfig, LlamaForCausalLM
  import torch

  fast = tiny_tokenizer()
  torch.manual_seed(0)
  cfg = LlamaConfig(
    vocab_size=len(fast),
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    bos_token_id=fast.bos_token_id,
    eos_token_id=fast.eos_token_id,
    pad_token_id=fast.pad_token_id,
  )
  LlamaForCausalLM(cfg).save_pretrained(out_dir)
  fast.save_pretrained(out_dir)
  return out_dir


def clip_tokenizer():
  """A transformers CLIPTokenizer of this project's BPE (the same vocabulary as OpenAI CLIP's), built
  offline: what the text-to-image pipelines here are given."""
  import tempfile

  from transformers import CLIPTokenizer

  from tripletclip_jax.interop.hf import write_tokenizer

  with tempfile.TemporaryDirectory() as tmp:
    write_tokenizer(tmp)
    return CLIPTokenizer.from_pretrained(tmp, model_max_length=77)


def make_tiny_t2i(out_dir: str) -> str:
  """A tiny random StableDiffusionPipeline (UNet with block_out_channels=(4, 8), 2-layer CLIP text
  encoder)."""
  import torch
  from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
  )
  from transformers import CLIPTextConfig, CLIPTextModel

  torch.manual_seed(0)
  unet = UNet2DConditionModel(
    block_out_channels=(4, 8),
    layers_per_block=1,
    sample_size=16,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32,
    norm_num_groups=2,
    attention_head_dim=2,
  )
  vae = AutoencoderKL(
    block_out_channels=(4, 8),
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    norm_num_groups=2,
    sample_size=32,
  )
  text_encoder = CLIPTextModel(
    CLIPTextConfig(
      hidden_size=32,
      intermediate_size=37,
      num_hidden_layers=2,
      num_attention_heads=4,
      vocab_size=49408,
      max_position_embeddings=77,
    )
  )
  tokenizer = clip_tokenizer()
  pipe = StableDiffusionPipeline(
    unet=unet,
    vae=vae,
    text_encoder=text_encoder,
    tokenizer=tokenizer,
    scheduler=EulerDiscreteScheduler(),
    safety_checker=None,
    feature_extractor=None,
    requires_safety_checker=False,
  )
  pipe.save_pretrained(out_dir)
  return out_dir
