"""One trainer per workdir: an exclusive lock held for the life of the run.

Two trainers on one workdir would interleave their checkpoints or kill each
other's saves. On a local or NFS disk the lock is `fcntl.flock` on
WORKDIR/trainer.lock: the kernel drops it when the process dies, so a run
killed with SIGKILL never blocks its own restart. The file names the holder.
Taking the lock is also the first write to the workdir, so a read-only
workdir fails here, before the model is built.
"""

import datetime
import fcntl
import json
import os
import socket

LOCK_FILE = "trainer.lock"


class WorkdirBusy(ValueError):
  """Another live trainer holds the workdir."""


class WorkdirLock:
  """Context manager: `with WorkdirLock(workdir): train()`; raises WorkdirBusy or ValueError (unwritable)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd = None

  def __enter__(self):
    try:
      os.makedirs(os.path.dirname(self.path), exist_ok=True)
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise ValueError(f"Cannot write to the workdir {os.path.dirname(self.path)} ({e.strerror}): choose a "
                       "writable --workdir.") from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 4096, 0).decode("utf-8", "replace")
      os.close(fd)
      try:
        h = json.loads(holder)
        who = f"pid {h['pid']} on {h['host']}, since {h['started']}"
      except (ValueError, KeyError, TypeError):
        who = "an unknown process"
      raise WorkdirBusy(f"{os.path.dirname(self.path)} is in use by another trainer ({who}): wait for it or stop "
                        "it, or choose another --workdir.") from None
    info = {"host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.datetime.now().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    self._fd = fd
    return self

  def __exit__(self, *_):
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None
