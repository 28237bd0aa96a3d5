"""benchmarks/tpu_plan.py with libtpu's compile-only client: the trainer's step compiled for a TPU topology.

Needs the `tpu` extra (`pip install -e ".[tpu]"`); skipped without it, so `make test` does not need libtpu."""

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(
  importlib.util.find_spec("libtpu") is None,
  reason="libtpu is not installed (pip install -e '.[tpu]')",
)


def test_plan_of_the_demo_step_on_a_v5e_slice(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # the plan's devices are the TPU topology's, not fake CPU ones
  r = subprocess.run(
    [
      sys.executable,
      "benchmarks/tpu_plan.py",
      "--config",
      "configs/demo.py",
      "--topology",
      "v5e:2x2",
      "--set",
      "batch_size=16",
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  fields = dict(kv.split("=", 1) for kv in r.stdout.strip().splitlines()[-1].split())
  assert fields["topology"] == "v5e:2x2" and fields["chips"] == "4" and fields["batch"] == "16"
  assert (
    0 < float(fields["mem_gib"]) < 16
    and float(fields["hbm_gib"]) > 0
    and float(fields["roofline_ms"]) > 0
  )
  # Data parallel: the loss all-gathers features and the gradients are all-reduced; the images and their hard
  # negatives stay on the device that holds them (a batch concatenation used to move them with an all-to-all).
  collectives = next(
    line for line in r.stdout.splitlines() if line.startswith("collectives per device")
  )
  assert (
    "all-gather" in collectives and "all-reduce" in collectives and "all-to-all" not in collectives
  )
  assert "HBM traffic by op: " in r.stdout
