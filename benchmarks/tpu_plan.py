"""The TPU compiler's own plan for the real train step, compiled ahead of time on a CPU-only machine.

  pip install -e ".[tpu]"     # libtpu; not needed by `make test`
  python benchmarks/tpu_plan.py --config configs/cc3m.py --topology v4:2x2x4
  python benchmarks/tpu_plan.py --config configs/cc3m.py --topology v5e:4x4 --max_batch
  python benchmarks/tpu_plan.py --config configs/cc3m.py --topology v5e:16x16 \
      --config.model.preset=vit_l14 --config.batch_size=32768 --config.mesh.fsdp=256

libtpu's compile-only client (`jax.experimental.topologies.get_topology_desc`) gives the devices of
the named topology; the trainer's own step (`make_train_step`, same mesh and sharding rules, same
config) is lowered for them and compiled by the TPU compiler. Printed: per-device memory (arguments,
outputs, temporaries) against the chip's HBM, collective bytes per step (summed from the compiled
HLO), FLOPs, the compiler's estimated step time and the MFU it implies (when libtpu reports one), an
HBM-traffic estimate from the compiled HLO with the ops that dominate it, the roofline it implies,
and with --max_batch the largest global batch that fits, with and without remat. Ends with one
`key=value` line.
"""

import argparse
import os
import re
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # libtpu only compiles here; nothing runs on a TPU
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")

import jax  # noqa: E402


from tripletclip_jax.train.config import (
  ConfigError,
  apply_overrides,
  load_config_file,
  split_overrides,
)  # noqa: E402
from tripletclip_jax.train.experiment import build  # noqa: E402

# Per chip: bf16 peak FLOP/s, HBM bytes and HBM bytes/s (Google Cloud's published figures).
CHIPS = {
  "v4": (275e12, 32 * 2**30, 1.2e12),
  "v5e": (197e12, 16 * 2**30, 0.82e12),
  "v5p": (459e12, 95 * 2**30, 2.76e12),
  "v6e": (918e12, 32 * 2**30, 1.64e12),
}
# A collective anywhere in the module (the TPU compiler moves many into fusions and async wrappers); its
# result shape may be a tuple (combined all-reduces), so everything up to the opcode is the shape.
_COLLECTIVE = re.compile(
  r"^\s*(?:ROOT )?%\S+ = (.*?) (all-reduce|all-gather|reduce-scatter|all-to-all|"
  r"collective-permute)(-start)?\(",
  re.M,
)
# An array in the HLO text: dtype[dims] and, when printed, its layout {...}; "S(1)" in a layout is TPU on-chip memory.
_ARRAY = re.compile(r"\b(bf16|f32|f16|s32|u32|u8|s8|pred|f64|s64)\[([\d,]*)\](\{[^}]*\})?")
_BYTES = {
  "bf16": 2,
  "f16": 2,
  "f32": 4,
  "s32": 4,
  "u32": 4,
  "u8": 1,
  "s8": 1,
  "pred": 1,
  "f64": 8,
  "s64": 8,
}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%\S+ = (.*?) ([a-z][a-z0-9-]*)\((.*)$")
_NOT_TRAFFIC = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "after-all"}


def _arrays(text: str) -> list[tuple[int, bool]]:
  """(bytes, in HBM) of each array printed in `text`; a layout with S(n), n > 0, is on-chip memory."""
  out = []
  for dtype, dims, layout in _ARRAY.findall(text):
    n = _BYTES[dtype]
    for d in filter(None, dims.split(",")):
      n *= int(d)
    out.append((n, not re.search(r"S\([1-9]", layout or "")))
  return out


