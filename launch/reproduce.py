"""The paper's SugarCrepe comparison in miniature: every loss x seeds on the demo world, in one command.

  python launch/reproduce.py --output_dir runs/reproduce                  # 5 losses x seeds 0,1,2
  python launch/reproduce.py --output_dir runs/demo --losses clip,tripletclip --seeds 0 \
      --reference docs/results/reproduce.json                              # `make demo`
  python launch/reproduce.py --output_dir runs/big --seeds 0,1,2,3,4 --config.model.preset=tiny \
      --config.total_steps=2000 --config.data.demo_num_train=5000          # scaled up

Every run trains configs/demo.py (or --config) with one loss and one seed on
the same world, which is generated once into DIR/data. Seeds change the model's
initialisation and the data order, never the world. Baselines are compute
matched: every run encodes as many image-text pairs as TripletCLIP
(compute_rule=pairs; `--config.compute_rule=flops` matches training FLOPs).
`--config.KEY=VALUE` overrides the config of every run, typed and checked as
launch/main.py does (`--set KEY=VALUE` is an alias); the loss, the seed and
the world's folder are this script's to set.
A finished run (DIR/runs/LOSS-seedS/result.json, which records the settings it
trained with) is reused when those equal the requested ones, so a killed
reproduction resumes; otherwise the script stops naming the keys that differ.
An unfinished run resumes from its checkpoint.

Writes DIR/results.json, DIR/results.md (the paper's table layout, mean +- std
over seeds) and DIR/results.png (bars with the std as error bars), and prints
the paired per-seed difference TripletCLIP - CLIP.
"""

import argparse
import json
import os
import time

import numpy as np

from tripletclip_jax.demo import BINDING_SUBSETS, scores

DEFAULT_LOSSES = ("clip", "clip_union", "negclip", "negimage", "tripletclip")
LABELS = {
  "clip": "CLIP",
  "clip_union": "CLIP on real + negatives",
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
OWN_KEYS = ("loss", "seed", "data.demo_data_dir")


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


def run_record(loss: str, seed: int, config, out: dict) -> dict:
  """One row of results.json from `train_and_evaluate`'s result."""
  from tripletclip_jax import losses

  rec = {
    "loss": loss,
    "seed": seed,
    "steps": int(out["step"]),
    "pairs_seen": int(out["step"] * config.batch_size * losses.get(loss).pairs_per_example),
  }
  return dict(rec, **scores(out))


def summarize(runs: list[dict]) -> dict:
  """{loss: {split: {key: [mean, std, n]}}} over seeds (std with ddof=1; 0 for one seed)."""
  out = {}
  for loss in dict.fromkeys(r["loss"] for r in runs):
    rs = [r for r in runs if r["loss"] == loss]
    out[loss] = {}
    for split in ("heldout", "seen", "triplet_heldout"):
      keys = rs[0][split].keys()
      vals = {k: np.asarray([r[split][k] for r in rs]) for k in keys}
      out[loss][split] = {
        k: [float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)]
        for k, v in vals.items()
      }
  return out


def paired_differences(runs: list[dict], a: str = "tripletclip", b: str = "clip") -> list[dict]:
  """Per seed, a - b on the held-out binding mean, the held-out mean and the seen mean."""
  by = {(r["loss"], r["seed"]): r for r in runs}
  seeds = sorted(s for (loss, s) in by if loss == a and (b, s) in by)
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


