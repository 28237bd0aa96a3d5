"""The demo study's statistics: the table over seeds, the pre-registered contrasts and their
verdicts, the precondition that the baseline has learned what the endpoints presuppose, and the
bag-of-words oracle's row.

`launch/reproduce.py` trains the runs; this module turns their records (`run_record`) into
`results.json`, `results.md` and `results.png`. The endpoints, thresholds and rule are those of
`docs/results/v4/preregistration.md`; changing one here changes what the study claims.
"""

import numpy as np

from tripletclip_jax.demo.layout import BINDING_SUBSETS, scores
from tripletclip_jax.evaluate.sugarcrepe import SUBSETS

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
  "base": "CLIP base (single objects)",
  "oracle": "Bag-of-words oracle",
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
# Endpoints: (name, split, key of the split's scores). The primary is a subset the bag-of-words
# oracle scores 50 on (both captions use the same words); the binding mean is v3's, kept for
# comparison.
PRIMARY = ("heldout_swap_att", "heldout", "swap_att")
SECONDARY = ("heldout_binding", "heldout", "binding_mean")
ENDPOINTS = (PRIMARY, SECONDARY, ("heldout_mean", "heldout", "mean"), ("seen_mean", "seen", "mean"))
# The pre-registered contrasts: arm a - arm b, paired over seeds.
CONTRASTS = (
  ("tripletclip", "clip_union_steps", "primary"),
  ("tripletclip", "clip", "secondary"),
  ("tripletclip", "tripletclip_shuffled", "secondary"),
)
RELATION_SUBSETS = ("replace_rel", "swap_obj")
# The precondition (a baseline that learned objects and attributes, with room above on binding),
# checked on these arms, held-out pairings: each of LEARNED with a mean >= 75 and no seed below 70;
# each of ROOM with a mean <= 70; the world's accidental hard-negative rate <= 0.2 per image.
BASELINES = ("clip", "clip_union_steps")
LEARNED, LEARNED_MEAN, LEARNED_MIN = ("replace_obj", "replace_att"), 75.0, 70.0
ROOM, ROOM_MAX = ("swap_att", "swap_obj", "replace_rel"), 70.0
MAX_ACCIDENTAL = 0.2
# A subset on which the oracle scores above this cannot be a binding endpoint.
ORACLE_LIMIT = 60.0


