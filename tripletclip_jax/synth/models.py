"""The three models of the negatives tool: an LLM, a text-to-image pipeline and a CLIP scorer."""

import io
import os
import zlib

import numpy as np

from tripletclip_jax.synth import prompts
from tripletclip_jax.synth.validate import clean_output, rejection, rule_negative


def _check_model(path: str, what: str) -> None:
  if not os.path.isdir(path) and "/" not in path:
    raise FileNotFoundError(
      f"{what} {path!r} is neither a local directory nor a Hub id (ORG/NAME)."
    )


class Captioner:
  """Hard negative captions from any transformers causal LM, batched with left padding.

  `model` is a local directory, a Hub id, or a causal LM already built (then pass its
  `tokenizer`). On a GPU the LM runs in float16. `static_cache` allocates the KV cache once for the
  prompt plus `max_new_tokens` (what `torch.compile` needs); off by default: on a CPU it is slower
  (benchmarks/negatives.py measures both)."""

  def __init__(
    self,
    model,
    device: str = "cpu",
    max_new_tokens: int = 64,
    do_sample: bool = True,
    temperature: float = 0.7,
    top_p: float = 0.95,
    retries: int = 2,
    seed: int = 0,
    trust_remote_code: bool = False,
    tokenizer=None,
    static_cache: bool = False,
    min_new_tokens: int = 0,
  ):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    self.torch, self.device, self.seed, self.retries = torch, device, seed, retries
    if isinstance(model, str):
      _check_model(model, "LLM")
      tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
      dtype = torch.float16 if device.startswith("cuda") else torch.float32
      model = AutoModelForCausalLM.from_pretrained(
        model, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
      ).to(device)
    elif tokenizer is None:
      raise ValueError("Captioner: a model passed as an object needs its tokenizer= too.")
    self.tok, self.model = tokenizer, model.eval()
    # generation continues from the right edge of every row
    self.tok.padding_side = "left"
    if self.tok.pad_token is None:
      self.tok.pad_token = self.tok.eos_token
    self.gen = dict(
      max_new_tokens=max_new_tokens,
      min_new_tokens=min_new_tokens,
      do_sample=do_sample,
      pad_token_id=self.tok.pad_token_id,
    )
    if do_sample:
      self.gen.update(temperature=temperature, top_p=top_p)
    if static_cache:
      self.gen["cache_implementation"] = "static"

  def generate_tokens(self, input_ids, attention_mask):
    """[B, T] left-padded prompt ids -> [B, N] new token ids (N <= max_new_tokens)."""
    with self.torch.no_grad():
      out = self.model.generate(
        input_ids=input_ids.to(self.device),
        attention_mask=attention_mask.to(self.device),
        **self.gen,
      )
    return out[:, input_ids.shape[1] :]

  def _generate(self, captions: list[str]) -> list[str]:
    texts = [prompts.render(self.tok, c) for c in captions]
    enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    new = self.generate_tokens(enc["input_ids"], enc["attention_mask"])
    return self.tok.batch_decode(new, skip_special_tokens=True)

  def __call__(self, items: list[dict]) -> list[dict]:
    """items [{key, caption}] -> [{key, neg_caption, neg_source ('llm' | 'rule'), rejected:
    [reasons]}]."""
    self.torch.manual_seed(self.seed + zlib.crc32(items[0]["key"].encode()) if items else self.seed)
    results = {it["key"]: {"key": it["key"], "rejected": []} for it in items}
    todo = list(items)
    for _ in range(1 + self.retries):
      if not todo:
        break
      outs = self._generate([it["caption"] for it in todo])
      again = []
      for it, out in zip(todo, outs):
        reason = rejection(it["caption"], out)
        if reason is None:
          results[it["key"]].update(neg_caption=clean_output(out), neg_source="llm")
        else:
          results[it["key"]]["rejected"].append(reason)
          again.append(it)
      todo = again
    for it in todo:  # still rejected after the retries: a NegCLIP-style rule, flagged as such
      text, kind = rule_negative(it["caption"], it["key"], self.seed)
      results[it["key"]].update(neg_caption=text, neg_source="rule", neg_type=kind)
    return [results[it["key"]] for it in items]


