"""The paper's SugarCrepe comparison in miniature: every arm x seeds on the demo world, in one command.

  python launch/reproduce.py --output_dir runs/study_v3 --seeds 0,1,2,3,4,5,6,7   # the pre-registered study
  python launch/reproduce.py --output_dir runs/demo --arms clip,tripletclip --seeds 0   # `make demo`
  python launch/reproduce.py --output_dir runs/big --seeds 0,1,2,3,4 --config.model.preset=tiny \
      --config.total_steps=2000 --config.data.demo_num_train=5000          # scaled up

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
compiled executables through JAX's persistent cache in DIR/jax_cache.

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

from tripletclip_jax.demo import BINDING_SUBSETS, scores

DEFAULT_ARMS = (
  "clip",
  "clip_union",
  "clip_union_steps",
  "negclip",
  "negimage",
  "tripletclip",
  "tripletclip_shuffled",
)
# An arm is a loss and what the arm changes of the config. Every registered loss is an arm of itself.
# clip_union_steps: TripletCLIP's step count, with a batch of 2B union pairs (equal steps and pairs);
# tripletclip_shuffled: every x' and y' from another item (the extra data, without the pairing).
ARMS = {
  "clip_union_steps": (
    "clip_union",
    {"batch_size": lambda c: 2 * c.batch_size, "compute_matched": lambda c: False},
  ),
  "tripletclip_shuffled": ("tripletclip", {"data.partners": lambda c: "shuffled"}),
}
LABELS = {
  "clip": "CLIP",
  "clip_union": "CLIP on real + negatives",
  "clip_union_steps": "CLIP on real + negatives, equal steps",
  "tripletclip_shuffled": "TripletCLIP, shuffled partners",
  "negclip": "NegCLIP",
  "negimage": "NegImage",
  "siglip": "SigLIP",
  "negsiglip": "NegSigLIP",
  "tripletsiglip": "TripletSigLIP",
  "tripletclip": "TripletCLIP",
}
# The paper's SugarCrepe column order: replace, swap, add.
COLUMNS = (
  ("replace_obj", "Replace obj"),
  ("replace_att", "Replace att"),
  ("replace_rel", "Replace rel"),
  ("swap_obj", "Swap obj"),
  ("swap_att", "Swap att"),
  ("add_obj", "Add obj"),
  ("add_att", "Add att"),
)


# Set by this script for each run: an override would train every run alike and mislabel the table.
OWN_KEYS = ("loss", "seed", "data.demo_data_dir", "data.demo_world_seed", "data.partners")


# Settings that say how a run was driven, never what it trained or how it was scored.
DRIVING = (
  "progress_bar",
  "data.demo_data_dir",
  "data.num_workers",
  "data.read_threads",
  "distributed",
  "writers",
  "wandb",
  "peak_tflops_per_chip",
  "keep_checkpoints",
  "log_every_steps",
  "checkpoint_every_steps",
  "profile_steps",
  "preempted_exit_code",
)


def settings_differ(saved: dict | None, now: dict) -> list[str]:
  """'key saved -> now' for every setting of a finished run that differs from the requested one (all of
  them, when the run recorded none)."""
  from tripletclip_jax.train.config import config_changes

  if saved is None:
    return ["the run recorded no settings (an older reproduce.py)"]
  return config_changes(saved, now, DRIVING)


def arm_config(arm: str, config_file: str, seed: int, data_dir: str, overrides: list[str]):
  """The config an arm trains with for `seed`: the loss's config, the user's overrides, then the arm's."""
  from tripletclip_jax.train.config import apply_overrides, load_config_file

  loss, changes = ARMS.get(arm, (arm, {}))
  config = load_config_file(config_file, loss)
  apply_overrides(
    config, [f"seed={seed}", f"data.demo_data_dir={data_dir}", "progress_bar=False", *overrides]
  )
  apply_overrides(config, [f"{k}={fn(config)}" for k, fn in changes.items()])
  return config


