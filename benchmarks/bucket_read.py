"""Record reads from a bucket vs a local disk: ranged GETs through gcsfs against a storage server.

  python benchmarks/bucket_read.py [--num_examples 256] [--threads 1,16] [--rounds 3]

Writes shards of 512 px JPEG pairs, copies them into an in-memory fake-gcs-server (the tests'
storage server) on a loopback port, then reads every record through `sources.ShardSource` (what
Grain's read threads call) with a thread pool, alternating local and gs:// in each round. On
loopback there is no network latency: this measures the client's own cost per GET, a lower bound for
real GCS, where each GET adds tens of milliseconds that only more threads (or gcsfuse) hide. Ends
with one `key=value` line.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))

from storage_server import client_env, start_server  # noqa: E402 - tools/storage_server.py
from input_pipeline import photo_like_jpeg  # noqa: E402


def main():
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--num_examples", type=int, default=256)
  p.add_argument("--threads", default="1,16")
  p.add_argument("--rounds", type=int, default=3)
  a = p.parse_args()
  server, url = start_server(tempfile.mkdtemp(), buckets=("bench-bucket",))
  os.environ.update(client_env(url))
  from tripletclip_jax import fileio
  from tripletclip_jax.data import records, sources

  try:
    rng = np.random.default_rng(0)
    local = tempfile.mkdtemp()
    path = os.path.join(local, records.shard_name("bench", 0, 1))
    with records.ShardWriter(path) as w:
      for i in range(a.num_examples):
        w.write(
          {
            "key": f"k{i}",
            "image": photo_like_jpeg(rng),
            "caption": "a photo",
            "neg_image": photo_like_jpeg(rng),
            "neg_caption": "another photo",
          }
        )
    mb = os.path.getsize(path) / 2**20
    fileio.upload(local, "gs://bench-bucket/shards")
    results = {}
    for threads in [int(t) for t in a.threads.split(",")]:
      for where, pattern in (("local", local), ("gcs", "gs://bench-bucket/shards")):
        results.setdefault((where, threads), [])
      for _ in range(a.rounds):
        for where, pattern in (("local", local), ("gcs", "gs://bench-bucket/shards")):
          src = sources.ShardSource(records.resolve_shards(pattern))
          t = time.perf_counter()
          with ThreadPoolExecutor(threads) as pool:
            got = list(pool.map(src.__getitem__, range(len(src))))
          results[(where, threads)].append(len(src) / (time.perf_counter() - t))
          assert all(g[1] is not None for g in got)
    fields = {"num_examples": a.num_examples, "shard_mb": round(mb, 1)}
    for (where, threads), v in results.items():
      med = statistics.median(v)
      print(
        f"{where:5s} threads={threads:3d}: {med:8.1f} records/s (median of {len(v)}: "
        f"{', '.join(f'{x:.0f}' for x in v)})"
      )
      fields[f"{where}_t{threads}_rec_s"] = round(med, 1)
    for threads in [int(t) for t in a.threads.split(",")]:
      fields[f"gcs_over_local_t{threads}"] = round(
        fields[f"gcs_t{threads}_rec_s"] / fields[f"local_t{threads}_rec_s"], 3
      )
    print(" ".join(f"{k}={v}" for k, v in fields.items()))
  finally:
    server.terminate()


if __name__ == "__main__":
  main()