def run_record(arm: str, seed: int, config, out: dict) -> dict:
  """One row of results.json from `train_and_evaluate`'s result."""
  rec = {
    "arm": arm,
    "loss": config.loss,
    "seed": seed,
    "steps": int(out["step"]),
    "pairs_seen": int(out["pairs_seen"]),
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


def paired_differences(runs: list[dict], a: str, b: str) -> list[dict]:
  """Per seed that has both arms: arm a - arm b on every endpoint."""
  by = {(r["arm"], r["seed"]): r for r in runs}
  seeds = sorted(s for (arm, s) in by if arm == a and (b, s) in by)
  return [
    {
      "seed": s,
      **{name: by[(a, s)][split][key] - by[(b, s)][split][key] for name, split, key in ENDPOINTS},
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
    out.update(std=sd, low=out["mean"] - half, high=out["mean"] + half, half_width=half)
  return out


def verdict(interval: dict, margin: float = 2.0) -> str:
  """The pre-registered rule: supported if the 95% interval lies above 0, refuted if it lies
  entirely below +margin, otherwise inconclusive."""
  if "low" not in interval:
    return "no interval (fewer than 2 seeds)"
  if interval["low"] > 0:
    return "supported"
  if interval["high"] < margin:
    return "refuted"
  return "inconclusive"


def precondition(runs: list[dict], accidental: dict) -> dict:
  """Whether the baselines learned what the endpoints presuppose, with room above on binding.

  `accidental`: {seed: the world's accidental hard negatives per image}. Returns every check with
  its value and the overall `met`; no baseline run means not met.
  """
  checks = []
  for arm in BASELINES:
    rs = [r for r in runs if r["arm"] == arm]
    if not rs:
      checks.append({"check": f"{arm} ran", "value": 0, "ok": False})
      continue
    for k in LEARNED:
      v = [r["heldout"][k] for r in rs]
      checks.append(
        {"check": f"{arm} held-out {k} mean >= {LEARNED_MEAN:g}", "value": float(np.mean(v))}
      )
      checks.append({"check": f"{arm} held-out {k} every seed >= {LEARNED_MIN:g}", "value": min(v)})
    for k in ROOM:
      v = float(np.mean([r["heldout"][k] for r in rs]))
      checks.append({"check": f"{arm} held-out {k} mean <= {ROOM_MAX:g}", "value": v})
  worst = max(accidental.values()) if accidental else float("nan")
  checks.append(
    {"check": f"accidental hard negatives per image <= {MAX_ACCIDENTAL:g}", "value": worst}
  )
  for c in checks:
    if "ok" not in c:
      limit = float(c["check"].rsplit(" ", 1)[1])
      c["ok"] = bool(c["value"] <= limit if "<=" in c["check"] else c["value"] >= limit)
  return {"met": all(c["ok"] for c in checks), "checks": checks}


def analysis(runs: list[dict], accidental: dict) -> dict:
  """The pre-registered endpoints: each contrast's paired differences with 95% t-intervals and
  verdicts (primary: held-out swap_att; secondary: the held-out binding mean), the precondition, the
  study's verdict, and each arm's relation subsets against chance (50)."""
  arms = set(r["arm"] for r in runs)
  pre = precondition(runs, accidental)
  out = {"precondition": pre, "contrasts": [], "relations": {}}
  for a, b, role in CONTRASTS:
    if a in arms and b in arms:
      diffs = paired_differences(runs, a, b)
      c = {"a": a, "b": b, "role": role, "per_seed": diffs}
      for name, _, _ in (PRIMARY, SECONDARY):
        iv = t_interval([d[name] for d in diffs])
        c[name] = dict(iv, verdict=verdict(iv))
      out["contrasts"].append(c)
  primary = [c for c in out["contrasts"] if c["role"] == "primary"]
  if not pre["met"]:
    out["verdict"] = "not testable (the precondition is not met)"
  else:
    out["verdict"] = primary[0][PRIMARY[0]]["verdict"] if primary else "no primary contrast"
  for arm in sorted(arms):
    rs = [r for r in runs if r["arm"] == arm]
    out["relations"][arm] = {
      f"{split}/{k}": t_interval([r[split][k] - 50.0 for r in rs])
      for split in ("heldout", "seen")
      for k in RELATION_SUBSETS
    }
  return out


def oracle_summary(worlds: list[dict]) -> dict:
  """{split: {subset: {oracle: mean % over the worlds}}} from the worlds' `world.json` →
  `oracle`."""
  first = worlds[0]["oracle"]
  return {
    split: {
      subset: {
        o: float(np.mean([w["oracle"][split][subset][o] for w in worlds]))
        for o in first[split][subset]
      }
      for subset in SUBSETS
    }
    for split in first
  }


def _interval_cell(iv: dict) -> str:
  if "low" not in iv:
    return f"{iv['mean']:+.1f}"
  return f"{iv['mean']:+.1f} ± {iv['std']:.1f} [{iv['low']:+.1f}, {iv['high']:+.1f}]"


def markdown(summary: dict, stats: dict, rule: str, oracle: dict | None = None) -> str:
  """results.md: the arms' tables (with the oracle row), the precondition, the contrasts,
  relations."""
  cell = lambda m: f"{m[0]:.1f} ± {m[1]:.1f}" if m[2] > 1 else f"{m[0]:.1f}"  # noqa: E731
  name = lambda arm: LABELS.get(arm, arm)  # noqa: E731
  lines = []
  for split, title in (("heldout", "Held-out colour-shape pairings"), ("seen", "Seen pairings")):
    lines += [
      f"**{title}**, accuracy % (mean ± std over seeds; chance 50):",
      "",
      "| Arm | seeds | " + " | ".join(n for _, n in COLUMNS) + " | Binding mean | Mean |",
      "|---|---|" + "---|" * (len(COLUMNS) + 2),
    ]
    for arm, s in summary.items():
      row = [cell(s[split][k]) for k, _ in COLUMNS]
      row += [cell(s[split]["binding_mean"]), cell(s[split]["mean"])]
      lines.append(f"| {name(arm)} | {s[split]['mean'][2]} | " + " | ".join(row) + " |")
    if oracle and split in oracle:
      o = oracle[split]
      vals = [o[k]["bow"] for k, _ in COLUMNS]
      binding = np.mean([o[k]["bow"] for k in BINDING_SUBSETS])
      lines.append(
        f"| {name('oracle')} | - | "
        + " | ".join(f"{v:.1f}" for v in vals)
        + f" | {binding:.1f} | {np.mean(vals):.1f} |"
      )
    lines.append("")
  lines += [
    "**Held-out triplets** (x, y, x', y'): text / image / group score %:",
    "",
    "| Arm | Text | Image | Group |",
    "|---|---|---|---|",
  ]
  for arm, s in summary.items():
    lines.append(
      f"| {name(arm)} | "
      + " | ".join(cell(s["triplet_heldout"][k]) for k in ("text", "image", "group"))
      + " |"
    )
  lines += ["", f"Binding mean: {', '.join(BINDING_SUBSETS)}. Comparability rule: {rule}.", ""]
  pre = stats.get("precondition")
  if pre:
    lines += [
      f"**Precondition** ({', '.join(BASELINES)}, held-out pairings): "
      f"{'met' if pre['met'] else 'NOT met'}.",
      "",
      "| Check | Value | OK |",
      "|---|---|---|",
    ]
    lines += [
      f"| {c['check']} | {c['value']:.2f} | {'yes' if c['ok'] else 'no'} |" for c in pre["checks"]
    ]
    lines.append("")
  if stats["contrasts"]:
    lines += [
      "Paired differences (points; mean ± std over seeds, 95% t-interval; rule: supported if the "
      "interval lies above 0, refuted if it lies entirely below +2, else inconclusive):",
      "",
      "| Contrast | Role | Seeds | Held-out swap_att | Verdict | Held-out binding mean | Verdict | "
      "Per seed (swap_att) |",
      "|---|---|---|---|---|---|---|---|",
    ]
    for c in stats["contrasts"]:
      p, s = c[PRIMARY[0]], c[SECONDARY[0]]
      lines.append(
        f"| {name(c['a'])} − {name(c['b'])} | {c['role']} | {p['n']} | {_interval_cell(p)} | "
        f"{p['verdict']} | {_interval_cell(s)} | {s['verdict']} | "
        + ", ".join(f"{d[PRIMARY[0]]:+.1f}" for d in c["per_seed"])
        + " |"
      )
    lines += ["", f"**Verdict** (primary endpoint, by the rule): {stats['verdict']}.", ""]
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


def bar_chart(summary: dict, path: str, oracle: dict | None = None) -> None:
  """results.png: each arm's subsets (mean ± std over seeds), held-out and seen; the oracle as
  ticks."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  keys = [k for k, _ in COLUMNS] + ["binding_mean", "mean"]
  names = [n for _, n in COLUMNS] + ["Binding mean", "Mean"]
  fig, axes = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
  width = 0.8 / max(len(summary), 1)
  for ax, split, title in zip(axes, ("heldout", "seen"), ("held-out pairings", "seen pairings")):
    for i, (arm, s) in enumerate(summary.items()):
      x = np.arange(len(keys)) + (i - (len(summary) - 1) / 2) * width
      ax.bar(
        x,
        [s[split][k][0] for k in keys],
        width,
        yerr=[s[split][k][1] for k in keys],
        capsize=2,
        label=LABELS.get(arm, arm),
      )
    if oracle and split in oracle:
      o = [oracle[split][k]["bow"] for k, _ in COLUMNS]
      o += [np.mean([oracle[split][k]["bow"] for k in BINDING_SUBSETS]), np.mean(o)]
      ax.scatter(np.arange(len(keys)), o, marker="_", s=600, color="black", label=LABELS["oracle"])
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    ax.set_ylim(40, 100)
    ax.set_ylabel("accuracy %")
    ax.set_title(f"Demo world, SugarCrepe-style, {title} (mean ± std over seeds)")
  axes[1].set_xticks(np.arange(len(keys)), names, rotation=20)
  axes[0].legend(ncol=min(len(summary) + 1, 4), fontsize=8, loc="upper left")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