def collective_bytes(hlo: str) -> dict[str, int]:
  """{collective kind: result bytes per device per step}, summed over every computation of the compiled HLO.

  The TPU compiler splits one collective into a chain of async fusions that each print the whole op with the
  same channel_id: a channel counts once.
  """
  seen: dict[str, tuple[str, int]] = {}
  for i, m in enumerate(_COLLECTIVE.finditer(hlo)):
    shape, kind, start = m.groups()
    arrays = [n for n, _ in _arrays(shape) if n > 4]  # drop the async context scalars
    if start and kind != "all-reduce":  # (operands..., results...): the results only
      arrays = arrays[len(arrays) // 2 :]
    channel = re.match(r"[^\n]*?channel_id=(\d+)", hlo[m.end() :])
    key = channel.group(1) if channel else f"#{i}"
    seen[key] = (kind, max(sum(arrays), seen.get(key, ("", 0))[1]))
  out: dict[str, int] = {}
  for kind, n in seen.values():
    out[kind] = out.get(kind, 0) + n
  return out


def hbm_bytes_by_op(hlo: str) -> dict[str, int]:
  """{JAX op (the HLO's op_name, numbers dropped): HBM bytes read + written per device per step}.

  Sums the HBM-resident operands and results of the entry computation's instructions (a fusion counts its
  inputs and outputs, not its internals). The TPU compiler's prefetches into on-chip memory (copy-start /
  slice-start into S(1)) count their HBM side once; the compiler's own `bytes accessed` counts every memory
  space, so it is larger. An estimate of HBM traffic, to rank ops: not a simulation of the chip.
  """
  entry = hlo[hlo.index("\nENTRY") :]
  entry = entry[: entry.index("\n}")]
  out: dict[str, int] = {}
  for line in entry.splitlines()[1:]:
    m = _INSTRUCTION.match(line)
    if not m or m.group(2) in _NOT_TRAFFIC or m.group(2).endswith("-done"):
      continue
    result, op, rest = m.groups()
    if op.endswith(
      "-start"
    ):  # async move: its result tuple holds both ends (copy-start: target, source;
      # slice-start: (source), target), then a context; the bytes moved are the smaller end's
      (src, src_hbm), (dst, dst_hbm) = _arrays(result)[:2]
      traffic = min(src, dst) * src_hbm + dst * dst_hbm
    else:
      traffic = sum(n for n, hbm in _arrays(result) + _arrays(rest.split("), ")[0]) if hbm)
    name = re.search(r'op_name="([^"]*)"', line)
    name = (
      re.sub(r"\.?\d+", "", name.group(1)).replace("jit(step)/", "")
      if name
      else f"(compiler's {op})"
    )
    out[name] = out.get(name, 0) + traffic
  return out


def compile_step(config, devices, batch_size: int, remat: bool | None = None):
  """The trainer's step, compiled for `devices` at `batch_size` (and `remat`, if given); returns (compiled,
  experiment). `config` itself is not changed."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.batch_size = batch_size
    if remat is not None:
      config.model.remat = remat
  exp = build(config, devices=devices, abstract=True)  # the trainer's own build, allocating nothing
  return exp.train_step.jitted.lower(exp.state, exp.batch_spec()).compile(), exp


def memory(compiled) -> dict:
  m = compiled.memory_analysis()
  total = (
    m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
  )
  return {
    "arguments": m.argument_size_in_bytes,
    "outputs": m.output_size_in_bytes,
    "aliased": m.alias_size_in_bytes,
    "temporaries": m.temp_size_in_bytes,
    "total": total,
  }


def max_batch(config, devices, hbm: int, remat: bool, start: int) -> tuple[int, int, int]:
  """(largest global batch that fits in HBM, its planned bytes per device, bytes per extra example per chip).

  Per-device memory is close to affine in the per-chip batch (state + activations; the loss's logits grow
  with the global batch but stay small): two compiles give the line, a third compiles the batch it predicts,
  stepping down 5% at a time until the compiler's plan fits. Batches are multiples of the device count.
  """
  n = len(devices)

  def total(b):
    try:
      return memory(compile_step(config, devices, b, remat)[0])["total"]
    except jax.errors.JaxRuntimeError as e:  # the compiler refuses a plan over HBM
      if "RESOURCE_EXHAUSTED" not in str(e):
        raise
      return float("inf")

  b1, b2 = start, 2 * start
  m1, m2 = total(b1), total(b2)
  per_example = (m2 - m1) / ((b2 - b1) / n)
  best = b1 + int((hbm - m1) / per_example) * n
  for _ in range(6):
    if best <= 0:
      return 0, m1, int(per_example)
    m = total(best)
    if m <= hbm:
      return best, m, int(per_example)
    best = int(best * 0.95) // n * n
  return best, total(best), int(per_example)


def main():
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--config", default="configs/cc3m.py")
  p.add_argument(
    "--topology",
    default="v4:2x2x4",
    help="e.g. v4:2x2x1 (v4-8), v4:2x2x4 (v4-32), v5e:4x4, v6e:4x4",
  )
  p.add_argument(
    "--set", action="append", default=[], metavar="KEY=VALUE", help="alias of --config.KEY=VALUE"
  )
  p.add_argument(
    "--max_batch", action="store_true", help="also search the largest batch that fits (slow)"
  )
  p.add_argument(
    "--save_hlo", metavar="PATH", help="write the compiled HLO text there (to study it further)"
  )
  try:  # --config.KEY=VALUE, typed and checked as launch/main.py does
    argv, overrides = split_overrides(sys.argv[1:])
  except ConfigError as e:
    raise SystemExit(f"error: {e}") from None
  a = p.parse_args(argv)
  from jax.experimental import topologies

  chip = a.topology.split(":")[0]
  if chip not in CHIPS:
    raise SystemExit(f"error: unknown chip {chip!r} in --topology; choose one of {sorted(CHIPS)}")
  peak, hbm, bandwidth = CHIPS[chip]
  # v4 and v5p chips have two TensorCores that JAX drives as one device ("megacore"), as on a real VM.
  kw = {"chip_config_name": "megacore"} if chip in ("v4", "v5p") else {}
  devices = topologies.get_topology_desc(platform="tpu", topology_name=a.topology, **kw).devices
  try:
    config = load_config_file(a.config)
    apply_overrides(config, overrides + a.set)
  except ConfigError as e:
    raise SystemExit(f"error: {e}") from None
  t = time.perf_counter()
  try:
    compiled, exp = compile_step(config, devices, config.batch_size)
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    raise SystemExit(
      f"{a.topology}: {config.model.preset} at global batch {config.batch_size} (remat "
      f"{config.model.remat}) does not fit: {str(e).splitlines()[0]} Try --config.model.remat=True, "
      "a larger mesh.fsdp or a smaller batch_size."
    )
  compile_s = time.perf_counter() - t
  mem = memory(compiled)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops, seconds = float(cost.get("flops", 0.0)), float(cost.get("optimal_seconds", -1.0))
  hlo = compiled.as_text()
  if a.save_hlo:
    with open(a.save_hlo, "w") as f:
      f.write(hlo)
  by_op = hbm_bytes_by_op(hlo)
  hbm_bytes = sum(by_op.values())
  # A roofline: compute at peak or HBM traffic at full bandwidth, whichever is slower. The compiler's
  # `bytes accessed` counts every memory space (on-chip reads too), so HBM traffic is estimated from the HLO.
  compute_s, hbm_s = flops / peak, hbm_bytes / bandwidth
  roofline = max(compute_s, hbm_s)
  coll = collective_bytes(hlo)
  n = len(devices)
  steps = exp.total_steps
  print(
    f"{a.topology}: {n} chips, {config.model.preset}, loss {config.loss}, global batch {config.batch_size}, "
    f"mesh data={config.mesh.data} fsdp={config.mesh.fsdp}, dtype {config.model.dtype}, remat {config.model.remat}"
  )
  gib = 2**30
  print(
    "per-device memory: "
    + ", ".join(f"{k} {v / gib:.2f} GiB" for k, v in mem.items())
    + f" (HBM {hbm / gib:.0f} GiB: {100 * mem['total'] / hbm:.0f}%)"
  )
  print(
    "collectives per device per step: "
    + (", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in coll.items()) or "none")
  )
  mfu = flops / seconds / peak if seconds > 0 else float("nan")
  estimate = (
    f"{seconds * 1e3:.1f} ms/step -> MFU {100 * mfu:.1f}%"
    if seconds > 0
    else "none (this libtpu reports no optimal_seconds)"
  )
  print(
    f"per device per step: {flops / 1e12:.2f} TFLOP ({compute_s * 1e3:.1f} ms at peak); HBM traffic "
    f"{hbm_bytes / gib:.1f} GiB ({hbm_s * 1e3:.1f} ms at full bandwidth; the compiler's bytes accessed, all "
    f"memory spaces: {float(cost.get('bytes accessed', 0.0)) / gib:.1f} GiB) -> "
    f"{'compute' if compute_s >= hbm_s else 'HBM'}-bound, roofline {roofline * 1e3:.1f} ms/step, "
    f"MFU at most {100 * compute_s / roofline:.0f}%"
  )
  print(f"compiler step estimate: {estimate}; compiled in {compile_s:.0f} s")
  print(
    f"the run: {steps} steps x {roofline * 1e3:.1f} ms = at least {steps * roofline / 3600:.1f} h on {n} chips"
  )
  print(
    "HBM traffic by op: "
    + "; ".join(
      f"{100 * v / hbm_bytes:.0f}% {k}" for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])[:5]
    )
  )
  fields = {
    "topology": a.topology,
    "chips": n,
    "preset": config.model.preset,
    "batch": config.batch_size,
    "mem_gib": round(mem["total"] / gib, 3),
    "hbm_frac": round(mem["total"] / hbm, 3),
    "tflop_per_device": round(flops / 1e12, 3),
    "hbm_gib": round(hbm_bytes / gib, 2),
    "est_ms": round(seconds * 1e3, 2) if seconds > 0 else "none",
    "mfu": round(mfu, 3),
    "roofline_ms": round(roofline * 1e3, 2),
    "run_h": round(steps * roofline / 3600, 1),
    "collective_mib": round(sum(coll.values()) / 2**20, 1),
  }
  if a.max_batch:
    for remat in (False, True):
      b, m, per_example = max_batch(config, devices, hbm, remat, config.batch_size)
      fields[f"max_batch_remat_{str(remat).lower()}"] = b
      print(
        f"largest global batch that fits, remat={remat}: {b} ({b // n} per chip; plan {m / gib:.2f} GiB of "
        f"{hbm / gib:.0f}; {per_example / 2**20:.1f} MiB per extra example per chip)"
      )
  print(" ".join(f"{k}={v}" for k, v in fields.items()))


if __name__ == "__main__":
  main()
