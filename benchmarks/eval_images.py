"""Evaluation images read from a bucket: one at a time vs the evaluators' thread pool, with added
latency.

  python benchmarks/eval_images.py [--num_images 200] [--latency_ms 20] [--threads 1,16] [--rounds 3]

Uploads `num_images` small PNGs (SugarCrepe-like: one file per image) to an in-memory
fake-gcs-server (the tests' storage server) and reads them back with `image_ops.try_load_all`, the
call every evaluator makes, through the tests' proxy, which adds `latency_ms` to every request (a
stand-in for the round trip to GCS, which loopback does not have). Thread counts alternate in each
round; medians are quoted. Ends with one `key=value` line.
"""

import argparse
import io
import os
import statistics
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))

from fault_proxy import FaultProxy  # noqa: E402 - tools/fault_proxy.py, here adding latency only
from storage_server import client_env, start_server  # noqa: E402 - tools/storage_server.py


def main():
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--num_images", type=int, default=200)
  p.add_argument("--latency_ms", type=float, default=20.0)
  p.add_argument("--threads", default="1,16")
  p.add_argument("--rounds", type=int, default=3)
  a = p.parse_args()
  server, url = start_server(tempfile.mkdtemp(), buckets=("bench-bucket",))
  proxy = FaultProxy(url).set(latency_s=a.latency_ms / 1000)
  os.environ.update(client_env(proxy.url))
  from tripletclip_jax import fileio
  from tripletclip_jax.data import image_ops

  try:
    rng = np.random.default_rng(0)
    local = tempfile.mkdtemp()
    for i in range(a.num_images):
      buf = io.BytesIO()
      Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(buf, "PNG")
      with open(os.path.join(local, f"{i:05d}.png"), "wb") as f:
        f.write(buf.getvalue())
    proxy.set(latency_s=0)  # uploads at loopback speed
    fileio.upload(local, "gs://bench-bucket/images")
    proxy.set(latency_s=a.latency_ms / 1000)
    paths = [f"gs://bench-bucket/images/{i:05d}.png" for i in range(a.num_images)]
    counts = [int(t) for t in a.threads.split(",")]
    rates = {t: [] for t in counts}
    for _ in range(a.rounds):
      for threads in counts:
        t0 = time.perf_counter()
        got = image_ops.try_load_all(paths, threads=threads)
        rates[threads].append(len(paths) / (time.perf_counter() - t0))
        assert all(why is None for _, why in got)
    fields = {"num_images": a.num_images, "latency_ms": a.latency_ms}
    for threads, v in rates.items():
      med = statistics.median(v)
      print(
        f"threads={threads:3d}: {med:8.1f} images/s (median of {len(v)}: {', '.join(f'{x:.1f}' for x in v)})"
      )
      fields[f"t{threads}_images_s"] = round(med, 1)
    fields[f"speedup_t{counts[-1]}_over_t{counts[0]}"] = round(
      fields[f"t{counts[-1]}_images_s"] / fields[f"t{counts[0]}_images_s"], 2
    )
    print(" ".join(f"{k}={v}" for k, v in fields.items()))
  finally:
    proxy.close()
    server.terminate()


if __name__ == "__main__":
  main()
