"""The TPU compiler's own plan for the real train step, compiled ahead of time on a CPU-only
machine.

  pip install -e ".[tpu]"     # libtpu; not needed by `make test`
  python benchmarks/tpu_plan.py --config configs/cc3m.py --topology v4:2x2x4
  python benchmarks/tpu_plan.py --config configs/cc3m.py --topology v5e:4x4 --max_batch
  python benchmarks/tpu_plan.py --config configs/cc3m.py --topology v5e:16x16 \
      --config.model.preset=vit_l14 --config.batch_size=32768 --config.mesh.fsdp=256

libtpu's compile-only client (`jax.experimental.topologies.get_topology_desc`) gives the devices of
the named topology; the trainer's own step (`make_train_step`, same mesh and sharding rules, same
config) is lowered for them and compiled by the TPU compiler. Printed: per-device memory (arguments,
outputs, temporaries) against the chip's HBM; the collectives by kind (result bytes, and bytes each
chip sends) against the floor of the mesh's parallelism; FLOPs executed and of the model; the
compiler's estimated step time and the MFU it implies, with the ops it expects to take the cycles;
an HBM-traffic estimate from the compiled HLO with the ops that dominate it; the roofline of
compute, HBM and ICI; and with --max_batch the largest global batch that fits, with and without
remat. Ends with one `key=value` line.
"""

import argparse
import os
import re
import sys
import time
import types

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # libtpu only compiles here; nothing runs on a TPU
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")

import jax  # noqa: E402

from tripletclip_jax.configlib import ConfigError, parse_command_line  # noqa: E402
from tripletclip_jax.train.experiment import build  # noqa: E402

# Per chip: bf16 peak FLOP/s, HBM bytes, HBM bytes/s and ICI bytes/s (Google Cloud's published
# figures; the ICI figure is the "interchip interconnect bandwidth" of each generation's page: 2400,
# 1600, 4800, 3584 Gbps).
CHIPS = {
  "v4": (275e12, 32 * 2**30, 1.2e12, 300e9),
  "v5e": (197e12, 16 * 2**30, 0.82e12, 200e9),
  "v5p": (459e12, 95 * 2**30, 2.76e12, 600e9),
  "v6e": (918e12, 32 * 2**30, 1.64e12, 448e9),
}
# A collective in the lowered step's HLO text (names with or without %); its result shape may be a
# tuple (several arrays summed at once), so everything up to the opcode is the shape.
_COLLECTIVE = re.compile(
  r"^\s*(?:ROOT )?%?\S+ = (.*?) (all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)\(",
  re.M,
)
# An array in the HLO text: dtype[dims] and, when printed, its layout {...}; "S(1)" in a layout is
# TPU on-chip memory.
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
  """(bytes, in HBM) of each array printed in `text`; a layout with S(n), n > 0, is on-chip
  memory."""
  out = []
  for dtype, dims, layout in _ARRAY.findall(text):
    n = _BYTES[dtype]
    for d in filter(None, dims.split(",")):
      n *= int(d)
    out.append((n, not re.search(r"S\([1-9]", layout or "")))
  return out


def _group_size(attrs: str, devices: int) -> int:
  """Devices per replica group of a collective, from its attributes: {{0,1,..},..} or the iota form
  [g,n]<=[..]."""
  m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", attrs)
  if m:
    return int(m.group(2))
  m = re.search(r"replica_groups=\{\{([\d,]*)\}", attrs)
  return len(m.group(1).split(",")) if m else devices


