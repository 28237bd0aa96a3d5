"""Metric sinks: stdout, WORKDIR/metrics.jsonl and the configured writers, TensorBoard event files
and Weights & Biases (process 0 only)."""

import json
import logging
import os
import re
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

from tripletclip_jax import fileio


def _scalar(v):
  if isinstance(v, (str, bool)):
    return v
  v = np.asarray(v)
  return int(v) if np.issubdtype(v.dtype, np.integer) else float(v)


WRITERS = ("tensorboard", "wandb")
RUN_ID_FILE = "wandb_run_id"  # in the workdir: a resumed run continues the same W&B run


def check_wandb(workdir: str) -> str | None:
  """The W&B run id kept in `workdir` (None: a new run), after checking that W&B can use the
  workdir; raises ValueError in one line naming the file otherwise. Runs before the trainer writes
  anything."""
  if not fileio.is_remote(workdir):
    folder = os.path.join(workdir, "wandb")
    if os.path.exists(folder) and not os.path.isdir(folder):
      raise ValueError(
        f"{folder} is not a folder, and W&B keeps its run there: move it away, or drop wandb from "
        "config.writers."
      )
  id_path = fileio.join(workdir, RUN_ID_FILE)
  if not fileio.exists(id_path):
    return None
  raw = fileio.read_bytes(id_path)
  run_id = raw.decode("utf-8", "replace").strip()
  if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", run_id):
    raise ValueError(
      f"{id_path} does not hold a W&B run id ({raw[:40]!r}): delete it to start a new W&B run, or "
      "write the id of the run to continue into it."
    )
  return run_id


class WandbWriter:
  """One Weights & Biases run per workdir (its id kept in WORKDIR/wandb_run_id, so a resume
  continues it).

  `settings` holds project, entity and name (None: W&B's defaults); `config` is logged as the run's
  config. WANDB_MODE=offline keeps the run in WORKDIR/wandb for `wandb sync`.
  """

  def __init__(self, workdir: str, settings: dict, config: dict | None = None):
    try:
      import wandb
    except ImportError:
      raise ValueError(
        "config.writers includes wandb, but the wandb package is not installed: pip install -e '.[wandb]'."
      ) from None
    self._wandb = wandb
    run_id = check_wandb(workdir)
    self._local = (
      tempfile.mkdtemp(prefix="tripletclip-wandb-") if fileio.is_remote(workdir) else workdir
    )
    try:
      self.run = wandb.init(
        project=settings.get("project"),
        entity=settings.get("entity"),
        name=settings.get("name"),
        id=run_id,  # None: W&B makes one, kept below
        resume="allow",
        dir=self._local,
        config=config,
      )
    except Exception as e:  # noqa: BLE001 - wandb raises its own errors, with pages of traceback
      first = (str(e).strip().splitlines() or [""])[0][:300]
      raise ValueError(
        f"W&B could not start a run in {self._local} ({type(e).__name__}: {first}): check "
        "`wandb login` and the wandb settings, set WANDB_MODE=offline, or drop wandb from "
        "config.writers."
      ) from None
    if run_id is None:
      fileio.write_bytes(fileio.join(workdir, RUN_ID_FILE), self.run.id.encode())

  def log(self, step: int, metrics: dict) -> None:
    self.run.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

  def table(self, step: int, name: str, columns: list[str], rows: list[list]) -> None:
    self.run.log({name: self._wandb.Table(columns=columns, data=rows)}, step=step)

  def image(self, step: int, name: str, path: str) -> None:
    self.run.log({name: self._wandb.Image(path)}, step=step)

  def close(self) -> None:
    self.run.finish()


def _tensorboardx_writer():
  """tensorboardX's SummaryWriter, imported without torch when torch is not loaded yet.

  tensorboardX imports torch whenever it is installed (to accept its tensors), which costs 1.5 s of
  every start-up on a machine that also runs the negatives tool; the trainer only writes floats. A
  None in sys.modules makes that import fail as if torch were absent, for this import only.
  """
  hide = "torch" not in sys.modules
  if hide:
    sys.modules["torch"] = None
  try:
    from tensorboardX import SummaryWriter
  finally:
    if hide:
      del sys.modules["torch"]
  return SummaryWriter


