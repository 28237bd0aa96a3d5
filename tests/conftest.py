"""Test setup: 8 fake CPU devices for sharding tests, offline hubs."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # tests/tiny_models.py, gcs_server.py
# tools/: the storage server and the fault proxy, shared with the storage benchmarks
sys.path.insert(
  0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
)
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Many tests build the same small models: one XLA compilation cache for this run (and the
# subprocesses it starts) compiles each program once. A fresh folder per run: nothing stale.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile

  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="tripletclip-xla-cache-")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  import atexit
  import shutil

  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)

# torch must load before TensorFlow in one process, or the interpreter segfaults
# (their bundled libraries clash in the other order).
try:
  import torch  # noqa: F401
except ImportError:
  pass

# The slowest modules first (about 100-300 s each on 2 cores). `make test` sends a whole module to
# each of its workers in collection order (--dist loadfile --no-loadscope-reorder); xdist's default
# order (modules with the most tests first) started a 3-minute module last, on one worker, while the
# others sat idle. The longest first keeps them all busy to the end.
SLOW_FIRST = (
  "test_trainer.py",
  "test_train_step.py",
  "test_gcs.py",
  "test_gcs_pod.py",
  "test_reproduce.py",
  "test_checkpoint.py",
  "test_negatives.py",
  "test_pipeline.py",
  "test_open_clip.py",
  "test_extending.py",
)


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(SLOW_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))  # stable within a module
