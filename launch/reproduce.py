"""The paper's SugarCrepe comparison in miniature: every arm x seeds on the demo world, in one
command.

  python launch/reproduce.py --output_dir runs/study_v3 --seeds 0,1,2,3,4,5,6,7   # the pre-registered study
  python launch/reproduce.py --output_dir runs/demo --arms clip,tripletclip --seeds 0   # `make demo`
  python launch/reproduce.py --output_dir runs/big --seeds 0,1,2,3,4 --config.model.preset=tiny \
      --config.total_steps=2000 --config.data.source.num_train=5000          # scaled up

An arm is a registered loss, or one of the controls in ARMS: `clip_union_steps`
(CLIP on real + negative pairs at TripletCLIP's step count, batch 2B) and
`tripletclip_shuffled` (every x', y' from another item). Every run trains
configs/demo.py (or --config) with one arm and one seed. The world is drawn
from the seed, once per seed, into DIR/data/seed{S}, and shared by that seed's
arms, so a spread over seeds includes the draw of the world. Baselines are
compute matched: every run encodes as many image-text pairs as TripletCLIP
(compute_rule=pairs; `--config.compute_rule=flops` matches training FLOPs).
`--config.KEY=VALUE` overrides the config of every run, typed and checked as
launch/main.py does (`--set KEY=VALUE` is an alias); the loss, the seed, the
world's folder and seed, and the partners are this script's to set.
A finished run (DIR/runs/ARM-seedS/result.json, which records the settings it
trained with and its CPU model) is reused when those equal the requested ones,
so a killed study resumes; otherwise the script stops naming the keys that
differ. An unfinished run resumes from its checkpoint. Runs of one shape share
compiled executables through JAX's persistent cache in DIR/jax_cache (or the
folder JAX_COMPILATION_CACHE_DIR names).

Writes DIR/results.json, DIR/results.md (the paper's table layout, mean +- std
over seeds, then the pre-registered contrasts: paired differences with 95%
t-intervals and their verdicts, and the relation subsets against chance) and
DIR/results.png (bars with the std as error bars).
"""

import argparse
import json
import os
import time

import numpy as np

from tripletclip_jax.demo import study

DEFAULT_ARMS = (
  "clip",
  "clip_union",
  "clip_union_steps",
  "negclip",
  "negimage",
  "tripletclip",
  "tripletclip_shuffled",
)
# An arm is a loss and what the arm changes of the config. Every registered loss is an arm of
# itself. clip_union_steps: TripletCLIP's step count, with a batch of 2B union pairs (equal steps
# and pairs); tripletclip_shuffled: every x' and y' from another item (the extra data, without the
# pairing).
ARMS = {
  "clip_union_steps": (
    "clip_union",
    {"batch_size": lambda c: 2 * c.batch_size, "compute_matched": lambda c: False},
  ),
  "tripletclip_shuffled": ("tripletclip", {"data.partners": lambda c: "shuffled"}),
}
# Set by this script for each run: an override would train every run alike and mislabel the table.
OWN_KEYS = (
  "loss",
  "seed",
  "init_from",
  "data.source.dir",
  "data.source.world_seed",
  "data.source.train_set",
  "data.partners",
)


def settings_differ(saved: dict | None, now: dict) -> list[str]:
  """'key saved -> now' for every setting of a finished run that differs from the requested one (all
  of them, when the run recorded none)."""
  from tripletclip_jax.configlib import config_changes
  from tripletclip_jax.train.config import DRIVING, keys_tagged

  if saved is None:
    return ["the run recorded no settings (an older reproduce.py)"]
  # How a run was driven never changes what it trained or how it was scored; nor does the number of
  # data workers (the order is the same for any), which a resume records.
  return config_changes(saved, now, keys_tagged(DRIVING) + ("data.num_workers",))


