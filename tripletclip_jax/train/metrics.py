"""Metric sinks: stdout, TensorBoard event files and WORKDIR/metrics.jsonl (process 0 only)."""

import json
import time

import numpy as np

from tripletclip_jax import fileio


def _scalar(v):
  if isinstance(v, (str, bool)):
    return v
  v = np.asarray(v)
  return int(v) if np.issubdtype(v.dtype, np.integer) else float(v)


class MetricWriter:
  """`write(step, {name: scalar})` to every sink; a no-op on processes other than 0."""

  def __init__(self, workdir: str, enabled: bool = True, echo=print):
    self.enabled, self.echo = enabled, echo
    if not enabled:
      return
    self._path = fileio.join(workdir, "metrics.jsonl")
    # A bucket object cannot be appended to: there the whole file is rewritten at each write (it stays small).
    self._remote = fileio.is_remote(workdir)
    if self._remote:
      self._lines = fileio.read_bytes(self._path) if fileio.exists(self._path) else b""
    else:
      self._jsonl = open(self._path, "a")
    from tensorboardX import SummaryWriter  # writes gs:// itself, through google-cloud-storage
    self._tb = SummaryWriter(fileio.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict, echo: bool = True) -> None:
    if not self.enabled:
      return
    clean = {k: _scalar(v) for k, v in metrics.items()}
    line = json.dumps({"step": int(step), "time": time.time(), **clean}) + "\n"
    if self._remote:
      self._lines += line.encode()
      fileio.write_bytes(self._path, self._lines)
    else:
      self._jsonl.write(line)
      self._jsonl.flush()
    for k, v in clean.items():
      if isinstance(v, float):
        self._tb.add_scalar(k, v, step)
    self._tb.flush()
    if echo and self.echo:
      shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in clean.items()
                       if not (k.startswith("bad_records/") and v == 0))  # quiet while the data is clean
      self.echo(f"[step {step}] {shown}")

  def close(self) -> None:
    if self.enabled:
      if not self._remote:
        self._jsonl.close()
      self._tb.close()


def read_metrics(workdir: str) -> dict[int, dict]:
  """metrics.jsonl -> {step: merged record}; a step logged again after a resume keeps the last value."""
  out: dict[int, dict] = {}
  path = fileio.join(workdir, "metrics.jsonl")
  if fileio.exists(path):
    for line in fileio.read_bytes(path).decode().splitlines():
      rec = json.loads(line)
      out.setdefault(rec["step"], {}).update(rec)
  return out


def measure_matmul_peak(dtype="float32") -> float:
  """FLOP/s of a square matmul on the default device: the MFU denominator when no peak is given."""
  import jax
  import jax.numpy as jnp
  n = 2048 if jax.default_backend() == "cpu" else 8192
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(3):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best
