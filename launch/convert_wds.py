"""Converts webdataset tar shards (.image/.neg_image/.caption/.neg_caption) into TripletData shards.

  python launch/convert_wds.py --input '/data/tripletclip_hq/*.tar' --output_dir /data/tripletdata [--num_workers 8]
  python launch/convert_wds.py --input 'gs://BUCKET/hq/*.tar' --output_dir gs://BUCKET/tripletdata

One output shard per tar, written atomically; rerunning skips shards that are
already complete, so a killed conversion resumes. Incomplete samples are
skipped, counted and listed in the summary.
"""

import argparse
import json
import multiprocessing
import os
import sys


from tripletclip_jax import fileio
from tripletclip_jax.data import records, wds


def _convert(job):
  tar, out = job
  return wds.convert_tar(tar, out)


def main(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--input", required=True, help="glob or comma-separated list of .tar shards")
  p.add_argument("--output_dir", required=True)
  p.add_argument("--name", default="train", help="output shard prefix")
  p.add_argument("--num_workers", type=int, default=max(1, os.cpu_count() or 1))
  args = p.parse_args(argv)
  tars = sorted(t for part in args.input.split(",") for t in fileio.glob(part.strip()))
  if not tars:
    sys.exit(f"error: no tar shards match {args.input!r}")
  if not fileio.is_remote(args.output_dir):
    os.makedirs(args.output_dir, exist_ok=True)
  outs = [
    fileio.join(args.output_dir, records.shard_name(args.name, i, len(tars)))
    for i in range(len(tars))
  ]
  jobs = [(t, o) for t, o in zip(tars, outs) if not fileio.exists(o)]
  print(f"{len(tars)} tars; {len(tars) - len(jobs)} already converted; converting {len(jobs)}")
  results = []
  # spawn, not fork: a gcsfs client (used above for gs:// paths) must not cross a fork
  with multiprocessing.get_context("spawn").Pool(min(args.num_workers, max(len(jobs), 1))) as pool:
    from tqdm import tqdm

    for r in tqdm(
      pool.imap_unordered(_convert, jobs),
      total=len(jobs),
      unit="shard",
      disable=not sys.stderr.isatty(),
    ):
      results.append(r)
      if r["skipped"]:
        print(
          f"{r['tar']}: skipped {r['skipped']} incomplete samples, e.g. {r['skipped_keys'][:3]}"
        )
  counts = [len(records.load_index(o)) for o in outs]
  records.write_manifest(
    args.output_dir, args.name, outs, counts, tool="launch/convert_wds.py", inputs=tars
  )
  summary = {
    "shards": len(outs),
    "examples": sum(counts),
    "skipped_now": sum(r["skipped"] for r in results),
  }
  fileio.write_bytes(
    fileio.join(args.output_dir, "convert_summary.json"),
    json.dumps({**summary, "per_tar": results}, indent=1).encode(),
  )
  print(" ".join(f"{k}={v}" for k, v in summary.items()))


if __name__ == "__main__":
  main()