class MetricWriter:
  """`write(step, {name: scalar})` to every sink; a no-op on processes other than 0.

  `writers` are names from WRITERS; `wandb` the W&B settings (project, entity, name) and `config`
  the run's config, logged with it.
  """

  def __init__(
    self,
    workdir: str,
    enabled: bool = True,
    echo=print,
    writers=("tensorboard",),
    wandb: dict | None = None,
    config: dict | None = None,
  ):
    self.enabled, self.echo = enabled, echo
    self._tb = self._wandb = None
    if not enabled:
      return
    unknown = sorted(set(writers) - set(WRITERS))
    if unknown:
      raise ValueError(
        f"config.writers: unknown writer {unknown[0]!r}; choose from {', '.join(WRITERS)}."
      )
    if "wandb" in writers:
      self._wandb = WandbWriter(workdir, dict(wandb or {}), config)
    self._path = fileio.join(workdir, "metrics.jsonl")
    # A bucket object cannot be appended to: there the whole file is rewritten at each write (it
    # stays small).
    self._remote = fileio.is_remote(workdir)
    if self._remote:
      self._lines = (
        _whole_lines(fileio.read_bytes(self._path), self._path)
        if fileio.exists(self._path)
        else b""
      )
    else:
      # A kill can leave a torn last line: appending would glue two records.
      if os.path.exists(self._path):
        with open(self._path, "rb") as f:
          data = f.read()
        if len(whole := _whole_lines(data, self._path)) < len(data):
          os.truncate(self._path, len(whole))
      self._jsonl = open(self._path, "a")
    if "tensorboard" not in writers:
      return
    SummaryWriter = _tensorboardx_writer()
    # On a bucket the events are written to a local folder and each file is uploaded whole after
    # every write: tensorboardX's own bucket writer rewrites its object under a generation
    # precondition and dies when a retry of a write whose answer was lost meets that precondition
    # (docs/storage.md, retries).
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
    if self._tb is not None:
      for k, v in clean.items():
        if isinstance(v, float):
          self._tb.add_scalar(k, v, step)
      self._tb.flush()
      if self._tb_remote:
        fileio.upload(self._tb_local, self._tb_remote)
    if self._wandb is not None:
      self._wandb.log(step, clean)
    if echo and self.echo:
      # quiet while the data is clean
      shown = " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in clean.items()
        if not (k.startswith("bad_records/") and v == 0)
      )
      self.echo(f"[step {step}] {shown}")

  def table(self, step: int, name: str, results: dict) -> None:
    """An evaluation's {eval/EVALUATOR/METRIC: value} as one table (W&B; the scalars went to every
    sink)."""
    if self.enabled and self._wandb is not None:
      rows = [[*k.split("/", 2)[1:], float(v)] for k, v in results.items() if k.startswith("eval/")]
      self._wandb.table(step, name, ["evaluator", "metric", "value"], rows)

  def close(self) -> None:
    if self.enabled:
      if not self._remote:
        self._jsonl.close()
      if self._tb is not None:
        self._tb.close()
        if self._tb_remote:
          fileio.upload(self._tb_local, self._tb_remote)
          shutil.rmtree(self._tb_local, ignore_errors=True)
      if self._wandb is not None:
        self._wandb.close()


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
  """metrics.jsonl -> {step: merged record}; a step logged again after a resume keeps the last
  value.

  A line that is not a JSON record with a step (torn by a kill) is skipped with a warning naming the
  file.
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


def cpu_model() -> str:
  """This machine's CPU model name (Linux), else the platform's processor string."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def measure_matmul_peak(dtype="float32") -> float:
  """FLOP/s of a square matmul on the default device: the MFU denominator when no peak is given."""
  import jax
  import jax.numpy as jnp

  # Big enough to reach the peak, small enough not to delay the first step (on a CPU 1024 does
  # both).
  n = 1024 if jax.default_backend() == "cpu" else 8192
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(3):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n**3 / best
