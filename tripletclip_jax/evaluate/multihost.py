"""Evaluation over several processes: each encodes its own slice of a benchmark, then counts are
summed.

With one process both functions are the identity, so single-host evaluation is unchanged.
"""

import jax
import numpy as np


def local_slice(items: list) -> list:
  """This process's share of a benchmark: every `process_count`-th item from `process_index`."""
  return items[jax.process_index() :: jax.process_count()]


def summed(counts: dict) -> dict:
  """{name: number} summed over every process (each passes its own counts; all must pass the same
  names)."""
  if jax.process_count() == 1:
    return dict(counts)
  from jax.experimental import multihost_utils

  keys = sorted(counts)
  total = multihost_utils.process_allgather(np.array([counts[k] for k in keys], np.float64)).sum(0)
  return {
    k: (int(v) if isinstance(counts[k], (int, np.integer)) else float(v))
    for k, v in zip(keys, total)
  }


def any_process(flag: bool) -> bool:
  """True on every process when `flag` is true on any (keeps loops with collective calls in
  step)."""
  return summed({"flag": int(flag)})["flag"] > 0


def gathered(rows: np.ndarray) -> np.ndarray:
  """Every process's `rows` [n_p, ...] concatenated in process order, on every process (n_p may
  differ)."""
  if jax.process_count() == 1:
    return rows
  from jax.experimental import multihost_utils

  counts = multihost_utils.process_allgather(np.int64(len(rows)))
  pad = np.zeros((int(counts.max()) - len(rows),) + rows.shape[1:], rows.dtype)
  # [processes, longest, ...]
  every = multihost_utils.process_allgather(np.concatenate([rows, pad]))
  return np.concatenate([every[p, :n] for p, n in enumerate(counts)])
