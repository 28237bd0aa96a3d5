"""Train-step throughput, achieved FLOP/s, MFU, peak memory, and where the time to the first step
goes.

  python benchmarks/train_step.py --preset vit_b32 --info
  python benchmarks/train_step.py --preset vit_b32 --batch_size 16 --compare open_clip
  python benchmarks/train_step.py --preset vit_b32 --dtype bfloat16 --batch_size 1024 \
      --compare open_clip,open_clip_compiled          # on a GPU

MFU is measured against the matmul peak this script measures on the current backend in the same
dtype. With --compare, open_clip's ViT-B-32 does the same TripletCLIP step (two forward passes, the
same loss, AdamW) in the same process on the same kind of device (the GPU when JAX runs on one; with
--dtype bfloat16, under bf16 autocast as open_clip's `--precision amp_bf16`; fused AdamW on a GPU;
`open_clip_compiled` adds `torch.compile`), alternating rounds with ours, and the ratio of medians is
printed. Both sides draw their batch on their device once: no host copy is timed. Ends with one
`key=value` line.
"""

import time

STARTED = time.perf_counter()  # the start-up breakdown counts the imports from here

import argparse  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from tripletclip_jax import losses as loss_lib  # noqa: E402
from tripletclip_jax import sharding  # noqa: E402
from tripletclip_jax.data.tokenizer import EOT_ID, SOT_ID  # noqa: E402
from tripletclip_jax.models import forward_flops, get_preset, init_params, train_flops_per_example  # noqa: E402
from tripletclip_jax.train import create_train_state, make_optimizer, make_train_step  # noqa: E402
from tripletclip_jax.train.config import optimizer_config  # noqa: E402
from tripletclip_jax.train.metrics import measure_matmul_peak  # noqa: E402
from tripletclip_jax.train.startup import StartupClock  # noqa: E402
from tripletclip_jax.train.step import with_loss_params  # noqa: E402

COMPARE = ("open_clip", "open_clip_compiled")


def device_batch(cfg, n: int, mesh, seed: int = 0) -> dict:
  """A random global batch drawn on the devices in its sharding: float32 images [n, S, S, 3] ~ N(0,
  1) and token ids [n, L] between a start and an end token."""
  size, ctx = cfg.vision.image_size, cfg.text.context_length

  def draw(key):
    ki, kn, kt, knt = jax.random.split(key, 4)

    def text(k):
      t = jax.random.randint(k, (n, ctx), 1, 49000, jnp.int32)
      return t.at[:, 0].set(SOT_ID).at[:, -1].set(EOT_ID)

    return {
      "image": jax.random.normal(ki, (n, size, size, 3), jnp.float32),
      "neg_image": jax.random.normal(kn, (n, size, size, 3), jnp.float32),
      "text": text(kt),
      "neg_text": text(knt),
    }

  return jax.jit(draw, out_shardings=sharding.batch_sharding(mesh))(jax.random.key(seed))


class OpenClipStep:
  """open_clip's ViT-B-32 doing the released TripletCLIP step (two forward passes, AdamW) on
  `device` ("cpu" or "cuda"), in bf16 autocast for `dtype="bfloat16"`, optionally torch.compiled."""

  def __init__(self, n: int, device: str, dtype: str, compiled: bool, lr: float = 5e-4):
    import open_clip
    import torch

    if device == "cpu":
      torch.set_num_threads(os.cpu_count())
    self.torch, self.device = torch, device
    self.model = open_clip.create_model("ViT-B-32").to(device)
    self.model.train()
    self.opt = torch.optim.AdamW(
      self.model.parameters(),
      lr=lr,
      weight_decay=0.5,
      betas=(0.9, 0.999),
      eps=1e-8,
      fused=device == "cuda",
    )
    self.forward = torch.compile(self.model) if compiled else self.model
    self.autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    g = torch.Generator(device).manual_seed(0)
    image = lambda: torch.randn(n, 3, 224, 224, generator=g, device=device)  # noqa: E731

    def text():
      t = torch.randint(1, 49000, (n, 77), generator=g, device=device)
      t[:, 0], t[:, -1] = SOT_ID, EOT_ID
      return t

    self.batch = {"image": image(), "neg_image": image(), "text": text(), "neg_text": text()}

  def _negclip(self, x, y, yn, s):
    F = self.torch.nn.functional
    labels = self.torch.arange(x.shape[0], device=self.device)
    i2t = s * self.torch.cat([x @ y.T, x @ yn.T], dim=1)
    return 0.5 * (F.cross_entropy(i2t, labels) + F.cross_entropy(s * y @ x.T, labels))

  def __call__(self):
    b = self.batch
    with self.autocast:
      x, y, s = self.forward(b["image"], b["text"])
      xn, yn, _ = self.forward(b["neg_image"], b["neg_text"])
      loss = self._negclip(x, y, yn, s) + self._negclip(xn, yn, y, s)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    return loss

  def sync(self) -> None:
    """Waits for the queued steps (CUDA runs asynchronously)."""
    if self.device == "cuda":
      self.torch.cuda.synchronize()


