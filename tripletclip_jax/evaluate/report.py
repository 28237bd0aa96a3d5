"""Writes evaluation results: results.json, a markdown table and one PNG bar chart per task."""

import json
import os
import tempfile


def _numeric(d: dict) -> dict:
  return {k: v for k, v in d.items() if isinstance(v, float)}


def to_markdown(results: dict, model: str) -> str:
  lines = [f"# Evaluation of {model}", ""]
  for task, metrics in results.items():
    lines += [f"## {task}", "", "| metric | value |", "|---|---|"]
    lines += [
      f"| {k} | {v:.2f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()
    ]
    lines.append("")
  return "\n".join(lines)


def bar_chart(task: str, metrics: dict, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  values = _numeric(metrics)
  fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(values) + 1), 3.2))
  bars = ax.bar(list(values), list(values.values()), color="#4878cf")
  ax.bar_label(bars, fmt="%.1f", fontsize=8)
  ax.set_ylim(0, 105)
  ax.set_ylabel("%")
  ax.set_title(task)
  ax.tick_params(axis="x", labelrotation=30, labelsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write(results: dict, output: str, model: str) -> list[str]:
  """results {task: {metric: value}} -> output (JSON) plus OUTPUT_STEM.md and OUTPUT_STEM_TASK.png
  beside it.

  A gs:// `output` is written locally, then uploaded.
  """
  from tripletclip_jax import fileio

  if fileio.is_remote(output):
    with tempfile.TemporaryDirectory() as tmp:
      local = write(results, os.path.join(tmp, os.path.basename(output)), model)
      remote = [fileio.join(os.path.dirname(output), os.path.basename(p)) for p in local]
      for a, b in zip(local, remote):
        fileio.upload(a, b)
    return remote
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  with open(output, "w") as f:
    json.dump(results, f, indent=2)
  stem = os.path.splitext(output)[0]
  written = [output, stem + ".md"]
  with open(stem + ".md", "w") as f:
    f.write(to_markdown(results, model))
  for task, metrics in results.items():
    png = f"{stem}_{task}.png"
    bar_chart(task, metrics, png)
    written.append(png)
  return written


def training_table(results: dict, evaluators) -> str:
  """The trainer's closing summary: SugarCrepe-type results as a markdown table, then one line per
  other evaluator with its percentages."""
  from tripletclip_jax.evaluate.sugarcrepe import SUBSETS

  cols = (*SUBSETS, "mean")
  rows = [
    f"| {ev.name} | "
    + " | ".join(f"{results.get(f'eval/{ev.name}/{c}', float('nan')):5.1f}" for c in cols)
    + " |"
    for ev in evaluators
    if ev.type == "sugarcrepe"
  ]
  lines = (
    ["| benchmark | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1), *rows]
    if rows
    else []
  )
  for ev in evaluators:
    if ev.type != "sugarcrepe":
      mine = {k.split("/")[-1]: v for k, v in results.items() if k.startswith(f"eval/{ev.name}/")}
      lines.append(
        f"{ev.name}: "
        + ", ".join(
          f"{k} {v:.1f}"
          for k, v in mine.items()
          if isinstance(v, float) and not k.startswith("skipped")
        )
      )
  return "\n".join(lines)