def collectives(hlo: str, devices: int) -> dict[str, tuple[int, int]]:
  """{collective kind: (result bytes, bytes each device sends)} per device per step, over every
  computation of `hlo`: the lowered step, whose collectives are the ones it asks for, one op each
  (the step's are explicit, in `jax.shard_map`; the partitioner adds only the scalar all-reduces of
  the gradient norm). The compiled TPU program is no place to count them: the compiler splits each
  into a chain of async fusions that each print the whole op, with nothing in the text to tell one
  chain from another.

  Bytes sent are those of the bandwidth-optimal (ring) algorithms in a group of n devices:
  all-gather and all-to-all send (n-1)/n of their result, reduce-scatter n-1 times its result (the
  slice), all-reduce twice (n-1)/n of it, collective-permute all of it.
  """
  out: dict[str, tuple[int, int]] = {}
  for m in _COLLECTIVE.finditer(hlo):
    shape, kind = m.groups()
    result = sum(n for n, _ in _arrays(shape))
    n = _group_size(hlo[m.end() : hlo.find("\n", m.end())], devices)
    sent = {
      "all-gather": result * (n - 1) / n,
      "all-to-all": result * (n - 1) / n,
      "reduce-scatter": result * (n - 1),
      "all-reduce": 2 * result * (n - 1) / n,
      "collective-permute": result,
    }[kind]
    r, t = out.get(kind, (0, 0))
    out[kind] = (r + result, t + int(sent))
  return out


def step_estimate(cost: dict, hlo: str) -> tuple[float | None, int]:
  """(the compiler's step-time estimate in seconds, or None; the ops it could not cost).

  libtpu's cost model adds -1 s for each op it has no model for, and the memory-space assignment's
  sliced prefetches (custom-call "ConcatBitcast", which reassembles a large array prefetched in
  slices) are such ops: one makes `optimal_seconds` negative. Each is counted as free here (an
  asynchronous prefetch, overlapped with compute). The same step compiled with
  LIBTPU_INIT_ARGS=--xla_tpu_sliced_prefetch_max_slices=1 has none and gets an estimate without
  correction, for a slightly different program (benchmarks/RESULTS.md compares them).
  """
  uncosted = hlo.count('custom_call_target="ConcatBitcast"')
  seconds = float(cost.get("optimal_seconds", -1.0)) + uncosted
  return (seconds if seconds > 0 else None), uncosted


def collective_floor(exp, devices: int) -> int:
  """The fewest bytes each device must send per step for this mesh's parallelism: every weight FSDP
  splits all-gathered once in the compute dtype and its gradient reduce-scattered once in the
  reduction dtype (then all-reduced over `data`), every replicated weight's gradient all-reduced
  once, the loss's embeddings gathered once each and their gradients reduce-scattered once (ring
  algorithms, as `collectives` counts)."""
  import jax.numpy as jnp

  mesh = exp.mesh
  fsdp, data = mesh.shape["fsdp"], mesh.shape["data"]
  compute = jnp.dtype(exp.model_config.dtype).itemsize
  reduce = jnp.dtype(exp.config.mesh.grad_reduce_dtype).itemsize
  ring = lambda n: (n - 1) / n
  total = 0.0
  for x, s in zip(jax.tree.leaves(exp.state.params), jax.tree.leaves(exp.state_shardings.params)):
    if "fsdp" in s.spec:
      total += x.size * (compute + reduce) * ring(fsdp) + 2 * x.size / fsdp * reduce * ring(data)
    else:
      total += 2 * x.size * reduce * ring(devices)
  embeddings = 2 + exp.loss.neg_images + exp.loss.neg_texts
  total += 2 * embeddings * exp.config.batch_size * exp.model_config.embed_dim * 4 * ring(devices)
  return int(total)


def hbm_bytes_by_op(hlo: str) -> dict[str, int]:
  """{JAX op (the HLO's op_name, numbers dropped): HBM bytes read + written per device per step}.

  Sums the HBM-resident operands and results of the entry computation's instructions (a fusion
  counts its inputs and outputs, not its internals). The TPU compiler's prefetches into on-chip
  memory (copy-start / slice-start into S(1)) count their HBM side once; the compiler's own `bytes
  accessed` counts every memory space, so it is larger. An estimate of HBM traffic, to rank ops: not
  a simulation of the chip.
  """
  entry = hlo[hlo.index("\nENTRY") :]
  entry = entry[: entry.index("\n}")]
  out: dict[str, int] = {}
  for line in entry.splitlines()[1:]:
    m = _INSTRUCTION.match(line)
    if not m or m.group(2) in _NOT_TRAFFIC or m.group(2).endswith("-done"):
      continue
    result, op, rest = m.groups()
    # An async move: its result tuple holds both ends (copy-start: target, source; slice-start:
    # (source), target), then a context; the bytes moved are the smaller end's.
    if op.endswith("-start"):
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


