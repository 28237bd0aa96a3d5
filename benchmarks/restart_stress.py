"""A kill mid-checkpoint in a bucket under faults, then a restart: many cycles, other fault seeds
and kill points.

  python benchmarks/restart_stress.py [--cycles 20] [--total_steps 6]

One storage server (tools/storage_server.py) behind the fault proxy (tools/fault_proxy.py), at the
rates of the tests' faulty bucket: 5% of requests answered 503 or 429, dropped after the server
acted, or delayed. First an uninterrupted run on the local disk, the reference. Then each cycle c,
in a fresh workdir in the bucket with the proxy drawing faults from seed c: `launch/main.py` runs
until the first object of checkpoint K appears (K drawn from the checkpoint steps but the last),
waits a delay drawn from [0, 1.5) s and is SIGKILLed; then it is started again, and must exit 0 with
losses equal to the reference's bit for bit. A cycle that fails prints its command's last lines.
Ends with one line `cycles=N clean=M ...`.
"""

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from fault_proxy import FaultProxy  # noqa: E402 - tools/fault_proxy.py
from storage_server import client_env, start_server  # noqa: E402 - tools/storage_server.py

FAULTS = dict(unavailable=0.02, rate_limited=0.01, drop=0.01, delay=0.01, delay_s=0.5)


def _overrides(data: str, total_steps: int) -> list[str]:
  kv = {
    "batch_size": 16,
    "total_steps": total_steps,
    "compute_matched": False,
    "log_every_steps": 1,
    "checkpoint_every_steps": 2,
    "eval_every_steps": 1000,
    "export_hf_dir": "",
    "progress_bar": False,
    "data.source.dir": data,
    "data.source.num_train": 96,
    "data.source.num_eval": 6,
    "data.source.num_base": 0,
    "data.source.world_seed": 0,
  }
  return [f"--config.{k}={v}" for k, v in kv.items()]


def _start(workdir: str, args: list[str], env: dict) -> subprocess.Popen:
  cmd = [sys.executable, "launch/main.py", "--config", "configs/demo.py", "--workdir", workdir]
  return subprocess.Popen(
    cmd + args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )


def _losses(workdir: str) -> dict:
  from tripletclip_jax.train.metrics import read_metrics

  return {s: r["loss"] for s, r in read_metrics(workdir).items() if "loss" in r}


def main():
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--cycles", type=int, default=20)
  p.add_argument("--total_steps", type=int, default=6)
  a = p.parse_args()
  cpu = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
  server, url = start_server(tempfile.mkdtemp(), buckets=("stress",))
  proxy = FaultProxy(url.removeprefix("http://"))
  os.environ.update(client_env(url))  # this process uploads and reads around the proxy
  from tripletclip_jax import fileio
  from tripletclip_jax.demo import world

  try:
    local = tempfile.mkdtemp()
    world.write_demo_data(f"{local}/data", num_train=96, num_eval=6, seed=0, num_shards=2)
    fileio.upload(f"{local}/data", "gs://stress/data")
    ref = _start(
      f"{local}/ref", _overrides(f"{local}/data", a.total_steps), dict(os.environ, **cpu)
    )
    out = ref.communicate()[0]
    assert ref.returncode == 0, out[-3000:]
    want = _losses(f"{local}/ref")
    env = dict(os.environ, **cpu, **client_env(proxy.url))
    args = _overrides("gs://stress/data", a.total_steps)
    clean, seconds, resumed_from = 0, [], []
    for c in range(a.cycles):
      rng = random.Random(c)
      proxy.set(seed=c, **FAULTS)
      workdir = f"gs://stress/run{c}"
      k = rng.choice(range(2, a.total_steps, 2))
      delay = rng.uniform(0, 1.5)
      t = time.time()
      run = _start(workdir, args, env)
      while not fileio.glob(f"{workdir}/checkpoints/{k}*/*") and run.poll() is None:
        time.sleep(0.1)
      time.sleep(delay)
      run.send_signal(signal.SIGKILL)
      run.wait()
      again = _start(workdir, args, env)
      out = again.communicate()[0]
      seconds.append(time.time() - t)
      ok = again.returncode == 0 and _losses(workdir) == want
      resumed = [ln for ln in out.splitlines() if ln.startswith("Resumed from step")]
      resumed_from.append(resumed[0].split()[3] if resumed else "-")
      clean += ok
      print(
        f"cycle {c}: kill {delay:.2f} s after checkpoint {k} began; resumed from "
        f"{resumed_from[-1]}; {'clean' if ok else 'FAILED'} ({seconds[-1]:.0f} s)",
        flush=True,
      )
      if not ok:
        print("\n".join(out.splitlines()[-15:]), flush=True)
    injected = {k: v for k, v in proxy.counts.items() if k != "forwarded"}
    print(
      f"cycles={a.cycles} clean={clean} total_steps={a.total_steps} "
      f"median_cycle_s={sorted(seconds)[len(seconds) // 2]:.1f} "
      + " ".join(f"{k}={v}" for k, v in injected.items())
      + f" forwarded={proxy.counts['forwarded']}"
    )
  finally:
    proxy.close()
    server.terminate()


if __name__ == "__main__":
  main()