def run_record(arm: str, seed: int, config, out: dict) -> dict:
  """One row of results.json from `train_and_evaluate`'s result."""
  from tripletclip_jax import losses

  rec = {
    "arm": arm,
    "loss": config.loss,
    "seed": seed,
    "steps": int(out["step"]),
    "pairs_seen": int(out["step"] * config.batch_size * losses.get(config.loss).pairs_per_example),
  }
  return dict(rec, **scores(out))


def summarize(runs: list[dict]) -> dict:
  """{arm: {split: {key: [mean, std, n]}}} over seeds (std with ddof=1; 0 for one seed)."""
  out = {}
  for arm in dict.fromkeys(r["arm"] for r in runs):
    rs = [r for r in runs if r["arm"] == arm]
    out[arm] = {}
    for split in ("heldout", "seen", "triplet_heldout"):
      keys = rs[0][split].keys()
      vals = {k: np.asarray([r[split][k] for r in rs]) for k in keys}
      out[arm][split] = {
        k: [float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)]
        for k, v in vals.items()
      }
  return out


def paired_differences(runs: list[dict], a: str = "tripletclip", b: str = "clip") -> list[dict]:
  """Per seed, arm a - arm b on the held-out binding mean, the held-out mean and the seen mean."""
  by = {(r["arm"], r["seed"]): r for r in runs}
  seeds = sorted(s for (arm, s) in by if arm == a and (b, s) in by)
  return [
    {
      "seed": s,
      **{
        k: by[(a, s)][split][key] - by[(b, s)][split][key]
        for k, split, key in (
          ("heldout_binding", "heldout", "binding_mean"),
          ("heldout_mean", "heldout", "mean"),
          ("seen_mean", "seen", "mean"),
        )
      },
    }
    for s in seeds
  ]


def t_interval(values, level: float = 0.95) -> dict:
  """Mean, std and the two-sided Student t interval of the mean (ddof 1); no interval for n < 2."""
  from scipy import stats

  v = np.asarray(values, np.float64)
  out = {"n": len(v), "mean": float(v.mean()) if len(v) else float("nan")}
  if len(v) > 1:
    sd = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1)) * sd / np.sqrt(len(v))
    out.update(std=sd, low=out["mean"] - half, high=out["mean"] + half)
  return out


# The pre-registered contrasts (docs/results/preregistration.md): arm a - arm b, paired over seeds.
CONTRASTS = (
  ("tripletclip", "clip_union_steps", "primary"),
  ("tripletclip", "clip", "secondary"),
  ("tripletclip", "tripletclip_shuffled", "secondary"),
)
RELATION_SUBSETS = ("replace_rel", "swap_obj")


def verdict(interval: dict, margin: float = 2.0) -> str:
  """The pre-registered rule: supported if the 95% interval lies above 0, refuted if it lies entirely
  below +margin, otherwise inconclusive."""
  if "low" not in interval:
    return "no interval (fewer than 2 seeds)"
  if interval["low"] > 0:
    return "supported"
  if interval["high"] < margin:
    return "refuted"
  return "inconclusive"


def analysis(runs: list[dict]) -> dict:
  """The pre-registered endpoints: each contrast's paired differences on the held-out binding mean with
  its 95% t-interval and verdict, and each arm's relation subsets against chance (50)."""
  arms = set(r["arm"] for r in runs)
  out = {"contrasts": [], "relations": {}}
  for a, b, role in CONTRASTS:
    if a in arms and b in arms:
      diffs = paired_differences(runs, a, b)
      iv = t_interval([d["heldout_binding"] for d in diffs])
      out["contrasts"].append(
        {"a": a, "b": b, "role": role, "per_seed": diffs, **iv, "verdict": verdict(iv)}
      )
  for arm in sorted(arms):
    rs = [r for r in runs if r["arm"] == arm]
    out["relations"][arm] = {
      f"{split}/{k}": t_interval([r[split][k] - 50.0 for r in rs])
      for split in ("heldout", "seen")
      for k in RELATION_SUBSETS
    }
  return out