class Imager:
  """Hard negative images from any pipeline AutoPipelineForText2Image loads (default: SDXL-Turbo's
  setting: one step, no guidance).

  `model` is a local directory, a Hub id or a diffusers pipeline already built. On a GPU it runs in
  float16; `compile_unet` puts the UNet, where the time goes, through `torch.compile`."""

  def __init__(
    self,
    model,
    device: str = "cpu",
    steps: int = 1,
    guidance: float = 0.0,
    size: int = 512,
    seed: int = 0,
    jpeg_quality: int = 95,
    trust_remote_code: bool = False,
    compile_unet: bool = False,
  ):
    import torch
    from diffusers import AutoPipelineForText2Image

    self.torch, self.device, self.seed = torch, device, seed
    if isinstance(model, str):
      _check_model(model, "Text-to-image model")
      dtype = torch.float16 if device.startswith("cuda") else torch.float32
      model = AutoPipelineForText2Image.from_pretrained(
        model, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
      )
    self.pipe = model.to(device)
    self.pipe.set_progress_bar_config(disable=True)
    if compile_unet:
      self.pipe.unet = torch.compile(self.pipe.unet)
    self.args = dict(num_inference_steps=steps, guidance_scale=guidance, height=size, width=size)
    self.jpeg_quality = jpeg_quality

  def generator(self, key: str):
    """Seeded per key, so a rerun renders the same image whatever the batch it lands in."""
    return self.torch.Generator(device="cpu").manual_seed(zlib.crc32(f"{self.seed}:{key}".encode()))

  def render(self, keys: list[str], captions: list[str]) -> list:
    """One batch through the pipeline (text encoders, UNet, one batched VAE decode) -> PIL
    images."""
    return self.pipe(
      prompt=captions, generator=[self.generator(k) for k in keys], **self.args
    ).images

  def encode(self, images: list) -> list[bytes]:
    """PIL images -> JPEG bytes (PIL releases the GIL here, so it overlaps the next render)."""
    out = []
    for im in images:
      buf = io.BytesIO()
      im.convert("RGB").save(buf, format="JPEG", quality=self.jpeg_quality)
      out.append(buf.getvalue())
    return out

  def __call__(self, keys: list[str], captions: list[str]) -> list[bytes]:
    return self.encode(self.render(keys, captions))

  def render_all(self, keys: list[str], captions: list[str], batch_size: int, progress=None):
    """Every item in batches, each batch's JPEG encoding overlapped with the next batch's render
    -> JPEG bytes in order. progress(n) is called as batches finish."""
    from concurrent.futures import ThreadPoolExecutor

    out, pending = [], None
    with ThreadPoolExecutor(1) as pool:
      for b in range(0, len(keys), batch_size):
        images = self.render(keys[b : b + batch_size], captions[b : b + batch_size])
        if pending is not None:
          out += pending.result()
        pending = pool.submit(self.encode, images)
        if progress:
          progress(len(images))
      if pending is not None:
        out += pending.result()
    return out


class Scorer:
  """The paper's high-quality filter score: (s(x, y) + s(x', y')) / 2 with a transformers
  CLIPModel."""

  def __init__(self, model: str, device: str = "cpu"):
    import torch
    from transformers import CLIPModel, CLIPProcessor

    _check_model(model, "CLIP scorer")
    self.torch, self.device = torch, device
    self.model = CLIPModel.from_pretrained(model, use_safetensors=True).to(device).eval()
    self.proc = CLIPProcessor.from_pretrained(model)

  def _cos(self, images: list[bytes], texts: list[str]) -> np.ndarray:
    from PIL import Image

    pil = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
    with self.torch.no_grad():
      enc = self.proc(
        text=texts, images=pil, return_tensors="pt", padding=True, truncation=True
      ).to(self.device)
      i = self.model.get_image_features(pixel_values=enc["pixel_values"])
      t = self.model.get_text_features(
        input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
      )
    norm = lambda x: self.torch.nn.functional.normalize(
      getattr(x, "pooler_output", x).float(), dim=-1
    )
    return (norm(i) * norm(t)).sum(-1).cpu().numpy()

  def __call__(self, images, captions, neg_images, neg_captions) -> np.ndarray:
    return (self._cos(images, captions) + self._cos(neg_images, neg_captions)) / 2