def markdown(summary: dict, diffs: list[dict], rule: str) -> str:
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
  for loss, s in summary.items():
    lines.append(
      f"| {LABELS.get(loss, loss)} | "
      + " | ".join(cell(s["triplet_heldout"][k]) for k in ("text", "image", "group"))
      + " |"
    )
  lines += ["", f"Binding mean: {', '.join(BINDING_SUBSETS)}. Comparability rule: {rule}.", ""]
  if diffs:
    lines += [
      "Paired per-seed difference TripletCLIP − CLIP (points):",
      "",
      "| Seed | Held-out binding mean | Held-out mean | Seen mean |",
      "|---|---|---|---|",
    ]
    lines += [
      f"| {d['seed']} | {d['heldout_binding']:+.1f} | {d['heldout_mean']:+.1f} | {d['seen_mean']:+.1f} |"
      for d in diffs
    ]
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
  axes[0].legend(ncol=len(summary), fontsize=8, loc="upper left")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--output_dir", required=True)
  p.add_argument("--losses", default=",".join(DEFAULT_LOSSES))
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
      "use --losses, --seeds or --output_dir."
    )
  from tripletclip_jax import losses as loss_lib

  names = [s.strip() for s in args.losses.split(",") if s.strip()]
  unknown = [n for n in names if n not in loss_lib.REGISTRY]
  if unknown:
    raise SystemExit(
      f"error: unknown loss {unknown[0]!r} in --losses; choose from {', '.join(loss_lib.REGISTRY)}."
    )
  try:
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  except ValueError:
    raise SystemExit(
      f"error: --seeds {args.seeds!r}: give comma-separated integers, e.g. 0,1,2."
    ) from None
  if not os.path.exists(args.config):
    raise SystemExit(f"error: --config {args.config} does not exist.")

  from absl import flags, logging

  flags.FLAGS.mark_as_parsed()  # Grain reads absl flags; this script parses its own arguments
  logging.set_verbosity(logging.WARNING)  # Orbax and Grain log every file operation at INFO
  from tripletclip_jax.train.config import apply_overrides, load_config_file, writers
  from tripletclip_jax.train.loop import train_and_evaluate

  out_dir = os.path.abspath(args.output_dir)
  data_dir = os.path.join(out_dir, "data")
  t0 = time.perf_counter()
  runs, rule = [], ""
  for loss in names:
    for seed in seeds:
      config = load_config_file(args.config, loss)
      try:
        apply_overrides(
          config,
          [f"seed={seed}", f"data.demo_data_dir={data_dir}", "progress_bar=False", *overrides],
        )
      except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
      rule = (
        f"equal {'training FLOPs' if config.compute_rule == 'flops' else 'image-text pairs encoded'} "
        f"(compute_matched={config.compute_matched}, batch {config.batch_size}, TripletCLIP "
        f"{config.total_steps} steps)"
      )
      workdir = os.path.join(out_dir, "runs", f"{loss}-seed{seed}")
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
        print(f"[reproduce] {loss} seed {seed}: finished earlier with these settings, reused")
        continue
      t_run = time.perf_counter()
      print(f"[reproduce] {loss} seed {seed}: training in {workdir}", flush=True)
      rec = run_record(loss, seed, config, train_and_evaluate(config, workdir))
      rec["wall_s"] = round(time.perf_counter() - t_run, 1)
      rec["config"] = config.to_dict()  # the full settings it trained with
      with open(done + ".tmp", "w") as f:
        json.dump(rec, f, indent=1)
      os.replace(done + ".tmp", done)
      runs.append(rec)

  from tripletclip_jax.demo import layout

  with open(os.path.join(data_dir, layout.WORLD_JSON)) as f:
    world = json.load(f)
  summary, diffs = summarize(runs), paired_differences(runs)
  results = {
    "runs": runs,
    "world": world["world"],
    "rule": rule,
    "summary": summary,
    "tripletclip_minus_clip": diffs,
    "wall_s_this_invocation": round(time.perf_counter() - t0, 1),
  }
  with open(os.path.join(out_dir, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  table = markdown(summary, diffs, rule)
  with open(os.path.join(out_dir, "results.md"), "w") as f:
    f.write(table)
  bar_chart(summary, os.path.join(out_dir, "results.png"))
  if "wandb" in writers(config):  # the study as a W&B run of its own: the PNG and the table
    from tripletclip_jax.train.metrics import WandbWriter

    study = WandbWriter(
      out_dir,
      dict(config.wandb.to_dict(), name=config.wandb.name or "reproduce"),
      {"losses": names, "seeds": seeds, "rule": rule},
    )
    study.image(0, "results", os.path.join(out_dir, "results.png"))
    rows = [
      [loss, split, *s[split][k][:2]]
      for loss, s in summary.items()
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
    for loss, s in ref["summary"].items():
      if loss in summary:
        b, m = s["heldout"]["binding_mean"], s["heldout"]["mean"]
        print(
          f"  {LABELS.get(loss, loss)}: held-out binding mean {b[0]:.1f} ± {b[1]:.1f}, "
          f"held-out mean {m[0]:.1f} ± {m[1]:.1f}"
        )
    d = np.asarray([x["heldout_binding"] for x in ref["tripletclip_minus_clip"]])
    if len(d):
      print(
        f"  TripletCLIP − CLIP, held-out binding mean: {d.mean():+.1f} ± {d.std(ddof=1) if len(d) > 1 else 0:.1f}"
        f" (per seed: {', '.join(f'{x:+.1f}' for x in d)})"
      )
  print(
    f"Wrote {out_dir}/results.json, results.md and results.png "
    f"({results['wall_s_this_invocation'] / 60:.1f} min)"
  )


if __name__ == "__main__":
  main()
