"""Train-step throughput, achieved FLOP/s, MFU and peak memory.

  python benchmarks/train_step.py --preset vit_b32 --info
  python benchmarks/train_step.py --preset vit_b32 --batch_size 16 --compare open_clip

MFU is measured against the matmul peak this script measures on the current
backend in the same dtype. With --compare open_clip the same TripletCLIP step
(two forward passes, the same loss, AdamW, the same batch) runs in open_clip
in the same process, alternating with ours, and the ratio of medians is
printed. Ends with one `key=value` line.
"""

import argparse
import math
import os
import resource
import statistics
import time

import jax
import numpy as np


from tripletclip_jax import losses as loss_lib  # noqa: E402
from tripletclip_jax import sharding  # noqa: E402
from tripletclip_jax.data.tokenizer import EOT_ID, SOT_ID  # noqa: E402
from tripletclip_jax.models import forward_flops, get_preset, init_params, train_flops_per_example  # noqa: E402
from tripletclip_jax.train.config import optimizer_config
from tripletclip_jax.train import create_train_state, make_optimizer, make_train_step  # noqa: E402
from tripletclip_jax.train.step import with_loss_params  # noqa: E402
from tripletclip_jax.train.metrics import measure_matmul_peak  # noqa: E402


def make_batch(cfg, n: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  size, ctx = cfg.vision.image_size, cfg.text.context_length

  def text():
    t = rng.integers(1, 49000, size=(n, ctx)).astype(np.int32)
    t[:, 0] = SOT_ID
    t[:, -1] = EOT_ID
    return t

  return {
    "image": rng.normal(size=(n, size, size, 3)).astype(np.float32),
    "neg_image": rng.normal(size=(n, size, size, 3)).astype(np.float32),
    "text": text(),
    "neg_text": text(),
  }


class OpenClipStep:
  """open_clip's model doing the released TripletCLIP step: two forward passes, AdamW."""

  def __init__(self, batch: dict, lr: float = 5e-4):
    import open_clip
    import torch

    torch.set_num_threads(os.cpu_count())
    self.torch = torch
    self.model = open_clip.create_model("ViT-B-32")
    self.model.train()
    self.opt = torch.optim.AdamW(
      self.model.parameters(), lr=lr, weight_decay=0.5, betas=(0.9, 0.999), eps=1e-8
    )
    to = lambda x: torch.from_numpy(np.ascontiguousarray(x))
    self.batch = {
      "image": to(batch["image"].transpose(0, 3, 1, 2)),
      "neg_image": to(batch["neg_image"].transpose(0, 3, 1, 2)),
      "text": to(batch["text"]).long(),
      "neg_text": to(batch["neg_text"]).long(),
    }

  def _negclip(self, x, y, yn, s):
    F = self.torch.nn.functional
    labels = self.torch.arange(x.shape[0])
    i2t = s * self.torch.cat([x @ y.T, x @ yn.T], dim=1)
    return 0.5 * (F.cross_entropy(i2t, labels) + F.cross_entropy(s * y @ x.T, labels))

  def __call__(self):
    b = self.batch
    x, y, s = self.model(b["image"], b["text"])
    xn, yn, _ = self.model(b["neg_image"], b["neg_text"])
    loss = self._negclip(x, y, yn, s) + self._negclip(xn, yn, y, s)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    return float(loss)


def peak_memory_bytes() -> int:
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"])
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # CPU: the process's max RSS


def _arguments():
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--preset", default="vit_b32")
  p.add_argument("--loss", default="tripletclip")
  p.add_argument("--batch_size", type=int, default=16)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--remat", action="store_true")
  p.add_argument("--accum_steps", type=int, default=1)
  p.add_argument("--mesh", default="-1,1", help="data,fsdp sizes; -1 fills")
  p.add_argument("--steps", type=int, default=5, help="timed steps per round")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--compare", choices=["open_clip"], default=None)
  p.add_argument("--info", action="store_true", help="print parameter count and FLOPs, then exit")
  return p.parse_args()


def _info(args, cfg, flops_ex: float) -> None:
  """Parameters (the towers plus the loss's own, the count OpenAI quotes) and FLOPs, without a
  step."""
  fwd = forward_flops(cfg)
  shapes = jax.eval_shape(
    lambda r: with_loss_params(init_params(cfg, r), loss_lib.get(args.loss)), jax.random.key(0)
  )
  n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
  print(
    f"{args.preset}: {n_params:,} parameters; forward GFLOPs per pair {fwd['pair'] / 1e9:.2f} "
    f"(image {fwd['image'] / 1e9:.2f} + text {fwd['text'] / 1e9:.2f}); "
    f"{args.loss} training GFLOPs per example {flops_ex / 1e9:.1f}"
  )
  print(
    f"params={n_params} fwd_gflops_per_pair={fwd['pair'] / 1e9:.3f} fwd_gflops_image={fwd['image'] / 1e9:.3f} "
    f"fwd_gflops_text={fwd['text'] / 1e9:.3f} train_gflops_per_example={flops_ex / 1e9:.2f}"
  )


def _our_step(args, cfg):
  """(step, state, the device batch, the host batch) on the --mesh."""
  data, fsdp = (int(x) for x in args.mesh.split(","))
  mesh = sharding.make_mesh(data, fsdp)
  sharding.check_batch_divides(args.batch_size, mesh)
  tx, schedule = make_optimizer(
    optimizer_config(learning_rate=5e-4, warmup_steps=10, weight_decay=0.5), 1000
  )
  state, state_sh = create_train_state(cfg, tx, mesh, jax.random.key(0), loss_lib.get(args.loss))
  step = make_train_step(
    cfg, tx, schedule, loss_lib.get(args.loss), mesh, state_sh, args.accum_steps
  )
  host_batch = make_batch(cfg, args.batch_size)
  return step, state, sharding.put_batch(host_batch, mesh), host_batch


def _rounds(args, step, state, batch, theirs):
  """(our seconds per step, open_clip's, the last metrics) over --rounds rounds, alternating."""
  ours_t, theirs_t = [], []
  for _ in range(args.rounds):
    t = time.perf_counter()
    for _ in range(args.steps):
      state, m = step(state, batch)
    jax.block_until_ready(m)
    ours_t.append((time.perf_counter() - t) / args.steps)
    if theirs:
      t = time.perf_counter()
      for _ in range(args.steps):
        theirs()
      theirs_t.append((time.perf_counter() - t) / args.steps)
  return ours_t, theirs_t, m


def main():
  args = _arguments()
  cfg = get_preset(args.preset, dtype=args.dtype, remat=args.remat)
  flops_ex = train_flops_per_example(cfg, loss_lib.get(args.loss))
  if args.info:
    return _info(args, cfg, flops_ex)
  peak = measure_matmul_peak(args.dtype)
  step, state, batch, host_batch = _our_step(args, cfg)
  t = time.perf_counter()
  state, m = step(state, batch)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t
  theirs = OpenClipStep(host_batch) if args.compare else None
  if theirs:
    theirs()  # warm-up
  ours_t, theirs_t, m = _rounds(args, step, state, batch, theirs)

  step_s = statistics.median(ours_t)
  n_chips = len(jax.devices())
  ex_s = args.batch_size / step_s
  achieved = ex_s * flops_ex
  result = {
    "backend": jax.default_backend(),
    "devices": n_chips,
    "preset": args.preset,
    "loss": args.loss,
    "dtype": args.dtype,
    "batch_size": args.batch_size,
    "step_s": f"{step_s:.4f}",
    "examples_per_s": f"{ex_s:.3f}",
    "tflops_per_s": f"{achieved / 1e12:.4f}",
    "matmul_peak_tflops_per_s": f"{peak / 1e12:.4f}",
    "mfu": f"{achieved / (peak * n_chips):.3f}",
    "peak_memory_gb": f"{peak_memory_bytes() / 2**30:.2f}",
    "compile_s": f"{compile_s:.1f}",
    "loss_value": f"{float(m['loss']):.4f}",
  }
  print(
    f"ours: {ex_s:.2f} examples/s, {achieved / 1e9:.1f} GFLOP/s, MFU {result['mfu']} "
    f"(matmul peak {peak / 1e9:.1f} GFLOP/s), rounds {[f'{t:.3f}' for t in ours_t]}"
  )
  if theirs:
    their_ex_s = args.batch_size / statistics.median(theirs_t)
    result["open_clip_examples_per_s"] = f"{their_ex_s:.3f}"
    result["ratio_vs_open_clip"] = f"{ex_s / their_ex_s:.3f}"
    print(
      f"open_clip: {their_ex_s:.2f} examples/s, {their_ex_s * flops_ex / 1e9:.1f} GFLOP/s, "
      f"rounds {[f'{t:.3f}' for t in theirs_t]}; ratio ours/open_clip {ex_s / their_ex_s:.3f}"
    )
  print(" ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
  main()
