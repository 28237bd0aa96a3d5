"""Paths that may be local or in a bucket (`gs://...`): one thin layer over etils.epath and fsspec.

Every user-facing path (workdir, data, evaluation folders, exports) goes through here, so local
disks and buckets take the same code. epath picks TensorFlow's gfile for gs:// when TensorFlow is
installed; we default `EPATH_USE_TF=false` so that gs:// always goes through gcsfs (fsspec), the
same client whether or not TensorFlow is around. Orbax's array data goes through tensorstore, which
has its own GCS client. Emulators: gcsfs and google-cloud-storage read `STORAGE_EMULATOR_HOST`,
tensorstore reads `TENSORSTORE_GCS_HTTP_URL`.

gcsfs's experimental zonal-bucket support asks a gRPC control plane for every bucket's layout and,
where that is unreachable, waits about a minute per call before falling back; it is off unless
`GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=true` is set (only zonal "Rapid" buckets need it).
"""

import builtins
import concurrent.futures
import os
import shutil
import time

os.environ.setdefault("EPATH_USE_TF", "false")
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

from etils import epath  # noqa: E402

Path = epath.Path


class StorageError(OSError):
  """Storage that failed past its clients' retries; the message names the path and what is still
  intact."""


def is_remote(path) -> bool:
  """True for gs://, s3:// and other URLs; False for local paths."""
  return "://" in os.fspath(path)


def absolute(path) -> str:
  """A local path made absolute; a URL as it is (os.path.abspath would turn gs://b into
  CWD/gs:/b)."""
  path = os.fspath(path)
  return path if is_remote(path) else os.path.abspath(path)


def join(*parts) -> str:
  return os.fspath(Path(parts[0]).joinpath(*parts[1:]))


def exists(path) -> bool:
  return Path(path).exists()


def isdir(path) -> bool:
  return Path(path).is_dir()


def listdir(path) -> list[str]:
  """Names (not paths) in a folder."""
  return [p.name for p in Path(path).iterdir()]


def open(path, mode: str = "r"):  # noqa: A001 - the one open() for local and remote paths
  return Path(path).open(mode)


def glob(pattern: str) -> list[str]:
  """Sorted matches of a glob whose wildcards are in the file name or below a fixed folder."""
  pattern = os.fspath(pattern)
  if not is_remote(pattern):
    import glob as globlib

    return sorted(globlib.glob(pattern))
  fixed = []
  for part in pattern.split("/"):
    if any(ch in part for ch in "*?["):
      break
    fixed.append(part)
  root = "/".join(fixed)
  rest = pattern[len(root) :].lstrip("/")
  return (
    sorted(os.fspath(p) for p in Path(root).glob(rest))
    if rest
    else ([root] if exists(root) else [])
  )


def getsize(path) -> int:
  return Path(path).stat().length if is_remote(path) else os.path.getsize(path)


def remove(path) -> None:
  Path(path).unlink()


def fsspec_fs(path):
  """The fsspec filesystem that serves a URL (for ranged reads, which epath has no call for):
  epath's own client, so that the process has one listing cache (a second client would list a moved
  folder, and Orbax would see it)."""
  path = os.fspath(path)
  if path.startswith("gs://"):
    from etils.epath import backend

    return backend.fsspec_backend.fs(path)
  import fsspec

  return fsspec.core.url_to_fs(path)[0]  # epath maps schemes it does not know to the local disk


def forget_listings(path) -> None:
  """Drops this process's cached listings of a bucket folder and everything below it, so that the
  next listing asks the server: another process may have written there since (a notebook that
  listed a run's checkpoints an hour ago would otherwise load the newest checkpoint of then)."""
  path = os.fspath(path)
  if not is_remote(path):
    return
  fs = fsspec_fs(path)
  root = fs._strip_protocol(path).rstrip("/")
  for key in [k for k in list(fs.dircache) if k == root or k.startswith(root + "/")]:
    fs.dircache.pop(key, None)
  fs.invalidate_cache(path)  # and its parents' listings, which name it


def read_bytes(path) -> bytes:
  """A whole file; on a bucket one GET (epath's open asks for the object's metadata first: two round
  trips)."""
  if is_remote(path):
    return fsspec_fs(path).cat_file(os.fspath(path))
  return Path(path).read_bytes()


