"""What checkpoint verification costs: the save-time checksum and the restore-time check, for a real
train state.

  python benchmarks/checkpoint_verify.py --preset vit_b32 --repeats 3

Builds the train state (parameters + AdamW moments) of `--preset`, then alternates, in one process:
a plain Orbax save vs. a save with the checksum (what the trainer does), and a plain restore vs. a
restore followed by `checkpoint.verify`. Reports medians and the overhead ratios. Ends with one
`key=value` line.
"""

import argparse
import os
import shutil
import statistics
import tempfile
import time

import jax
import orbax.checkpoint as ocp


from tripletclip_jax import losses as loss_lib  # noqa: E402
from tripletclip_jax import sharding  # noqa: E402
from tripletclip_jax.models import get_preset  # noqa: E402
from tripletclip_jax import checkpoint  # noqa: E402
from tripletclip_jax.train.config import optimizer_config
from tripletclip_jax.train import create_train_state, make_optimizer  # noqa: E402


def main():
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--preset", default="vit_b32")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
  a = p.parse_args()
  cfg = get_preset(a.preset)
  tx, _ = make_optimizer(optimizer_config(learning_rate=1e-3, warmup_steps=1), 10)
  mesh = sharding.make_mesh(-1, 1)
  state, shardings = create_train_state(
    cfg, tx, mesh, jax.random.key(0), loss_lib.get("tripletclip")
  )
  n_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  abstract = jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
  )
  checkpoint.checksums(state)  # compile once, outside the timings
  root = a.dir or tempfile.mkdtemp()
  times = {k: [] for k in ("save", "save_checksum", "restore", "restore_verify", "checksum")}
  try:
    for r in range(a.repeats):
      for kind in ("save", "save_checksum"):  # alternate A and B within each repeat
        path = os.path.join(root, f"{kind}-{r}")
        t = time.perf_counter()
        meta = {"checksums": checkpoint.checksums(state)} if kind == "save_checksum" else {}
        with ocp.StandardCheckpointer() as ck:
          ck.save(path, state)
        times[kind].append(time.perf_counter() - t)
      path = os.path.join(root, f"save-{r}")
      for kind in ("restore", "restore_verify"):
        t = time.perf_counter()
        with ocp.StandardCheckpointer() as ck:
          restored = ck.restore(path, abstract)
        if kind == "restore_verify":
          checkpoint.verify(restored, meta["checksums"], 0)
        jax.block_until_ready(restored)
        times[kind].append(time.perf_counter() - t)
        del restored
      t = time.perf_counter()
      checkpoint.checksums(state)
      times["checksum"].append(time.perf_counter() - t)
  finally:
    if a.dir is None:
      shutil.rmtree(root, ignore_errors=True)
  med = {k: statistics.median(v) for k, v in times.items()}
  for k, v in times.items():
    print(f"{k:15s} median {med[k]:7.2f} s  ({', '.join(f'{x:.2f}' for x in v)})")
  print(
    f"preset={a.preset} state_gb={n_bytes / 1e9:.2f} backend={jax.default_backend()} repeats={a.repeats} "
    f"checksum_s={med['checksum']:.3f} save_s={med['save']:.2f} save_checksum_s={med['save_checksum']:.2f} "
    f"save_overhead={med['save_checksum'] / med['save']:.3f} restore_s={med['restore']:.2f} "
    f"restore_verify_s={med['restore_verify']:.2f} "
    f"restore_overhead={med['restore_verify'] / med['restore']:.3f}"
  )


if __name__ == "__main__":
  main()