def cycles_by_op(hlo: str) -> dict[str, int]:
  """{JAX op: the TPU compiler's own estimated cycles} over the entry computation's fusions and ops
  (the `estimated_cycles` of each instruction's backend config): which ops the compiler expects to
  take the time."""
  entry = hlo[hlo.index("\nENTRY") :]
  entry = entry[: entry.index("\n}")]
  out: dict[str, int] = {}
  for line in entry.splitlines()[1:]:
    cycles = re.search(r'"estimated_cycles":"(\d+)"', line)
    if cycles:
      name = re.search(r'op_name="([^"]*)"', line)
      name = (
        re.sub(r"\.?\d+", "", name.group(1)).replace("jit(step)/", "") if name else "(compiler's)"
      )
      out[name] = out.get(name, 0) + int(cycles.group(1))
  return out


def compile_step(config, devices, batch_size: int, remat: bool | None = None):
  """The trainer's step, compiled for `devices` at `batch_size` (and `remat`, if given); returns
  (compiled, experiment, the lowered program's HLO text). `config` itself is not changed."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.batch_size = batch_size
    if remat is not None:
      config.model.remat = remat
  exp = build(config, devices=devices, abstract=True)  # the trainer's own build, allocating nothing
  lowered = exp.train_step.jitted.lower(exp.state, exp.batch_spec())
  return lowered.compile(), exp, lowered.as_text(dialect="hlo")


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
  """(largest global batch that fits in HBM, its planned bytes per device, bytes per extra example
  per chip).

  Per-device memory is close to affine in the per-chip batch (state + activations; the loss's logits
  grow with the global batch but stay small): two compiles give the line, a third compiles the batch
  it predicts, stepping down 5% at a time until the compiler's plan fits. Batches are multiples of
  the device count.
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


GIB, MIB = 2**30, 2**20


def _arguments():
  """(config, the script's own arguments) from the command line."""
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument(
    "--topology",
    default="v4:2x2x4",
    help="e.g. v4:2x2x1 (v4-8), v4:2x2x4 (v4-32), v5e:4x4, v6e:4x4",
  )
  p.add_argument(
    "--max_batch", action="store_true", help="also search the largest batch that fits (slow)"
  )
  p.add_argument(
    "--save_hlo", metavar="PATH", help="write the compiled HLO text there (to study it further)"
  )
  try:  # --config=FILE (default configs/cc3m.py), --config.KEY=VALUE, --set: as launch/main.py
    config, argv = parse_command_line(sys.argv[1:], default="configs/cc3m.py")
  except ConfigError as e:
    raise SystemExit(f"error: {e}") from None
  return config, p.parse_args(argv)


def _devices(topology: str):
  """(the topology's abstract TPU devices, the chip's (peak, HBM, bandwidth, ICI) from CHIPS)."""
  from jax.experimental import topologies

  chip = topology.split(":")[0]
  if chip not in CHIPS:
    raise SystemExit(f"error: unknown chip {chip!r} in --topology; choose one of {sorted(CHIPS)}")
  # v4 and v5p chips have two TensorCores that JAX drives as one device ("megacore"), as on a real
  # VM.
  kw = {"chip_config_name": "megacore"} if chip in ("v4", "v5p") else {}
  return topologies.get_topology_desc(platform="tpu", topology_name=topology, **kw).devices, CHIPS[
    chip
  ]


def _compile(config, devices, topology: str):
  """compile_step, or one line when the step does not fit the chips' memory."""
  try:
    return compile_step(config, devices, config.batch_size)
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    raise SystemExit(
      f"{topology}: {config.model.preset} at global batch {config.batch_size} (remat "
      f"{config.model.remat}) does not fit: {str(e).splitlines()[0]} Try --config.model.remat=True, "
      "a larger mesh.fsdp or a smaller batch_size."
    )