def arm_config(
  arm: str,
  config_file: str,
  seed: int,
  data_dir: str,
  overrides: list[str],
  base: str | None = None,
):
  """The config an arm trains with for `seed`: the loss's config, the user's overrides, then the
  arm's, starting from the seed's base (a Hugging Face directory) if given."""
  from tripletclip_jax.configlib import apply_overrides, load_config_file

  loss, changes = ARMS.get(arm, (arm, {}))
  config = load_config_file(config_file, loss)
  own = [f"seed={seed}", f"data.source.dir={data_dir}", "progress_bar=False"]
  apply_overrides(config, own + [*overrides] + ([f"init_from=hf:{base}"] if base else []))
  apply_overrides(config, [f"{k}={fn(config)}" for k, fn in changes.items()])
  return config


def base_config(config_file: str, seed: int, data_dir: str, overrides: list[str], base_overrides):
  """The config of the seed's CLIP base: the config file's `:base` stage, the user's overrides
  (model and world alike for every run), then the base's own (`--base.KEY=VALUE`). It always exports
  its weights, which the arms start from."""
  from tripletclip_jax.configlib import apply_overrides, load_config_file

  config = load_config_file(config_file, "base")
  own = [f"seed={seed}", f"data.source.dir={data_dir}", "progress_bar=False"]
  apply_overrides(config, own + [*overrides])
  apply_overrides(config, [*base_overrides, "export_hf_dir=hf"], flag="--base.")
  return config


