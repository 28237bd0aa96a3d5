"""Input pipeline throughput per core: ours (Grain + records) vs webdataset + PIL + torchvision.

  python benchmarks/input_pipeline.py [--num_examples 256] [--rounds 3]

Both read the same 512 px JPEG pairs (like SDXL-Turbo's output) with their
captions, decode, random-resized-crop to 224, normalise and tokenize, one
process pinned to one core, alternating A and B each round. The released
TripletCLIP code's loader is the webdataset one. Ends with a `key=value` line.
"""

import argparse
import io
import os
import statistics
import tarfile
import tempfile
import time

import numpy as np
from PIL import Image, ImageFilter


from tripletclip_jax.data import pipeline, records  # noqa: E402


def photo_like_jpeg(rng, size=512) -> bytes:
  """Smooth random colour fields plus grain: JPEG sizes similar to natural images (~50-80 kB)."""
  low = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
  img = Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC)
  noise = rng.normal(0, 18, (size, size, 3))
  arr = np.clip(np.asarray(img, np.float32) + noise, 0, 255).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(arr).filter(ImageFilter.SMOOTH).save(buf, format="JPEG", quality=90)
  return buf.getvalue()


def write_data(d: str, n: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  shard = os.path.join(d, records.shard_name("bench", 0, 1))
  tar_path = os.path.join(d, "bench.tar")
  with records.ShardWriter(shard) as w, tarfile.open(tar_path, "w") as tar:
    for i in range(n):
      ex = {
        "key": f"{i:06d}",
        "image": photo_like_jpeg(rng),
        "neg_image": photo_like_jpeg(rng),
        "caption": f"a photo of a red car parked left of a small tree number {i}",
        "neg_caption": f"a photo of a blue car parked right of a small tree number {i}",
      }
      w.write(ex)
      for ext in ("image", "neg_image", "caption", "neg_caption"):
        data = ex[ext] if isinstance(ex[ext], bytes) else ex[ext].encode()
        info = tarfile.TarInfo(f"{i:06d}.{ext}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
  return shard, tar_path


def run_ours(shard: str, n: int, batch: int, threads: int) -> float:
  ds = pipeline.make_dataset(
    shard, batch_size=batch, image_size=224, train=True, seed=0, read_threads=threads
  )
  it = iter(ds)
  t = time.perf_counter()
  seen = 0
  while seen < n:
    seen += len(next(it)["key"])
  return seen / (time.perf_counter() - t)


def run_webdataset(tar_path: str, n: int, batch: int) -> float:
  import open_clip
  import torch
  import webdataset as wds
  from torchvision import transforms as T

  tf = T.Compose(
    [
      T.RandomResizedCrop(224, scale=(0.9, 1.0), interpolation=T.InterpolationMode.BICUBIC),
      T.ToTensor(),
      T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    ]
  )

  # The members have no image extension: decode them with PIL, as the released code does.
  def prep(s):
    img = lambda b: tf(Image.open(io.BytesIO(b)).convert("RGB"))
    return (
      img(s["image"]),
      img(s["neg_image"]),
      open_clip.tokenize([s["caption"].decode()])[0],
      open_clip.tokenize([s["neg_caption"].decode()])[0],
    )

  ds = wds.WebDataset(tar_path, shardshuffle=False, empty_check=False).repeat().map(prep)
  loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=0)
  it = iter(loader)
  t = time.perf_counter()
  seen = 0
  while seen < n:
    seen += len(next(it)[0])
  return seen / (time.perf_counter() - t)


def main():
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--num_examples", type=int, default=256)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--read_threads", type=int, default=1, help="our decode threads (one core: 1)")
  args = p.parse_args()
  if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core: a per-worker figure
  import torch

  torch.set_num_threads(1)
  with tempfile.TemporaryDirectory() as d:
    shard, tar_path = write_data(d, args.num_examples)
    # warm-up: imports, tokenizer, caches
    run_ours(shard, args.batch_size, args.batch_size, args.read_threads)
    run_webdataset(tar_path, args.batch_size, args.batch_size)
    ours, theirs = [], []
    for _ in range(args.rounds):
      ours.append(run_ours(shard, args.num_examples, args.batch_size, args.read_threads))
      theirs.append(run_webdataset(tar_path, args.num_examples, args.batch_size))
  o, t = statistics.median(ours), statistics.median(theirs)
  print(f"ours (Grain + records): {o:.1f} examples/s/core {[round(x, 1) for x in ours]}")
  print(f"webdataset + PIL + torchvision: {t:.1f} examples/s/core {[round(x, 1) for x in theirs]}")
  print(
    f"ours_examples_per_s_per_core={o:.2f} webdataset_examples_per_s_per_core={t:.2f} ratio={o / t:.3f} "
    f"read_threads={args.read_threads} image_size=224 source_px=512 examples={args.num_examples} rounds={args.rounds}"
  )


if __name__ == "__main__":
  main()