def analyse(compiled, hlo: str, exp, asked, config, n: int, chip) -> types.SimpleNamespace:
  """Per device and step, of the compiled step on `n` chips of `chip` (CHIPS' figures): memory,
  FLOPs (executed and the model's), HBM traffic by op, collectives against their floor, the
  roofline's parts (seconds) and the compiler's estimate, MFU and the run's hours."""
  peak, hbm, bandwidth, ici = chip
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  r = types.SimpleNamespace(n=n, peak=peak, hbm=hbm, ici=ici, cost=cost, mem=memory(compiled))
  # what the compiled step executes (remat's recompute included)
  r.flops = float(cost.get("flops", 0.0))
  r.seconds, r.uncosted = step_estimate(cost, hlo)
  # The model's FLOPs (analytic: forward and backward of every encoded image and text, no recompute)
  # per chip.
  r.model_flops = exp.flops_per_example * config.batch_size / n
  r.by_op = hbm_bytes_by_op(hlo)
  r.hbm_bytes = sum(r.by_op.values())
  r.coll = collectives(asked, n)
  r.sent = sum(t for _, t in r.coll.values())
  r.floor = collective_floor(exp, n)
  # A roofline: the slowest of compute at peak, HBM traffic at full bandwidth and the bytes each
  # chip sends at its ICI bandwidth (a lower bound: every link busy, nothing overlapped). The
  # compiler's `bytes accessed` counts every memory space (on-chip reads too), so HBM traffic is
  # estimated from the HLO.
  r.parts = {"compute": r.flops / peak, "HBM": r.hbm_bytes / bandwidth, "ICI": r.sent / ici}
  r.bound = max(r.parts, key=r.parts.get)
  r.roofline = r.parts[r.bound]
  r.mfu = r.model_flops / r.seconds / peak if r.seconds else float("nan")
  r.steps, r.run_s = exp.total_steps, r.seconds or r.roofline
  return r


def _report(r, config, topology: str, compile_s: float, hlo: str) -> None:
  """The plan, in sentences."""
  print(
    f"{topology}: {r.n} chips, {config.model.preset}, loss {config.loss}, global batch {config.batch_size}, "
    f"mesh data={config.mesh.data} fsdp={config.mesh.fsdp}, dtype {config.model.dtype}, remat "
    f"{config.model.remat}, gradient sums in {config.mesh.grad_reduce_dtype}"
  )
  print(
    "per-device memory: "
    + ", ".join(f"{k} {v / GIB:.2f} GiB" for k, v in r.mem.items())
    + f" (HBM {r.hbm / GIB:.0f} GiB: {100 * r.mem['total'] / r.hbm:.0f}%)"
  )
  print(
    "collectives per device per step (result; sent): "
    + (", ".join(f"{k} {a / MIB:.1f}; {t / MIB:.1f} MiB" for k, (a, t) in r.coll.items()) or "none")
    + f"; sent in all {r.sent / MIB:.1f} MiB, {r.sent / max(r.floor, 1):.2f}x the floor of this "
    f"parallelism ({r.floor / MIB:.1f} MiB)"
  )
  print(
    f"per device per step: {r.flops / 1e12:.2f} TFLOP executed, {r.model_flops / 1e12:.2f} of the model "
    f"({r.parts['compute'] * 1e3:.1f} ms at peak); HBM traffic {r.hbm_bytes / GIB:.1f} GiB "
    f"({r.parts['HBM'] * 1e3:.1f} ms at full bandwidth; the compiler's bytes accessed, all memory spaces: "
    f"{float(r.cost.get('bytes accessed', 0.0)) / GIB:.1f} GiB); ICI {r.sent / MIB:.0f} MiB sent "
    f"({r.parts['ICI'] * 1e3:.1f} ms at {r.ici / 1e9:.0f} GB/s) -> {r.bound}-bound, roofline "
    f"{r.roofline * 1e3:.1f} ms/step"
  )
  if r.seconds:
    print(
      f"compiler step estimate: {r.seconds * 1e3:.1f} ms/step -> MFU {100 * r.mfu:.1f}% (model FLOPs; "
      f"{100 * r.flops / r.seconds / r.peak:.1f}% of the executed ones); libtpu's optimal_seconds "
      f"{float(r.cost['optimal_seconds']):.4f} + 1 s for each of {r.uncosted} sliced prefetches; "
      f"compiled in {compile_s:.0f} s"
    )
  else:
    print(
      f"compiler step estimate: none (optimal_seconds {r.cost.get('optimal_seconds')}); compiled in "
      f"{compile_s:.0f} s"
    )
  print(
    f"the run: {r.steps} steps x {r.run_s * 1e3:.1f} ms = {r.steps * r.run_s / 3600:.1f} h on {r.n} "
    f"chips ({'the compiler' if r.seconds else 'the roofline, a lower bound'})"
  )
  for title, table in (
    ("compiler's estimated cycles by op", cycles_by_op(hlo)),
    ("HBM traffic by op", r.by_op),
  ):
    total = sum(table.values()) or 1
    print(
      f"{title}: "
      + "; ".join(
        f"{100 * v / total:.0f}% {k}" for k, v in sorted(table.items(), key=lambda kv: -kv[1])[:5]
      )
    )


