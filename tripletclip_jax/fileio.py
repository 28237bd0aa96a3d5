"""Paths that may be local or in a bucket (`gs://...`): one thin layer over etils.epath and fsspec.

Every user-facing path (workdir, data, evaluation folders, exports) goes through here, so local disks
and buckets take the same code. epath picks TensorFlow's gfile for gs:// when TensorFlow is installed;
we default `EPATH_USE_TF=false` so that gs:// always goes through gcsfs (fsspec), the same client
whether or not TensorFlow is around. Orbax's array data goes through tensorstore, which has its own
GCS client. Emulators: gcsfs and google-cloud-storage read `STORAGE_EMULATOR_HOST`, tensorstore
reads `TENSORSTORE_GCS_HTTP_URL`.
"""

import os

os.environ.setdefault("EPATH_USE_TF", "false")

from etils import epath  # noqa: E402

Path = epath.Path


def is_remote(path) -> bool:
  """True for gs://, s3:// and other URLs; False for local paths."""
  return "://" in os.fspath(path)


def absolute(path) -> str:
  """A local path made absolute; a URL as it is (os.path.abspath would turn gs://b into CWD/gs:/b)."""
  path = os.fspath(path)
  return path if is_remote(path) else os.path.abspath(path)


def join(*parts) -> str:
  return os.fspath(Path(parts[0]).joinpath(*parts[1:]))


def exists(path) -> bool:
  return Path(path).exists()


def isdir(path) -> bool:
  return Path(path).is_dir()


def isfile(path) -> bool:
  return Path(path).exists() and not Path(path).is_dir()


def makedirs(path) -> None:
  Path(path).mkdir(parents=True, exist_ok=True)


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
  rest = pattern[len(root):].lstrip("/")
  return sorted(os.fspath(p) for p in Path(root).glob(rest)) if rest else ([root] if exists(root) else [])


def getsize(path) -> int:
  return Path(path).stat().length if is_remote(path) else os.path.getsize(path)


def remove(path) -> None:
  Path(path).unlink()


def rename(src, dst) -> None:
  """Moves a file or folder (on a bucket: copy then delete, not atomic)."""
  Path(src).rename(dst)


def fsspec_fs(path):
  """The fsspec filesystem that serves a URL (for ranged reads, which epath has no call for)."""
  import fsspec
  return fsspec.core.url_to_fs(os.fspath(path))[0]
