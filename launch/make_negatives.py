"""Generates TripletData: hard negative captions (an LLM) and images (a text-to-image model), into
shards.

  python launch/make_negatives.py --input captions.jsonl --output_dir data/tripletdata \
      --llm mistralai/Mistral-7B-Instruct-v0.2 --t2i stabilityai/sdxl-turbo --device cuda --batch_size 32
  # many GPUs / nodes: every process takes a deterministic share
  torchrun --nproc_per_node 8 launch/make_negatives.py --input 'cc3m/{00000..00331}.tar' ...

Inputs: JSONL/CSV/TSV with key, caption and an image path; img2dataset webdataset tars (.jpg +
.txt); our own shards. Stages: captions (LLM), images (text-to-image), score (CLIP filter, --clip).
Rerunning resumes.
"""

import argparse
import os
import sys


from tripletclip_jax.synth.run import Options, run


def parse(argv=None) -> Options:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--input", required=True)
  p.add_argument("--output_dir", required=True)
  p.add_argument(
    "--llm",
    default="mistralai/Mistral-7B-Instruct-v0.2",
    help="transformers causal LM (dir or Hub id); microsoft/Phi-3-mini-4k-instruct is a cheaper choice",
  )
  p.add_argument(
    "--t2i",
    default="stabilityai/sdxl-turbo",
    help="diffusers text-to-image pipeline (dir or Hub id)",
  )
  p.add_argument("--clip", help="transformers CLIPModel for the score stage")
  p.add_argument("--stages", default="captions,images")
  p.add_argument(
    "--device", default="cpu", help="cpu | cuda | cuda:N (default under torchrun: cuda:LOCAL_RANK)"
  )
  p.add_argument("--batch_size", type=int, default=8, help="LLM and CLIP batch")
  p.add_argument("--image_batch_size", type=int, default=4)
  p.add_argument("--chunk_size", type=int, default=1000, help="keys per output shard")
  p.add_argument("--name", default="negatives")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument(
    "--num_shards", type=int, default=1, help="processes sharing the work (else WORLD_SIZE)"
  )
  p.add_argument("--shard_index", type=int, default=0, help="this process's index (else RANK)")
  p.add_argument("--max_new_tokens", type=int, default=64)
  p.add_argument("--temperature", type=float, default=0.7)
  p.add_argument("--top_p", type=float, default=0.95)
  p.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
  p.add_argument(
    "--retries", type=int, default=2, help="LLM retries before the rule-based fallback"
  )
  p.add_argument("--steps", type=int, default=1)
  p.add_argument("--guidance", type=float, default=0.0)
  p.add_argument("--image_size", type=int, default=512)
  p.add_argument("--min_score", type=float, default=None)
  p.add_argument(
    "--keep_top",
    type=float,
    default=None,
    help="keep this top fraction of each shard by clip_score",
  )
  p.add_argument("--trust_remote_code", action="store_true")
  p.add_argument(
    "--staging_dir",
    help="local folder for the captions stage when --output_dir is gs:// "
    "(default: one per output_dir under the temp dir; keep it to resume)",
  )
  a = p.parse_args(argv)
  device = a.device
  if device == "cuda" and "LOCAL_RANK" in os.environ:
    device = f"cuda:{os.environ['LOCAL_RANK']}"
  return Options(
    input=a.input,
    output_dir=a.output_dir,
    llm=a.llm,
    t2i=a.t2i,
    clip=a.clip,
    stages=tuple(s.strip() for s in a.stages.split(",") if s.strip()),
    device=device,
    batch_size=a.batch_size,
    image_batch_size=a.image_batch_size,
    chunk_size=a.chunk_size,
    name=a.name,
    seed=a.seed,
    num_shards=a.num_shards,
    shard_index=a.shard_index,
    max_new_tokens=a.max_new_tokens,
    temperature=a.temperature,
    top_p=a.top_p,
    do_sample=not a.greedy,
    retries=a.retries,
    steps=a.steps,
    guidance=a.guidance,
    image_size=a.image_size,
    min_score=a.min_score,
    keep_top=a.keep_top,
    trust_remote_code=a.trust_remote_code,
    staging_dir=a.staging_dir,
  )


def main(argv=None):
  opts = parse(argv)
  try:
    totals = run(opts)
  except (FileNotFoundError, ValueError, OSError) as e:
    sys.exit(f"error: {e}")
  print(" ".join(f"{k}={v}" for k, v in totals.items()))


if __name__ == "__main__":
  main()
