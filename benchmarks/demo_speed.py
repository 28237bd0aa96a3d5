"""A demo run, before and after issue 19's speed work: streaming decode vs the in-memory set +
compile cache.

  python benchmarks/demo_speed.py [--rounds 2] [--steps 500] [--loss tripletclip]

Both variants train configs/demo.py (same model, world, seed and steps) on one world drawn once into
a temporary folder, each run in a fresh process through launch/main.py, alternating A and B every
round:

  A  data.in_memory=False, no persistent compilation cache (the demo before issue 19) B
  data.in_memory=True, JAX's persistent compilation cache (warmed by one run first, as every run of
     launch/reproduce.py after the first finds it)

Reports per variant the median wall time of a whole run (compile, training, evaluation), the
training throughput in image-text pairs encoded per second and the fraction of each step spent
waiting for data (medians of the logged values, the first log interval left out). Ends with one
`key=value` line.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(workdir: str, data_dir: str, steps: int, loss: str, in_memory: bool, cache: str | None):
  env = dict(os.environ)
  if cache:
    env.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  args = [
    sys.executable,
    os.path.join(ROOT, "launch/main.py"),
    f"--config={os.path.join(ROOT, 'configs/demo.py')}:{loss}",
    f"--workdir={workdir}",
    f"--config.total_steps={steps}",
    f"--config.data.source.dir={data_dir}",
    f"--config.data.in_memory={in_memory}",
    "--config.export_hf_dir=",
    "--config.progress_bar=False",
  ]
  t0 = time.perf_counter()
  subprocess.run(args, check=True, capture_output=True, env=env, cwd=ROOT)
  wall = time.perf_counter() - t0
  logs = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  logs = [r for r in logs if "examples_per_s" in r][1:]  # the first interval holds the compile
  return {
    "wall_s": wall,
    "pairs_per_s": statistics.median(r["examples_per_s"] for r in logs) * PAIRS[loss],
    "data_wait": statistics.median(r["data_wait_fraction"] for r in logs),
  }


PAIRS = {"tripletclip": 2, "clip": 1}  # image-text pairs encoded per example


def main():
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--steps", type=int, default=500)
  p.add_argument("--loss", default="tripletclip", choices=sorted(PAIRS))
  args = p.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    data, cache = os.path.join(tmp, "data"), os.path.join(tmp, "jax_cache")
    # draws the world, fills the cache
    run(os.path.join(tmp, "warm"), data, args.steps, args.loss, True, cache)
    out = {"A": [], "B": []}
    for r in range(args.rounds):
      for name, in_memory, c in (("A", False, None), ("B", True, cache)):
        res = run(os.path.join(tmp, f"{name}{r}"), data, args.steps, args.loss, in_memory, c)
        out[name].append(res)
        print(
          f"round {r} {name}: {res['wall_s']:.1f} s, {res['pairs_per_s']:.0f} pairs/s, "
          f"data wait {res['data_wait']:.3f}",
          flush=True,
        )
  med = {n: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for n, rs in out.items()}
  from tripletclip_jax.train.metrics import cpu_model

  cpu = cpu_model()
  print(
    f"cpu={cpu.replace(' ', '_')} loss={args.loss} steps={args.steps} rounds={args.rounds} "
    f"a_wall_s={med['A']['wall_s']:.1f} b_wall_s={med['B']['wall_s']:.1f} "
    f"a_pairs_per_s={med['A']['pairs_per_s']:.0f} b_pairs_per_s={med['B']['pairs_per_s']:.0f} "
    f"a_data_wait={med['A']['data_wait']:.3f} b_data_wait={med['B']['data_wait']:.3f} "
    f"wall_speedup={med['A']['wall_s'] / med['B']['wall_s']:.2f} "
    f"pairs_per_s_ratio={med['B']['pairs_per_s'] / med['A']['pairs_per_s']:.2f}"
  )


if __name__ == "__main__":
  main()
