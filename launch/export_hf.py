"""Exports a training checkpoint as a transformers CLIPModel directory.

  python launch/export_hf.py --workdir runs/demo --output_dir runs/demo/hf [--step N] [--push_to_hub USER/REPO]

The directory loads offline with CLIPModel.from_pretrained and CLIPProcessor.from_pretrained.
"""

import argparse
import sys


from tripletclip_jax.interop import hf
from tripletclip_jax import checkpoint
from tripletclip_jax.train.metrics import read_metrics


def main(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--workdir", required=True)
  p.add_argument("--output_dir", required=True)
  p.add_argument("--step", type=int, default=None, help="default: the latest checkpoint")
  p.add_argument("--push_to_hub", default=None, metavar="REPO_ID")
  args = p.parse_args(argv)
  try:
    step, meta = checkpoint.read_meta(args.workdir, args.step)
    config, params = checkpoint.load_params(args.workdir, step)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"error: {e}")
  evals = {}
  for rec in read_metrics(args.workdir).values():  # the latest evaluation up to this step
    if rec["step"] <= step and any(k.startswith("eval/") for k in rec):
      evals = {k: v for k, v in rec.items() if k.startswith("eval/")}
  hf.export_hf(config, params, args.output_dir, train_config=meta.get("config"), eval_results=evals)
  print(f"Exported step {step} of {args.workdir} to {args.output_dir}")
  if args.push_to_hub:
    print(f"Pushed to {hf.push_to_hub(args.output_dir, args.push_to_hub)}")


if __name__ == "__main__":
  main()