def checksum(hf_dir: str) -> str:
  """sha256 of a Hugging Face directory's weights: what every arm of a seed records it started
  from."""
  import hashlib

  h = hashlib.sha256()
  with open(os.path.join(hf_dir, "model.safetensors"), "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def check_unfinished(label: str, workdir: str, config, restart_changed: bool) -> None:
  """An unfinished run (checkpoints, no result.json) resumes only under the settings its checkpoint
  recorded: one line naming the keys that differ, or with `restart_changed` the run is moved aside
  to
  WORKDIR.changed-N and starts again, so that no run mixes settings."""
  from tripletclip_jax import checkpoint as ckpt

  try:
    step, meta = ckpt.read_meta(workdir)
  except FileNotFoundError:
    return  # nothing complete to resume: it starts afresh
  differ = settings_differ(meta.get("config"), config.to_dict())
  if not differ:
    return
  if not restart_changed:
    raise SystemExit(
      f"error: {label}: {workdir} holds an unfinished run (checkpoint {step}) trained with other "
      f"settings ({'; '.join(differ[:3])}{'; ...' if len(differ) > 3 else ''}): rerun with those, "
      "or pass --restart_changed to move it aside and train it again."
    )
  n = 1
  while os.path.exists(f"{workdir}.changed-{n}"):
    n += 1
  os.replace(workdir, f"{workdir}.changed-{n}")
  print(
    f"[reproduce] {label}: moved an unfinished run with other settings to {workdir}.changed-{n}"
  )


def train_or_reuse(label: str, workdir: str, config, record, restart_changed: bool = False) -> dict:
  """A run's result.json: reused when it trained with `config`'s settings (else one line naming the
  keys that differ), or trained now and written. `record(out)` makes the row from the trainer's
  result."""
  from tripletclip_jax.configlib import ConfigError
  from tripletclip_jax.train.experiment import training_source
  from tripletclip_jax.train.loop import train_and_evaluate
  from tripletclip_jax.train.metrics import cpu_model

  done = os.path.join(workdir, "result.json")
  if not os.path.exists(done):
    check_unfinished(label, workdir, config, restart_changed)
  if os.path.exists(done):
    with open(done) as f:
      rec = json.load(f)
    differ = settings_differ(rec.get("config"), config.to_dict())
    if differ:
      raise SystemExit(
        f"error: {done} was trained with other settings ({'; '.join(differ[:3])}"
        f"{'; ...' if len(differ) > 3 else ''}): rerun with those, or use a new --output_dir."
      )
    print(f"[reproduce] {label}: finished earlier with these settings, reused")
    return rec
  t_run = time.perf_counter()
  print(f"[reproduce] {label}: training in {workdir}", flush=True)
  try:
    # The seed's world first (written once, outside the run's folder): a world drawn with other
    # settings is refused before the trainer creates the folder, its lock and checkpoints/.
    training_source(config, workdir)
    out = train_and_evaluate(config, workdir)
  except (ConfigError, ValueError, FileNotFoundError) as e:  # e.g. DIR/data holds another world
    raise SystemExit(f"error: {label}: {e}") from None
  if out.get("stopped"):  # stop_after_steps: the run is unfinished, and so is the study
    print(f"[reproduce] {label}: stopped at step {out['step']}; rerun to resume the study.")
    raise SystemExit(0)
  rec = record(out)
  rec["wall_s"] = round(time.perf_counter() - t_run, 1)
  rec["cpu"] = cpu_model()  # XLA's CPU numerics differ across CPU models: pair runs within one
  rec["config"] = config.to_dict()  # the full settings it trained with
  with open(done + ".tmp", "w") as f:
    json.dump(rec, f, indent=1)
  os.replace(done + ".tmp", done)
  return rec


def parse_args(argv):
  """(args, overrides for every run, overrides for the bases), each checked; one line for a bad
  one."""
  import sys

  from tripletclip_jax import losses as loss_lib
  from tripletclip_jax.configlib import ConfigError, split_overrides

  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--output_dir", required=True)
  p.add_argument(
    "--arms",
    "--losses",
    dest="arms",
    default=",".join(DEFAULT_ARMS),
    help=f"comma-separated arms: any registered loss, or {', '.join(ARMS)}",
  )
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument(
    "--config",
    default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "demo.py"),
  )
  p.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="alias of --config.KEY=VALUE, repeatable",
  )
  p.add_argument(
    "--no_base",
    action="store_true",
    help="train every arm from scratch instead of from the seed's single-object CLIP base",
  )
  p.add_argument(
    "--restart_changed",
    action="store_true",
    help="move an unfinished run whose checkpoint has other settings aside and train it again",
  )
  p.add_argument(
    "--reference", help="an earlier results.json whose seed spread is printed beside this one"
  )
  try:
    argv = sys.argv[1:] if argv is None else list(argv)
    argv, base_overrides = split_overrides(argv, flag="--base.")
    argv, overrides = split_overrides(argv)
  except ConfigError as e:
    raise SystemExit(f"error: {e}") from None
  args = p.parse_args(argv)
  overrides += args.set
  own = [
    f"{flag}{o}"
    for flag, given in (("--config.", overrides), ("--base.", base_overrides))
    for o in given
    if o.partition("=")[0] in OWN_KEYS
  ]
  if own:
    raise SystemExit(
      f"error: {own[0]}: {', '.join(OWN_KEYS)} are set by this script for each run; "
      "use --arms, --seeds, --no_base or --output_dir."
    )
  args.arms = [s.strip() for s in args.arms.split(",") if s.strip()]
  unknown = [n for n in args.arms if n not in loss_lib.REGISTRY and n not in ARMS]
  if unknown or not args.arms:
    raise SystemExit(
      f"error: unknown arm {unknown[0] if unknown else ''!r} in --arms; choose from "
      f"{', '.join([*loss_lib.REGISTRY, *ARMS])}."
    )
  given = args.seeds
  try:
    args.seeds = [int(s) for s in given.split(",") if s.strip()]
  except ValueError:
    args.seeds = []
  if not args.seeds or min(args.seeds) < 0:
    raise SystemExit(
      f"error: --seeds {given.strip() or 'empty'}: give comma-separated non-negative integers, "
      "e.g. 0,1,2."
    )
  if not os.path.exists(args.config):
    raise SystemExit(f"error: --config {args.config} does not exist.")
  return args, overrides, base_overrides


