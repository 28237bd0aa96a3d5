"""Exports a training checkpoint as a transformers CLIPModel directory, or for open_clip.

  python launch/export_hf.py --workdir runs/demo --output_dir runs/demo/hf [--step N] [--push_to_hub USER/REPO]
  python launch/export_hf.py --workdir runs/demo --output_dir runs/demo/open_clip --format open_clip \
      [--name tripletclip]

The transformers directory loads offline with CLIPModel.from_pretrained and
CLIPProcessor.from_pretrained. The open_clip export is NAME.json (the model config) and
open_clip_model.safetensors:

  open_clip.add_model_config("runs/demo/open_clip/tripletclip.json")
  model, _, preprocess = open_clip.create_model_and_transforms(
      "tripletclip", pretrained="runs/demo/open_clip/open_clip_model.safetensors")
"""

import argparse
import sys


from tripletclip_jax.interop import hf, openclip
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
  p.add_argument("--format", choices=("hf", "open_clip"), default="hf")
  p.add_argument("--name", default="tripletclip", help="open_clip: the model name (NAME.json)")
  args = p.parse_args(argv)
  if args.push_to_hub and args.format != "hf":
    p.error("--push_to_hub takes a transformers export (--format hf)")
  try:
    step, meta = checkpoint.read_meta(args.workdir, args.step)
    config, params = checkpoint.load_params(args.workdir, step)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"error: {e}")
  if args.format == "open_clip":
    cfg_path, weights = openclip.export(config, params, args.output_dir, args.name)
    print(f"Exported step {step} of {args.workdir} for open_clip: {cfg_path}, {weights}")
    return
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