def write_bytes(path, data: bytes) -> None:
  """Writes a whole file: atomically on a local disk (temporary file + rename); one object upload on
  a bucket."""
  path = os.fspath(path)
  if is_remote(path):
    # one request, retried by gcsfs (a resumable session is two)
    fsspec_fs(path).pipe_file(path, data)
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  with builtins.open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def upload(local, remote, threads: int = 16) -> None:
  """Copies a local file or folder (recursively) to a path that may be in a bucket; into a bucket,
  `threads` objects at a time (each object is one round trip or more: one at a time, a folder of
  many small files waits on latency)."""
  local, remote = os.fspath(local), os.fspath(remote)
  if not is_remote(remote):
    if os.path.isdir(local):
      shutil.copytree(local, remote, dirs_exist_ok=True)
    else:
      os.makedirs(os.path.dirname(os.path.abspath(remote)), exist_ok=True)
      shutil.copyfile(local, remote)
    return
  fs = fsspec_fs(remote)
  if not os.path.isdir(local):
    _put_file(fs, local, remote)
    return
  files = [os.path.relpath(os.path.join(r, f), local) for r, _, fs_ in os.walk(local) for f in fs_]
  put = lambda rel: _put_file(fs, os.path.join(local, rel), f"{remote.rstrip('/')}/{rel}")
  # manifest.json files last, once the rest is written: their presence says a folder is complete
  last = [f for f in files if os.path.basename(f) == "manifest.json"]
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    list(pool.map(put, [f for f in files if f not in last]))
  for rel in last:
    put(rel)


def _put_file(fs, local: str, remote: str, tries: int = 5) -> None:
  """One file to a bucket, again after a dropped connection: gcsfs retries the answers it is given
  (5xx, 429) but not a connection lost mid-request, and writing the whole object again is
  idempotent."""
  import aiohttp

  for attempt in range(tries):
    try:
      fs.put_file(local, remote)
      return
    except (aiohttp.ClientError, ConnectionError, TimeoutError):
      if attempt == tries - 1:
        raise
      time.sleep(0.2 * 2**attempt)


def local_copy(path, into: str) -> str:
  """A local path with the contents of `path`: itself when local, else a download into the folder
  `into`."""
  path = os.fspath(path)
  if not is_remote(path):
    return path
  dst = os.path.join(into, os.path.basename(path.rstrip("/")))
  fs = fsspec_fs(path)
  if fs.isdir(path):
    fs.get(path.rstrip("/") + "/", dst, recursive=True)
  else:
    fs.get_file(path, dst)
  return dst


def rmtree(path, passes: int = 5) -> None:
  """Deletes a folder and everything in it. On a bucket, object by object: a 404 counts as done (a
  retried DELETE whose first answer was lost already happened, as GCS's retry guidance says), a
  dropped connection is retried, and the folder is listed again until nothing is left (StorageError
  after `passes`)."""
  path = os.fspath(path)
  if not is_remote(path):
    shutil.rmtree(path, ignore_errors=True)
    return
  import aiohttp

  fs, root, left = fsspec_fs(path), path.rstrip("/"), []
  for attempt in range(passes):
    try:
      fs.invalidate_cache()
      left = fs.find(root) + [root + "/"]  # the last: a folder placeholder object, if any
      for obj in left:
        try:
          fs.rm_file(obj)
        except FileNotFoundError:
          pass
      fs.invalidate_cache()
      if not fs.find(root):
        return
    except (aiohttp.ClientError, ConnectionError, TimeoutError):
      pass
    time.sleep(0.2 * 2**attempt)
  raise StorageError(
    f"Could not delete {path}: {len(left)} objects were still listed after {passes} passes."
  )


def move(src, dst) -> None:
  """Moves a file or folder; on a bucket, a recursive copy then delete (not atomic)."""
  src, dst = os.fspath(src), os.fspath(dst)
  if not is_remote(src):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    os.replace(src, dst)
    return
  fs = fsspec_fs(src)
  fs.mv(src, dst, recursive=True)
  fs.invalidate_cache()
  # What mv leaves: folder placeholder objects ("NAME/"), which keep the folder listed.
  if fs.exists(src):
    fs.rm(src, recursive=True)
    fs.invalidate_cache()
