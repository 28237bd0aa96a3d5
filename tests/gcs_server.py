"""A real Google Cloud Storage emulator (gcp-storage-emulator, from PyPI) on a free loopback port."""

import os
import socket
import subprocess
import sys
import time

import pytest

BUCKET = "tripletclip-test"


# The emulator's own entry point with two server settings, neither of which changes any request's answer:
# - In memory it still serialises the metadata of every object into an in-memory ".meta" file after each upload,
#   which is only read back at start-up: N uploads cost O(N^2) (a checkpoint without OCDBT is hundreds of objects).
# - Its single-threaded HTTP server listens with Python's default backlog of 5 connections; tensorstore opens
#   dozens at once per process, the rest are dropped and retried after TCP's 1-3 s back-off (a 4-process
#   checkpoint took 78 s instead of 15 s).
_LAUNCH = """
import sys
from gcp_storage_emulator import storage
from gcp_storage_emulator.__main__ import main
from http import server
storage.Storage._write_config_to_file = lambda self: None
server.HTTPServer.request_queue_size = 1024
main(sys.argv[1:])
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def client_env(url: str) -> dict:
  """The standard emulator settings of each client layer, and no credential look-ups off this machine."""
  return {"STORAGE_EMULATOR_HOST": url,  # gcsfs (epath's gs:// backend), google-cloud-storage (tensorboardX)
          "TENSORSTORE_GCS_HTTP_URL": url,  # tensorstore (Orbax's array data)
          "FSSPEC_GS_TOKEN": "anon", "NO_GCE_CHECK": "true",
          # Where a client still looks for a metadata server, it finds a closed loopback port at once.
          "GCE_METADATA_HOST": "127.0.0.1:9", "GCE_METADATA_IP": "127.0.0.1:9", "GCE_METADATA_ROOT": "127.0.0.1:9"}


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """(bucket URL, env) of an in-memory emulator that lives for the test module."""
  pytest.importorskip("gcp_storage_emulator")
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  proc = subprocess.Popen([sys.executable, "-c", _LAUNCH, "start", "--host", "127.0.0.1", "--port", str(port),
                           "--in-memory", "--default-bucket", BUCKET],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  t = time.time()
  while True:
    try:
      socket.create_connection(("127.0.0.1", port), timeout=1).close()
      break
    except OSError:
      assert proc.poll() is None and time.time() - t < 60, "the storage emulator did not start"
      time.sleep(0.2)
  yield f"gs://{BUCKET}", dict(os.environ, **client_env(url))
  proc.terminate()
  proc.wait(timeout=30)