def _fields(r, config, exp, topology: str) -> dict:
  """The plan's figures for the closing key=value line."""
  return {
    "topology": topology,
    "chips": r.n,
    "preset": config.model.preset,
    "batch": config.batch_size,
    "fsdp": exp.mesh.shape["fsdp"],
    "grad_reduce": config.mesh.grad_reduce_dtype,
    "mem_gib": round(r.mem["total"] / GIB, 3),
    "hbm_frac": round(r.mem["total"] / r.hbm, 3),
    "tflop_per_device": round(r.flops / 1e12, 3),
    "model_tflop_per_device": round(r.model_flops / 1e12, 3),
    "hbm_gib": round(r.hbm_bytes / GIB, 2),
    "est_ms": round(r.seconds * 1e3, 2) if r.seconds else "none",
    "mfu": round(r.mfu, 3),
    "compute_ms": round(r.parts["compute"] * 1e3, 2),
    "hbm_ms": round(r.parts["HBM"] * 1e3, 2),
    "ici_ms": round(r.parts["ICI"] * 1e3, 2),
    "roofline_ms": round(r.roofline * 1e3, 2),
    "run_h": round(r.steps * r.run_s / 3600, 1),
    **{f"{k}_mib".replace("-", "_"): round(a / MIB, 1) for k, (a, _) in r.coll.items()},
    "sent_mib": round(r.sent / MIB, 1),
    "floor_mib": round(r.floor / MIB, 1),
  }


def main():
  config, a = _arguments()
  devices, chip = _devices(a.topology)
  t = time.perf_counter()
  compiled, exp, asked = _compile(config, devices, a.topology)
  compile_s = time.perf_counter() - t
  hlo = compiled.as_text()
  if a.save_hlo:
    with open(a.save_hlo, "w") as f:
      f.write(hlo)
  r = analyse(compiled, hlo, exp, asked, config, len(devices), chip)
  _report(r, config, a.topology, compile_s, hlo)
  fields = _fields(r, config, exp, a.topology)
  if a.max_batch:
    for remat in (False, True):
      b, m, per_example = max_batch(config, devices, r.hbm, remat, config.batch_size)
      fields[f"max_batch_remat_{str(remat).lower()}"] = b
      print(
        f"largest global batch that fits, remat={remat}: {b} ({b // r.n} per chip; plan "
        f"{m / GIB:.2f} GiB of {r.hbm / GIB:.0f}; {per_example / MIB:.1f} MiB per extra example per chip)"
      )
  print(" ".join(f"{k}={v}" for k, v in fields.items()))


if __name__ == "__main__":
  main()
