"""Negatives tool throughput: captions/s (LLM) and images/s (text-to-image), through the tool's own
classes (synth/models.py: Captioner, Imager), naive loop (batch 1) against the tool's batched path.

  # the real architectures with random weights (no download), on a GPU
  python benchmarks/negatives.py --arch sdxl-turbo,mistral-7b,phi-3-mini --device cuda
  # the same code path on a CPU, every width and depth divided by 8, 128 px
  python benchmarks/negatives.py --arch sdxl-turbo,phi-3-mini --shrink 8 --image_size 128 --n 8
  # real weights from local directories, or tiny random models built here
  python benchmarks/negatives.py --llm DIR --t2i DIR --device cuda
  python benchmarks/negatives.py --tiny

Captions: with --arch a fixed prompt of --prompt_tokens random ids (about what Mistral's tokenizer
makes of the tool's few-shot prompt) and exactly --max_new_tokens new tokens (no early stop), so
the figure is the architecture's; with --llm/--tiny the real prompt and the tool's validation.
Images: --image_size px, one step, no guidance (SDXL-Turbo's setting), JPEG-encoded.
Variants alternate in each of --rounds rounds; medians. Ends with one `key=value` line, with the
cost of CC3M's 2.6M items in device-hours.
"""

import argparse
import statistics
import tempfile
import time

import torch

from tripletclip_jax.synth import archs
from tripletclip_jax.synth.models import Captioner, Imager

CAPTIONS = [
  "a dog sitting to the left of a cat on a sofa",
  "two red apples on a wooden table",
  "a man riding a bike down a steep hill",
  "a blue car parked next to a tall tree",
]
CC3M = 2.6e6


def _sync(device: str) -> None:
  if device.startswith("cuda"):
    torch.cuda.synchronize()


def _timed(device: str, fn) -> float:
  _sync(device)
  t = time.perf_counter()
  fn()
  _sync(device)
  return time.perf_counter() - t


def _alternate(variants: dict, device: str, rounds: int) -> dict:
  """{name: (items, fn)} -> {name: median items/s}, after one warm-up call of each."""
  for _, fn in variants.values():
    fn()
  runs = {k: [] for k in variants}
  for _ in range(rounds):
    for k, (items, fn) in variants.items():
      runs[k].append(items / _timed(device, fn))
  return {k: statistics.median(v) for k, v in runs.items()}


def _dtype(device: str):
  return torch.float16 if device.startswith("cuda") else torch.float32


def caption_variants(args, caps: dict, items: list[dict]) -> dict:
  """caps {"naive": Captioner, "batched": ..., ["batched_static": ...]}: naive makes one caption
  a call, the others --batch_size a call."""
  if args.arch:
    vocab = caps["naive"].model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab, (args.n, args.prompt_tokens), generator=g)
    mask = torch.ones_like(ids)

    def run(c, bs, n):
      return lambda: [c.generate_tokens(ids[b : b + bs], mask[b : b + bs]) for b in range(0, n, bs)]
  else:

    def run(c, bs, n):
      return lambda: [c(items[b : b + bs]) for b in range(0, n, bs)]

  return {
    k: (args.naive_n, run(c, 1, args.naive_n))
    if k == "naive"
    else (args.n, run(c, args.batch_size, args.n))
    for k, c in caps.items()
  }


def image_variants(args, img: Imager, items: list[dict]) -> dict:
  keys, caps = [i["key"] for i in items], [i["caption"] for i in items]

  def naive():
    for k, c in zip(keys[: args.naive_n], caps[: args.naive_n]):
      img([k], [c])

  return {
    "naive": (args.naive_n, naive),
    "batched": (args.n, lambda: img.render_all(keys, caps, args.image_batch_size)),
  }


