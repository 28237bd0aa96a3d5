"""Where the time to the first step goes, and the persistent compilation cache that cuts it on a
restart.

    clock = StartupClock(started=process_start)   # perf_counter() seconds when the process began
    ...; clock.mark("devices"); ...; clock.mark("data")
    print(clock.report())   # "Start-up: 31.2 s to the first step: imports 3.1 s, devices 0.2 s, ..."

A part is the wall-clock seconds since the previous mark. Compilation is counted apart, from JAX's
own monitoring events (tracing, lowering to StableHLO, the XLA compile or the persistent cache's
load), because it happens inside whichever part first calls a jitted function.
"""

import os
import time

import jax
from jax.experimental.compilation_cache import compilation_cache

from tripletclip_jax import fileio

# JAX's monitoring events (jax/_src/dispatch.py and compiler.py); the listener sums them per
# process.
_DURATIONS = {
  "/jax/core/compile/jaxpr_trace_duration": "trace",
  "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
  "/jax/core/compile/backend_compile_duration": "xla",
}
_CACHE_REQUESTS = "/jax/compilation_cache/compile_requests_use_cache"
_CACHE_HITS = "/jax/compilation_cache/cache_hits"
_totals = {"trace": 0.0, "lower": 0.0, "xla": 0.0, "programs": 0, "cache_requests": 0, "hits": 0}
_listening = []


def _on_duration(event: str, seconds: float, **_) -> None:
  part = _DURATIONS.get(event)
  if part is not None:
    _totals[part] += seconds
    _totals["programs"] += part == "xla"


def _on_event(event: str, **_) -> None:
  if event == _CACHE_REQUESTS:
    _totals["cache_requests"] += 1
  elif event == _CACHE_HITS:
    _totals["hits"] += 1


def _listen() -> None:
  """Registers the listeners once per process (JAX keeps them for the process's life)."""
  if not _listening:
    jax.monitoring.register_event_duration_secs_listener(_on_duration)
    jax.monitoring.register_event_listener(_on_event)
    _listening.append(True)


class StartupClock:
  """Seconds spent in each part of a run's start, from `started` (the process's start, in
  `time.perf_counter()` seconds; None: from this clock's creation) to the end of the first step."""

  def __init__(self, started: float | None = None):
    _listen()
    now = time.perf_counter()
    self.parts: dict[str, float] = {}
    if started is not None:
      self.parts["imports"] = now - started  # the interpreter's imports and the command line
    self.t0, self.last = started if started is not None else now, now
    self.compile0 = dict(_totals)
    self.done = False

  def mark(self, part: str) -> None:
    """Ends `part`: the seconds since the previous mark are added to it."""
    if self.done:
      return
    now = time.perf_counter()
    self.parts[part] = self.parts.get(part, 0.0) + now - self.last
    self.last = now

  def compiled(self) -> dict:
    """Compilation since the clock started: seconds tracing, lowering and in XLA (or loading from
    the persistent cache), the programs compiled, and the persistent cache's lookups and hits."""
    return {k: _totals[k] - self.compile0[k] for k in _totals}

  def finish(self) -> dict:
    """Stops the clock at the end of the first step; {startup/PART_s, startup/compile_s, ...} for
    the metrics."""
    self.done = True
    c = self.compiled()
    record = {f"startup/{k}_s": v for k, v in self.parts.items()}
    record["startup/total_s"] = self.last - self.t0
    record["startup/compile_s"] = c["trace"] + c["lower"] + c["xla"]
    record["startup/programs"] = c["programs"]
    record["startup/cache_hits"] = c["hits"]
    return record

  def report(self) -> str:
    """One line: the parts in order, then what compiling took and what the cache gave."""
    c = self.compiled()
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in self.parts.items())
    cache = (
      f"{c['hits']} of {c['cache_requests']} from the persistent cache"
      if c["cache_requests"]
      else "no persistent cache"
    )
    return (
      f"Start-up: {self.last - self.t0:.1f} s to the first step: {parts}; compiling "
      f"{c['trace'] + c['lower'] + c['xla']:.1f} s of it (trace {c['trace']:.1f}, lower "
      f"{c['lower']:.1f}, XLA or cache {c['xla']:.1f}; {c['programs']} programs, {cache})"
    )


def use_compilation_cache(setting: str | None, workdir: str) -> str | None:
  """Points JAX's persistent compilation cache at `setting` ("": off; None: WORKDIR/jax_cache,
  unless the environment already names a cache, as JAX_COMPILATION_CACHE_DIR does); returns the
  folder in use, or None. A restart of the same program on the same devices then loads the
  executables instead of compiling them. Every program is cached, however quick to compile: on a
  restart the many small ones add up."""
  if setting == "":
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  current = jax.config.jax_compilation_cache_dir
  path = setting if setting is not None else (current or fileio.join(workdir, "jax_cache"))
  jax.config.update("jax_enable_compilation_cache", True)
  if path != current:
    compilation_cache.set_cache_dir(path)
    compilation_cache.reset_cache()  # JAX opens its cache once: a new folder needs a fresh start
  # every program, unless the environment says otherwise
  for name in ("min_compile_time_secs", "min_entry_size_bytes"):
    if f"JAX_PERSISTENT_CACHE_{name.upper()}" not in os.environ:
      jax.config.update(f"jax_persistent_cache_{name}", 0)
  return path