def run_seed(args, seed: int, out_dir: str, overrides, base_overrides) -> tuple[dict | None, list]:
  """Seed `seed`'s world, its CLIP base (unless --no_base) and its arms: (the base's row, the arms'
  rows). The base is trained once and shared by the seed's arms; each arm records its checksum."""
  from tripletclip_jax.configlib import ConfigError

  data_dir = os.path.join(out_dir, "data", f"seed{seed}")
  base = None
  try:
    if not args.no_base:
      config = base_config(args.config, seed, data_dir, overrides, base_overrides)
      workdir = os.path.join(out_dir, "base", f"seed{seed}")
      hf = os.path.join(workdir, "hf")
      base = train_or_reuse(
        f"base seed {seed}",
        workdir,
        config,
        lambda out: dict(study.run_record("base", seed, config, out), checksum=checksum(hf), hf=hf),
      )
    runs = []
    for arm in args.arms:
      config = arm_config(arm, args.config, seed, data_dir, overrides, base and base["hf"])
      rec = train_or_reuse(
        f"{arm} seed {seed}",
        os.path.join(out_dir, "runs", f"{arm}-seed{seed}"),
        config,
        lambda out: dict(
          study.run_record(arm, seed, config, out),
          base={"checksum": base["checksum"], "config": base["config"]} if base else None,
        ),
        args.restart_changed,
      )
      if base and (rec.get("base") or {}).get("checksum") != base["checksum"]:
        raise SystemExit(
          f"error: {arm} seed {seed} started from another base than {base['hf']} (its checksum "
          "differs): delete the arm's run folder to retrain it from this base."
        )
      runs.append(rec)
  except ConfigError as e:
    raise SystemExit(f"error: {e}") from None
  return base, runs


def world_record(out_dir: str, seeds: list[int]) -> tuple[dict, list[dict]]:
  """(results.json's `world`: the parameters and, per seed, what its generator measured; the
  worlds)."""
  from tripletclip_jax.demo import layout

  worlds = []
  for seed in seeds:
    with open(os.path.join(out_dir, "data", f"seed{seed}", layout.WORLD_JSON)) as f:
      worlds.append(json.load(f))
  per_seed = {
    w["world"]["seed"]: {
      "accidental_hard_negatives_per_image": w["accidental_hard_negatives_per_image"],
      "failed_negatives": w["failed_negatives"]["count"] / w["train"],
      "rejected_only_by_per_image": w.get("rejected_only_by_per_image"),
    }
    for w in worlds
  }
  rates = [v["accidental_hard_negatives_per_image"] for v in per_seed.values()]
  record = dict(
    {k: v for k, v in worlds[-1]["world"].items() if k != "seed"},
    accidental_hard_negatives_per_image=float(np.mean(rates)),
    q=worlds[-1]["world"]["failed_negatives"],
    per_seed=per_seed,
  )
  return record, worlds


def print_reference(path: str, summary: dict) -> None:
  """An earlier study's spread beside this one's arms (what `make demo` compares its seed with)."""
  with open(path) as f:
    ref = json.load(f)
  print(f"Reference ({path}), over seeds {sorted({r['seed'] for r in ref['runs']})}:")
  for arm, s in ref["summary"].items():
    if arm in summary:
      sw, b = s["heldout"]["swap_att"], s["heldout"]["binding_mean"]
      print(
        f"  {study.LABELS.get(arm, arm)}: held-out swap_att {sw[0]:.1f} ± {sw[1]:.1f}, "
        f"held-out binding mean {b[0]:.1f} ± {b[1]:.1f}"
      )
  name = study.PRIMARY[0]
  for c in ref.get("analysis", {}).get("contrasts", []):
    if name in c:
      print(
        f"  {study.LABELS.get(c['a'], c['a'])} − {study.LABELS.get(c['b'], c['b'])}, held-out "
        f"swap_att: {c[name]['mean']:+.1f} ± {c[name].get('std', 0):.1f} (per seed: "
        + ", ".join(f"{d[name]:+.1f}" for d in c["per_seed"])
        + f"); {c[name]['verdict']}"
      )
  if "verdict" in ref.get("analysis", {}):
    print(f"  The study's verdict: {ref['analysis']['verdict']}")


