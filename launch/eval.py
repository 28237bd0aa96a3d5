"""Evaluates a training workdir or a Hugging Face CLIP directory.

  python launch/eval.py --model runs/demo --tasks sugarcrepe,triplet \
      --sugarcrepe_dir runs/demo/data/seed0/sugarcrepe --triplet_data runs/demo/data/seed0/heldout --output results.json
  python launch/eval.py --model /models/clip-vit-base-patch32 --tasks sugarcrepe,winoground,zeroshot,retrieval \
      --sugarcrepe_dir /data/sugarcrepe --coco_image_dir /data/coco/val2017 \
      --winoground /data/winoground --zeroshot tfds:imagenet2012 --tfds_data_dir /data/tfds \
      --retrieval_json /data/karpathy/dataset_coco.json --retrieval_image_dir /data/coco --output results.json

Any option of any registered task (tripletclip_jax/evaluate REGISTRY) is a typed config key, set as
in launch/main.py: `--config.evals.TASK.OPTION=VALUE`, e.g. `--config.evals.triplet.batch_size=16`
(the same keys as a training config's `config.evals`; `--option TASK.OPTION=VALUE` is an alias).

Writes results.json ({"sugarcrepe": {"add_att": 61.2, ..., "mean": ...}, ...}, percentages),
results.md and one results_TASK.png bar chart per task.
"""

import argparse
import os
import sys
import tempfile


def evals_config(tasks):
  """A locked ConfigDict {evals: {TASK: {OPTION: default}}}, each option typed as its function
  declares it."""
  import ml_collections
  from ml_collections import config_dict
  from tripletclip_jax.evaluate import option_types

  evals = {}
  for t in tasks:
    evals[t] = {
      k: (config_dict.placeholder(kind) if default is None and kind is not None else default)
      for k, (kind, default) in option_types(t).items()
    }
  return ml_collections.ConfigDict({"evals": evals}).lock()


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--model", required=True, help="training workdir or Hugging Face CLIP directory")
  p.add_argument(
    "--step", type=int, default=None, help="checkpoint step of a workdir (default: latest)"
  )
  p.add_argument("--tasks", default="sugarcrepe")
  p.add_argument("--output", default="results.json")
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--sugarcrepe_dir", help="folder with the 7 SugarCrepe JSON files")
  p.add_argument(
    "--coco_image_dir", help="SugarCrepe's images (COCO val2017); default SUGARCREPE_DIR/images"
  )
  p.add_argument(
    "--winoground", help="`datasets` folder (save_to_disk / parquet / arrow) or examples.jsonl"
  )
  p.add_argument(
    "--winoground_image_dir", help="image folder for examples.jsonl (default: beside it, images/)"
  )
  p.add_argument(
    "--zeroshot",
    help="image folder with a subfolder per class, or tfds:imagenet2012|cifar10|cifar100",
  )
  p.add_argument("--tfds_data_dir", default=None)
  p.add_argument(
    "--retrieval_json", help="Karpathy split JSON (dataset_coco.json / dataset_flickr30k.json)"
  )
  p.add_argument("--retrieval_image_dir")
  p.add_argument(
    "--triplet_data",
    help="held-out TripletData shards (glob or directory): triplet, hard_retrieval",
  )
  p.add_argument(
    "--option",
    action="append",
    default=[],
    metavar="TASK.KEY=VALUE",
    help="alias of --config.evals.TASK.KEY=VALUE, repeatable",
  )
  return p


# The built-in tasks' options as flags; every option of every task is also
# --config.evals.TASK.KEY=VALUE.
FLAGS = {
  "sugarcrepe": dict(sugarcrepe_dir="sugarcrepe_dir", image_dir="coco_image_dir"),
  "winoground": dict(path="winoground", image_dir="winoground_image_dir"),
  "zeroshot": dict(dataset="zeroshot", data_dir="tfds_data_dir"),
  "retrieval": dict(split_json="retrieval_json", image_dir="retrieval_image_dir"),
  "triplet": dict(pattern="triplet_data"),
  "hard_retrieval": dict(pattern="triplet_data"),
}


def task_options(p, args, tasks: list[str], overrides: list[str]) -> dict:
  """{task: {option: value}} from the flags and the typed overrides; p.error (one line) for a bad
  override or a missing required option."""
  from tripletclip_jax.configlib import ConfigError, apply_overrides
  from tripletclip_jax.evaluate import required_options

  config = evals_config(tasks)
  with config.unlocked():
    for t in tasks:
      for k, f in FLAGS.get(t, {}).items():
        if getattr(args, f) is not None:
          config.evals[t][k] = getattr(args, f)
  try:
    apply_overrides(config, overrides + [f"evals.{o}" for o in args.option])
  except ConfigError as e:
    p.error(f"{e} (tasks: {', '.join(tasks)})")
  options = {t: {k: v for k, v in config.evals[t].items() if v is not None} for t in tasks}
  for t in tasks:
    for k in required_options(t):
      if options[t].get(k) is None:
        p.error(
          f"task {t} needs --{FLAGS[t][k]}"
          if k in FLAGS.get(t, {})
          else f"task {t} needs --config.evals.{t}.{k}=..."
        )
  return options


def check_writable(p, output: str) -> None:
  """p.error now for an unwritable --output, not after an hour of evaluation."""
  from tripletclip_jax import fileio

  out_dir = os.path.dirname(fileio.absolute(output))
  try:
    if fileio.is_remote(out_dir):
      probe = fileio.join(out_dir, f".write-probe-{os.getpid()}")
      fileio.write_bytes(probe, b"")
      fileio.remove(probe)
    else:
      os.makedirs(out_dir, exist_ok=True)
      with tempfile.NamedTemporaryFile(dir=out_dir):
        pass
  except OSError as e:
    p.error(
      f"--output {output}: cannot write in {out_dir} ({e.strerror or e}); choose a writable path"
    )


def main(argv=None):
  p = parser()
  from tripletclip_jax.configlib import ConfigError, split_overrides

  try:
    argv, overrides = split_overrides(sys.argv[1:] if argv is None else list(argv))
  except ConfigError as e:
    p.error(str(e))
  args = p.parse_args(argv)

  tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
  from tripletclip_jax.evaluate import REGISTRY

  unknown = [t for t in tasks if t not in REGISTRY]
  if unknown:
    p.error(f"unknown task {unknown[0]!r}; choose from {', '.join(REGISTRY)}")
  options = task_options(p, args, tasks, overrides)
  check_writable(p, args.output)

  import tripletclip_jax as tc
  from tripletclip_jax import evaluate
  from tripletclip_jax.evaluate import report

  try:  # the same registry and checks as the trainer's config.evals
    evaluators = evaluate.build({t: dict(type=t, **options[t]) for t in tasks})
    model = tc.load(args.model, step=args.step, batch_size=args.batch_size)
    results = {}
    for ev in evaluators:
      results[ev.name] = ev(model)
      shown = ", ".join(
        f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in results[ev.name].items()
      )
      print(f"{ev.name}: {shown}")
  except (FileNotFoundError, ValueError, KeyError) as e:
    sys.exit(f"error: {e}")
  for path in report.write(results, args.output, args.model):
    print(f"wrote {path}")


if __name__ == "__main__":
  main()
