"""Test setup: 8 fake CPU devices for sharding tests, offline hubs."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # tests/tiny_models.py
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# torch must load before TensorFlow in one process, or the interpreter segfaults
# (their bundled libraries clash in the other order).
try:
  import torch  # noqa: F401
except ImportError:
  pass