def main(argv=None):
  args, overrides, base_overrides = parse_args(argv)
  from absl import flags, logging

  flags.FLAGS.mark_as_parsed()  # Grain reads absl flags; this script parses its own arguments
  logging.set_verbosity(logging.WARNING)  # Orbax and Grain log every file operation at INFO
  from tripletclip_jax.configlib import ConfigError
  from tripletclip_jax.train.config import writers
  from tripletclip_jax.train.startup import use_compilation_cache

  out_dir = os.path.abspath(args.output_dir)
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise SystemExit(f"error: --output_dir {args.output_dir}: {e.strerror}.") from None
  # Runs of one shape compile once: later runs (and later invocations) load the executables (the
  # trainer's rule: OUT/jax_cache, unless JAX_COMPILATION_CACHE_DIR names one).
  use_compilation_cache(None, out_dir)
  t0 = time.perf_counter()
  try:
    first = arm_config("tripletclip", args.config, 0, "", overrides)
  except ConfigError as e:
    raise SystemExit(f"error: {e}") from None
  rule = (
    f"equal {'training FLOPs' if first.compute_rule == 'flops' else 'image-text pairs encoded'} "
    f"(compute_matched={first.compute_matched}, batch {first.batch_size}, TripletCLIP "
    f"{first.total_steps} steps; clip_union_steps: TripletCLIP's steps at batch "
    f"{2 * first.batch_size}); "
    + ("every arm of a seed starts from that seed's CLIP base; " if not args.no_base else "")
    + "the world is drawn from the run's seed"
  )
  bases, runs = [], []
  # Seed-major: each seed's world and base are made once, shared by its arms.
  for seed in args.seeds:
    base, seed_runs = run_seed(args, seed, out_dir, overrides, base_overrides)
    bases += [base] if base else []
    runs += seed_runs

  world, worlds = world_record(out_dir, args.seeds)
  accidental = {s: v["accidental_hard_negatives_per_image"] for s, v in world["per_seed"].items()}
  summary, stats = study.summarize(runs), study.analysis(runs, accidental)
  oracle = study.oracle_summary(worlds) if "oracle" in worlds[0] else None
  cpus = {s: sorted({str(r.get("cpu")) for r in runs if r["seed"] == s}) for s in args.seeds}
  mixed = [s for s, c in cpus.items() if len(c) > 1]
  if mixed:  # the pairing assumes a seed's arms ran alike; rerun such a seed on one machine type
    print(f"[reproduce] warning: seeds {mixed} have arms run on different CPU models: {cpus}")
  results = {
    "runs": runs,
    "bases": bases,
    "world": world,
    "oracle": oracle,
    "rule": rule,
    "summary": summary,
    "base_summary": study.summarize(bases) if bases else None,
    "analysis": stats,
    "cpu_models": cpus,
    "wall_s_this_invocation": round(time.perf_counter() - t0, 1),
  }
  with open(os.path.join(out_dir, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  shown = dict(summary, **({"base": results["base_summary"]["base"]} if bases else {}))
  table = study.markdown(shown, stats, rule, oracle)
  with open(os.path.join(out_dir, "results.md"), "w") as f:
    f.write(table)
  study.bar_chart(summary, os.path.join(out_dir, "results.png"), oracle)
  config = arm_config(args.arms[-1], args.config, args.seeds[-1], "", overrides)
  if "wandb" in writers(config):  # the study as a W&B run of its own: the PNG and the table
    from tripletclip_jax.train.metrics import WandbWriter

    log = WandbWriter(
      out_dir,
      dict(config.wandb.to_dict(), name=config.wandb.name or "reproduce"),
      {"arms": args.arms, "seeds": args.seeds, "rule": rule},
    )
    log.image(0, "results", os.path.join(out_dir, "results.png"))
    rows = [
      [arm, split, *s[split][k][:2]]
      for arm, s in summary.items()
      for split in ("heldout", "seen")
      for k in ("swap_att", "binding_mean", "mean")
    ]
    log.table(0, "results/table", ["arm", "split", "mean", "std"], rows)
    log.close()
  print("\n" + table)
  if args.reference:
    print_reference(args.reference, summary)
  print(
    f"Wrote {out_dir}/results.json, results.md and results.png "
    f"({results['wall_s_this_invocation'] / 60:.1f} min)"
  )


if __name__ == "__main__":
  main()