def markdown(summary: dict, stats: dict, rule: str) -> str:
  cell = lambda m: f"{m[0]:.1f} ± {m[1]:.1f}" if m[2] > 1 else f"{m[0]:.1f}"  # noqa: E731
  lines = []
  for split, title in (("heldout", "Held-out colour-shape pairings"), ("seen", "Seen pairings")):
    lines += [
      f"**{title}**, accuracy % (mean ± std over seeds; chance 50):",
      "",
      "| Loss | seeds | " + " | ".join(name for _, name in COLUMNS) + " | Binding mean | Mean |",
      "|---|---|" + "---|" * (len(COLUMNS) + 2),
    ]
    for loss, s in summary.items():
      row = [cell(s[split][k]) for k, _ in COLUMNS] + [
        cell(s[split]["binding_mean"]),
        cell(s[split]["mean"]),
      ]
      lines.append(
        f"| {LABELS.get(loss, loss)} | {s[split]['mean'][2]} | " + " | ".join(row) + " |"
      )
    lines.append("")
  lines += [
    "**Held-out triplets** (x, y, x', y'): text / image / group score %:",
    "",
    "| Loss | Text | Image | Group |",
    "|---|---|---|---|",
  ]
  for arm, s in summary.items():
    lines.append(
      f"| {LABELS.get(arm, arm)} | "
      + " | ".join(cell(s["triplet_heldout"][k]) for k in ("text", "image", "group"))
      + " |"
    )
  lines += ["", f"Binding mean: {', '.join(BINDING_SUBSETS)}. Comparability rule: {rule}.", ""]
  name = lambda arm: LABELS.get(arm, arm)  # noqa: E731
  if stats["contrasts"]:
    lines += [
      "Paired differences on the held-out binding mean (points; 95% t-interval over seeds; rule: "
      "supported if the interval lies above 0, refuted if it lies entirely below +2, else "
      "inconclusive):",
      "",
      "| Contrast | Endpoint | Seeds | Mean ± std | 95% interval | Verdict | Per seed |",
      "|---|---|---|---|---|---|---|",
    ]
    for c in stats["contrasts"]:
      iv = f"[{c['low']:+.1f}, {c['high']:+.1f}]" if "low" in c else "-"
      lines.append(
        f"| {name(c['a'])} − {name(c['b'])} | {c['role']} | {c['n']} | {c['mean']:+.1f} ± "
        f"{c.get('std', 0.0):.1f} | {iv} | {c['verdict']} | "
        + ", ".join(f"{d['heldout_binding']:+.1f}" for d in c["per_seed"])
        + " |"
      )
    lines.append("")
  lines += [
    "Relations against chance (accuracy − 50, points; mean and 95% t-interval over seeds):",
    "",
    "| Arm | "
    + " | ".join(f"{k} ({split})" for split in ("heldout", "seen") for k in RELATION_SUBSETS)
    + " |",
    "|---|" + "---|" * (2 * len(RELATION_SUBSETS)),
  ]
  for arm, rel in stats["relations"].items():
    cells = [
      f"{v['mean']:+.1f} [{v['low']:+.1f}, {v['high']:+.1f}]" if "low" in v else f"{v['mean']:+.1f}"
      for v in rel.values()
    ]
    lines.append(f"| {name(arm)} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def bar_chart(summary: dict, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  keys = [k for k, _ in COLUMNS] + ["binding_mean", "mean"]
  names = [n for _, n in COLUMNS] + ["Binding mean", "Mean"]
  fig, axes = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
  width = 0.8 / max(len(summary), 1)
  for ax, split, title in zip(axes, ("heldout", "seen"), ("held-out pairings", "seen pairings")):
    for i, (loss, s) in enumerate(summary.items()):
      x = np.arange(len(keys)) + (i - (len(summary) - 1) / 2) * width
      ax.bar(
        x,
        [s[split][k][0] for k in keys],
        width,
        yerr=[s[split][k][1] for k in keys],
        capsize=2,
        label=LABELS.get(loss, loss),
      )
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    ax.set_ylim(40, 100)
    ax.set_ylabel("accuracy %")
    ax.set_title(f"Demo world, SugarCrepe-style, {title} (mean ± std over seeds)")
  axes[1].set_xticks(np.arange(len(keys)), names, rotation=20)
  axes[0].legend(ncol=min(len(summary), 4), fontsize=8, loc="upper left")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
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
    "--reference", help="an earlier results.json whose seed spread is printed beside this one"
  )
  import sys
  from tripletclip_jax.train.config import ConfigError, split_overrides

  try:
    argv, overrides = split_overrides(sys.argv[1:] if argv is None else list(argv))
  except ConfigError as e:
    raise SystemExit(f"error: {e}") from None
  args = p.parse_args(argv)
  overrides += args.set
  own = [o for o in overrides if o.partition("=")[0] in OWN_KEYS]
  if own:
    raise SystemExit(
      f"error: --config.{own[0]}: {', '.join(OWN_KEYS)} are set by this script for each run; "
      "use --arms, --seeds or --output_dir."
    )
  from tripletclip_jax import losses as loss_lib

  names = [s.strip() for s in args.arms.split(",") if s.strip()]
  unknown = [n for n in names if n not in loss_lib.REGISTRY and n not in ARMS]
  if unknown:
    raise SystemExit(
      f"error: unknown arm {unknown[0]!r} in --arms; choose from {', '.join([*loss_lib.REGISTRY, *ARMS])}."
    )
  try:
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  except ValueError:
    raise SystemExit(
      f"error: --seeds {args.seeds!r}: give comma-separated integers, e.g. 0,1,2."
    ) from None
  if not os.path.exists(args.config):
    raise SystemExit(f"error: --config {args.config} does not exist.")

  import jax
  from absl import flags, logging

  flags.FLAGS.mark_as_parsed()  # Grain reads absl flags; this script parses its own arguments
  logging.set_verbosity(logging.WARNING)  # Orbax and Grain log every file operation at INFO
  from tripletclip_jax.train.config import writers
  from tripletclip_jax.train.loop import train_and_evaluate
  from tripletclip_jax.train.metrics import cpu_model

  out_dir = os.path.abspath(args.output_dir)
  # Runs of one shape compile once: later runs (and later invocations) load the executables.
  jax.config.update("jax_compilation_cache_dir", os.path.join(out_dir, "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  t0 = time.perf_counter()
  runs, config = [], None
  try:
    base = arm_config("tripletclip", args.config, 0, "", overrides)
  except ConfigError as e:
    raise SystemExit(f"error: {e}") from None
  rule = (
    f"equal {'training FLOPs' if base.compute_rule == 'flops' else 'image-text pairs encoded'} "
    f"(compute_matched={base.compute_matched}, batch {base.batch_size}, TripletCLIP "
    f"{base.total_steps} steps; clip_union_steps: TripletCLIP's steps at batch "
    f"{2 * base.batch_size}); the world is drawn from the run's seed"
  )
  for seed in seeds:  # seed-major: each seed's world is drawn once and shared by its arms
    data_dir = os.path.join(out_dir, "data", f"seed{seed}")
    for arm in names:
      try:
        config = arm_config(arm, args.config, seed, data_dir, overrides)
      except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
      workdir = os.path.join(out_dir, "runs", f"{arm}-seed{seed}")
      done = os.path.join(workdir, "result.json")
      if os.path.exists(done):
        with open(done) as f:
          rec = json.load(f)
        differ = settings_differ(rec.get("config"), config.to_dict())
        if differ:
          raise SystemExit(
            f"error: {done} was trained with other settings ({'; '.join(differ[:3])}"
            f"{'; ...' if len(differ) > 3 else ''}): rerun with those, or use a new --output_dir."
          )
        runs.append(rec)
        print(f"[reproduce] {arm} seed {seed}: finished earlier with these settings, reused")
        continue
      t_run = time.perf_counter()
      print(f"[reproduce] {arm} seed {seed}: training in {workdir}", flush=True)
      try:
        out = train_and_evaluate(config, workdir)
      except (ValueError, FileNotFoundError) as e:  # e.g. DIR/data holds a world drawn otherwise
        raise SystemExit(f"error: {arm} seed {seed}: {e}") from None
      rec = run_record(arm, seed, config, out)
      rec["wall_s"] = round(time.perf_counter() - t_run, 1)
      rec["cpu"] = cpu_model()  # XLA's CPU numerics differ across CPU models: pair runs within one
      rec["config"] = config.to_dict()  # the full settings it trained with
      with open(done + ".tmp", "w") as f:
        json.dump(rec, f, indent=1)
      os.replace(done + ".tmp", done)
      runs.append(rec)

  from tripletclip_jax.demo import layout

  worlds = {}
  for seed in seeds:
    with open(os.path.join(out_dir, "data", f"seed{seed}", layout.WORLD_JSON)) as f:
      w = json.load(f)
    worlds[seed] = {
      "accidental_hard_negatives_per_image": w["accidental_hard_negatives_per_image"],
      "failed_negatives": w["failed_negatives"]["count"] / w["train"],
    }
  world = dict(
    {k: v for k, v in w["world"].items() if k != "seed"},
    accidental_hard_negatives_per_image=float(
      np.mean([v["accidental_hard_negatives_per_image"] for v in worlds.values()])
    ),
    q=w["world"]["failed_negatives"],
    per_seed=worlds,
  )
  summary, stats = summarize(runs), analysis(runs)
  cpus = {s: sorted({str(r.get("cpu")) for r in runs if r["seed"] == s}) for s in seeds}
  mixed = [s for s, c in cpus.items() if len(c) > 1]
  if mixed:  # the pairing assumes a seed's arms ran alike; rerun such a seed on one machine type
    print(f"[reproduce] warning: seeds {mixed} have arms run on different CPU models: {cpus}")
  results = {
    "runs": runs,
    "world": world,
    "rule": rule,
    "summary": summary,
    "analysis": stats,
    "cpu_models": cpus,
    "tripletclip_minus_clip": paired_differences(runs),
    "wall_s_this_invocation": round(time.perf_counter() - t0, 1),
  }
  with open(os.path.join(out_dir, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  table = markdown(summary, stats, rule)
  with open(os.path.join(out_dir, "results.md"), "w") as f:
    f.write(table)
  bar_chart(summary, os.path.join(out_dir, "results.png"))
  if "wandb" in writers(config):  # the study as a W&B run of its own: the PNG and the table
    from tripletclip_jax.train.metrics import WandbWriter

    study = WandbWriter(
      out_dir,
      dict(config.wandb.to_dict(), name=config.wandb.name or "reproduce"),
      {"arms": names, "seeds": seeds, "rule": rule},
    )
    study.image(0, "results", os.path.join(out_dir, "results.png"))
    rows = [
      [arm, split, *s[split][k][:2]]
      for arm, s in summary.items()
      for split in ("heldout", "seen")
      for k in ("binding_mean", "mean")
    ]
    study.table(0, "results/table", ["loss", "split", "mean", "std"], rows)
    study.close()
  print("\n" + table)
  if args.reference:
    with open(args.reference) as f:
      ref = json.load(f)
    print(f"Reference ({args.reference}), over seeds {sorted({r['seed'] for r in ref['runs']})}:")
    for arm, s in ref["summary"].items():
      if arm in summary:
        b, m = s["heldout"]["binding_mean"], s["heldout"]["mean"]
        print(
          f"  {LABELS.get(arm, arm)}: held-out binding mean {b[0]:.1f} ± {b[1]:.1f}, "
          f"held-out mean {m[0]:.1f} ± {m[1]:.1f}"
        )
    for c in ref.get("analysis", {}).get("contrasts", []):
      print(
        f"  {LABELS.get(c['a'], c['a'])} − {LABELS.get(c['b'], c['b'])}, held-out binding mean: "
        f"{c['mean']:+.1f} ± {c.get('std', 0):.1f} (per seed: "
        + ", ".join(f"{d['heldout_binding']:+.1f}" for d in c["per_seed"])
        + f"); {c['verdict']}"
      )
  print(
    f"Wrote {out_dir}/results.json, results.md and results.png "
    f"({results['wall_s_this_invocation'] / 60:.1f} min)"
  )


if __name__ == "__main__":
  main()