def torch_device() -> str:
  """Where open_clip runs: the GPU when JAX runs on one (and torch sees it), else the CPU."""
  import torch

  return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


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
  p.add_argument(
    "--compare",
    default="",
    help=f"comma-separated, of {', '.join(COMPARE)}: the same step in open_clip, alternating",
  )
  p.add_argument("--info", action="store_true", help="print parameter count and FLOPs, then exit")
  args = p.parse_args()
  args.compare = [c for c in args.compare.split(",") if c]
  for c in args.compare:
    if c not in COMPARE:
      p.error(f"--compare {c}: choose from {', '.join(COMPARE)}")
  return args


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


def _our_step(args, cfg, clock: StartupClock):
  """(step, state, the device batch) on the --mesh, telling `clock` when each is ready."""
  data, fsdp = (int(x) for x in args.mesh.split(","))
  mesh = sharding.make_mesh(data, fsdp)
  sharding.check_batch_divides(args.batch_size, mesh)
  clock.mark("devices")
  tx, schedule = make_optimizer(
    optimizer_config(learning_rate=5e-4, warmup_steps=10, weight_decay=0.5), 1000
  )
  state, state_sh = create_train_state(cfg, tx, mesh, jax.random.key(0), loss_lib.get(args.loss))
  jax.block_until_ready(state)
  clock.mark("state")
  step = make_train_step(
    cfg, tx, schedule, loss_lib.get(args.loss), mesh, state_sh, args.accum_steps
  )
  batch = jax.block_until_ready(device_batch(cfg, args.batch_size, mesh))
  clock.mark("data")
  return step, state, batch


def _rounds(args, step, state, batch, theirs: dict):
  """({"ours": seconds per step per round, NAME: ...}, the last metrics), alternating every side
  each round."""
  times = {"ours": [], **{name: [] for name in theirs}}
  for _ in range(args.rounds):
    t = time.perf_counter()
    for _ in range(args.steps):
      state, m = step(state, batch)
    jax.block_until_ready(m)
    times["ours"].append((time.perf_counter() - t) / args.steps)
    for name, other in theirs.items():
      t = time.perf_counter()
      for _ in range(args.steps):
        other()
      other.sync()
      times[name].append((time.perf_counter() - t) / args.steps)
  return times, m


def _open_clip(args) -> dict:
  """{name: OpenClipStep} for --compare, each warmed up (compiled, for open_clip_compiled)."""
  theirs = {}
  for name in args.compare:
    t = time.perf_counter()
    theirs[name] = OpenClipStep(
      args.batch_size, torch_device(), args.dtype, compiled=name == "open_clip_compiled"
    )
    theirs[name]()
    theirs[name].sync()
    print(f"{name}: ready in {time.perf_counter() - t:.1f} s on {theirs[name].device}")
  return theirs


def main():
  clock = StartupClock(STARTED)
  args = _arguments()
  cfg = get_preset(args.preset, dtype=args.dtype, remat=args.remat)
  flops_ex = train_flops_per_example(cfg, loss_lib.get(args.loss))
  if args.info:
    return _info(args, cfg, flops_ex)
  step, state, batch = _our_step(args, cfg, clock)
  state, m = step(state, batch)
  jax.block_until_ready(m)
  clock.mark("first step")
  print(clock.report())
  startup = clock.finish()
  peak = measure_matmul_peak(args.dtype)
  theirs = _open_clip(args)
  times, m = _rounds(args, step, state, batch, theirs)

  step_s = statistics.median(times["ours"])
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
    "startup_s": f"{startup['startup/total_s']:.1f}",
    "compile_s": f"{startup['startup/compile_s']:.1f}",
    "loss_value": f"{float(m['loss']):.4f}",
  }
  print(
    f"ours: {ex_s:.2f} examples/s, {achieved / 1e9:.1f} GFLOP/s, MFU {result['mfu']} "
    f"(matmul peak {peak / 1e9:.1f} GFLOP/s), rounds {[f'{t:.3f}' for t in times['ours']]}"
  )
  for name in theirs:
    their_ex_s = args.batch_size / statistics.median(times[name])
    result[f"{name}_examples_per_s"] = f"{their_ex_s:.3f}"
    result[f"ratio_vs_{name}"] = f"{ex_s / their_ex_s:.3f}"
    print(
      f"{name} ({theirs[name].device}): {their_ex_s:.2f} examples/s, "
      f"{their_ex_s * flops_ex / 1e9:.1f} GFLOP/s, rounds {[f'{t:.3f}' for t in times[name]]}; "
      f"ratio ours/{name} {ex_s / their_ex_s:.3f}"
    )
  print(" ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
  main()
