"""Metric sinks: stdout, TensorBoard event files and WORKDIR/metrics.jsonl (process 0 only)."""

import json
import logging
import os
import shutil
import tempfile
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
      self._lines = (
        _whole_lines(fileio.read_bytes(self._path), self._path)
        if fileio.exists(self._path)
        else b""
      )
    else:
      if os.path.exists(
        self._path
      ):  # a kill can leave a torn last line: appending would glue two records
        with open(self._path, "rb") as f:
          data = f.read()
        if len(whole := _whole_lines(data, self._path)) < len(data):
          os.truncate(self._path, len(whole))
      self._jsonl = open(self._path, "a")
    from tensorboardX import SummaryWriter

    # On a bucket the events are written to a local folder and each file is uploaded whole after every write:
    # tensorboardX's own bucket writer rewrites its object under a generation precondition and dies when a
    # retry of a write whose answer was lost meets that precondition (docs/storage.md, retries).
    self._tb_remote = fileio.join(workdir, "tensorboard") if self._remote else None
    self._tb_local = (
      tempfile.mkdtemp(prefix="tripletclip-tb-")
      if self._remote
      else fileio.join(workdir, "tensorboard")
    )
    self._tb = SummaryWriter(self._tb_local)

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
    if self._tb_remote:
      fileio.upload(self._tb_local, self._tb_remote)
    if echo and self.echo:
      shown = " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in clean.items()
        if not (k.startswith("bad_records/") and v == 0)
      )  # quiet while the data is clean
      self.echo(f"[step {step}] {shown}")

  def close(self) -> None:
    if self.enabled:
      if not self._remote:
        self._jsonl.close()
      self._tb.close()
      if self._tb_remote:
        fileio.upload(self._tb_local, self._tb_remote)
        shutil.rmtree(self._tb_local, ignore_errors=True)


def _whole_lines(data: bytes, path: str) -> bytes:
  """`data` up to its last newline; says so when a torn last line is dropped."""
  whole = data[: data.rfind(b"\n") + 1]
  if len(whole) < len(data):
    logging.warning(
      "Dropped a torn last line of %s (%d bytes, from a killed run) before appending.",
      path,
      len(data) - len(whole),
    )
  return whole


def read_metrics(workdir: str) -> dict[int, dict]:
  """metrics.jsonl -> {step: merged record}; a step logged again after a resume keeps the last value.

  A line that is not a JSON record with a step (torn by a kill) is skipped with a warning naming the file.
  """
  out: dict[int, dict] = {}
  path = fileio.join(workdir, "metrics.jsonl")
  if fileio.exists(path):
    for i, line in enumerate(fileio.read_bytes(path).decode(errors="replace").splitlines(), 1):
      try:
        rec = json.loads(line)
        step = int(rec["step"])
      except (ValueError, KeyError, TypeError) as e:
        logging.warning(
          "Skipped line %d of %s: not a metrics record (%s).", i, path, type(e).__name__
        )
        continue
      out.setdefault(step, {}).update(rec)
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
  return 2 * n**3 / best
