"""Negatives tool throughput: captions/s (LLM) and images/s (text-to-image) on the current device.

  python benchmarks/negatives.py --llm mistralai/Mistral-7B-Instruct-v0.2 --t2i stabilityai/sdxl-turbo --device cuda
  python benchmarks/negatives.py --tiny          # random tiny models built locally: a smoke test of the path

Ends with one `key=value` line.
"""

import argparse
import tempfile
import time

from tripletclip_jax.synth.models import Captioner, Imager  # noqa: E402

CAPTIONS = [
  "a dog sitting to the left of a cat on a sofa",
  "two red apples on a wooden table",
  "a man riding a bike down a steep hill",
  "a blue car parked next to a tall tree",
]


def main():
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--llm")
  p.add_argument("--t2i")
  p.add_argument("--tiny", action="store_true")
  p.add_argument("--device", default="cpu")
  p.add_argument("--n", type=int, default=32, help="captions and images per measurement")
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--image_batch_size", type=int, default=4)
  p.add_argument("--image_size", type=int, default=512)
  p.add_argument("--max_new_tokens", type=int, default=64)
  args = p.parse_args()
  tmp = tempfile.TemporaryDirectory()
  if args.tiny:
    from tripletclip_jax.synth.tiny import make_tiny_llm, make_tiny_t2i

    args.llm, args.t2i = make_tiny_llm(f"{tmp.name}/llm"), make_tiny_t2i(f"{tmp.name}/t2i")
  if not (args.llm and args.t2i):
    p.error("pass --llm and --t2i, or --tiny")
  items = [{"key": f"k{i}", "caption": CAPTIONS[i % len(CAPTIONS)]} for i in range(args.n)]
  cap = Captioner(args.llm, args.device, args.max_new_tokens, retries=0)
  cap(items[: args.batch_size])  # warm-up
  t = time.perf_counter()
  out = []
  for b in range(0, args.n, args.batch_size):
    out += cap(items[b : b + args.batch_size])
  cap_s = args.n / (time.perf_counter() - t)
  llm_ok = sum(r["neg_source"] == "llm" for r in out)
  img = Imager(args.t2i, args.device, size=args.image_size)
  img(["w"], ["warm up"])
  t = time.perf_counter()
  for b in range(0, args.n, args.image_batch_size):
    part = items[b : b + args.image_batch_size]
    img([i["key"] for i in part], [i["caption"] for i in part])
  img_s = args.n / (time.perf_counter() - t)
  print(
    f"captions: {cap_s:.2f}/s ({llm_ok}/{args.n} passed validation); images: {img_s:.2f}/s at {args.image_size} px"
  )
  print(
    f"captions_per_s={cap_s:.3f} images_per_s={img_s:.3f} llm_valid_fraction={llm_ok / args.n:.3f} "
    f"device={args.device} n={args.n} image_size={args.image_size} tiny={args.tiny}"
  )


if __name__ == "__main__":
  main()
