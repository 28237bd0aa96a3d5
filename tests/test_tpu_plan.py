"""benchmarks/tpu_plan.py with libtpu's compile-only client: the trainer's step compiled for a TPU
topology.

Needs the `tpu` extra (`pip install -e ".[tpu]"`); skipped without it, so `make test` does not need
libtpu."""

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


def _plan(*args, env=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
  env.pop("XLA_FLAGS", None)  # the plan's devices are the TPU topology's, not fake CPU ones
  r = subprocess.run(
    [sys.executable, "benchmarks/tpu_plan.py", "--config", "configs/demo.py", *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  return r.stdout, dict(kv.split("=", 1) for kv in r.stdout.strip().splitlines()[-1].split())


def test_plan_of_the_demo_step_on_a_v5e_slice():
  out, fields = _plan("--topology", "v5e:2x2", "--set", "batch_size=16")
  assert fields["topology"] == "v5e:2x2" and fields["chips"] == "4" and fields["batch"] == "16"
  assert (
    0 < float(fields["mem_gib"]) < 16
    and float(fields["hbm_gib"]) > 0
    and float(fields["roofline_ms"]) > 0
  )
  # The compiler's estimate: libtpu scores each sliced prefetch -1 s; the plan counts them as free,
  # and agrees with the same step compiled without sliced prefetches.
  assert float(fields["est_ms"]) > 0 and 0 < float(fields["mfu"]) < 1
  _, plain = _plan(
    "--topology",
    "v5e:2x2",
    "--set",
    "batch_size=16",
    env={"LIBTPU_INIT_ARGS": "--xla_tpu_sliced_prefetch_max_slices=1"},
  )
  assert float(plain["est_ms"]) == pytest.approx(float(fields["est_ms"]), rel=0.15)
  # Data parallel: the gradients are all-reduced, at the floor of bytes for this parallelism; the
  # images and their hard negatives stay on the device that holds them (a batch concatenation used
  # to move them with an all-to-all).
  line = next(x for x in out.splitlines() if x.startswith("collectives per device"))
  assert "all-reduce" in line and "all-to-all" not in line
  assert float(fields["sent_mib"]) <= 1.05 * float(fields["floor_mib"])
  assert "HBM traffic by op: " in out and "compiler's estimated cycles by op: " in out


def test_fsdp_plan_gathers_weights_and_reduce_scatters_gradients():
  _, fields = _plan("--topology", "v5e:2x2", "--set", "batch_size=16", "--set", "mesh.fsdp=4")
  assert float(fields["all_gather_mib"]) > 0 and float(fields["reduce_scatter_mib"]) > 0
  assert float(fields["sent_mib"]) <= 1.25 * float(fields["floor_mib"])