def _models(args, tmp: str):
  """-> [(label, kind, build)] for every model to measure; build() -> (naive, batched) tools."""
  dev, dt = args.device, _dtype(args.device)
  cap_kw = dict(device=dev, max_new_tokens=args.max_new_tokens, retries=0)
  out = []
  if args.arch:
    from tripletclip_jax.synth.tiny import tiny_tokenizer

    for name in args.arch:
      if name in archs.LLMS:

        def build(name=name):
          model = archs.llm(name, dev, dt, args.shrink)
          kw = dict(tokenizer=tiny_tokenizer(), min_new_tokens=args.max_new_tokens, **cap_kw)
          dynamic = Captioner(model, static_cache=False, **kw)
          static = Captioner(model, static_cache=True, **kw)
          return {"naive": dynamic, "batched": dynamic, "batched_static": static}

        out.append((name, "captions", build))
      else:
        build = lambda name=name: Imager(
          archs.t2i(name, dev, dt, args.shrink), dev, size=args.image_size
        )
        out.append((name, "images", build))
    return out
  if args.tiny:
    from tripletclip_jax.synth.tiny import make_tiny_llm, make_tiny_t2i

    args.llm, args.t2i = make_tiny_llm(f"{tmp}/llm"), make_tiny_t2i(f"{tmp}/t2i")
  out.append(
    ("llm", "captions", lambda: dict.fromkeys(("naive", "batched"), Captioner(args.llm, **cap_kw)))
  )
  out.append(("t2i", "images", lambda: Imager(args.t2i, dev, size=args.image_size)))
  return out


def _parser():
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--arch", help=f"comma list of {', '.join(archs.ARCHS)}")
  p.add_argument("--shrink", type=int, default=1, help="divide --arch widths and depths by this")
  p.add_argument("--llm")
  p.add_argument("--t2i")
  p.add_argument("--tiny", action="store_true")
  p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
  p.add_argument("--n", type=int, default=32, help="captions and images per batched measurement")
  p.add_argument("--naive_n", type=int, default=4, help="items per naive (batch 1) measurement")
  p.add_argument("--rounds", type=int, default=1)
  p.add_argument("--batch_size", type=int, default=8, help="captions per generate call")
  p.add_argument("--image_batch_size", type=int, default=4)
  p.add_argument("--image_size", type=int, default=512)
  p.add_argument("--max_new_tokens", type=int, default=64)
  p.add_argument("--prompt_tokens", type=int, default=180)
  return p


def main():
  p = _parser()
  args = p.parse_args()
  if args.arch:
    args.arch = [a for a in args.arch.split(",") if a]
    bad = [a for a in args.arch if a not in archs.ARCHS]
    if bad:
      p.error(f"--arch: unknown {bad}; choose from {', '.join(archs.ARCHS)}")
  elif not (args.tiny or (args.llm and args.t2i)):
    p.error("pass --arch NAMES, --llm and --t2i, or --tiny")
  args.naive_n = min(args.naive_n, args.n)
  items = [{"key": f"k{i}", "caption": CAPTIONS[i % len(CAPTIONS)]} for i in range(args.n)]
  kv = dict(device=args.device, n=args.n, image_size=args.image_size, shrink=args.shrink)
  with tempfile.TemporaryDirectory() as tmp:
    for label, kind, build in _models(args, tmp):
      t = time.perf_counter()
      built = build()
      if kind == "captions":
        params = archs.count_params(built["naive"].model)
        rates = _alternate(caption_variants(args, built, items), args.device, args.rounds)
      else:
        params = archs.count_params(built.pipe)
        rates = _alternate(image_variants(args, built, items), args.device, args.rounds)
      del built
      per = "captions" if kind == "captions" else "images"
      best = max(rates, key=rates.get)
      b = rates[best]
      each = ", ".join(f"{k} {r:.2f}" for k, r in rates.items())
      print(
        f"{label}: {params / 1e9:.3f} B parameters; {per}/s {each}; best ({best}) "
        f"{b / rates['naive']:.2f}x naive, {b * 3600:,.0f} per device-hour, CC3M's 2.6M in "
        f"{CC3M / b / 3600:,.1f} device-hours (set-up and all {time.perf_counter() - t:.0f} s)"
        + (
          f"; widths and depths / {args.shrink}: not the real model's cost"
          if args.shrink > 1
          else ""
        )
      )
      key = label.replace("-", "_")
      kv.update({f"{key}_{k}_{per}_per_s": round(r, 3) for k, r in rates.items()})
      kv[f"{key}_cc3m_hours"] = round(CC3M / b / 3600, 1)
  print(" ".join(f"{k}={v}" for k, v in kv.items()))


if __name__ == "__main__":
  main()
