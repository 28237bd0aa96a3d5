"""One trainer per workdir: an exclusive lock held for the life of the run.

Two trainers on one workdir would interleave their checkpoints or kill each
other's saves. On a local or NFS disk the lock is `fcntl.flock` on
WORKDIR/trainer.lock: the kernel drops it when the process dies, so a run
killed with SIGKILL never blocks its own restart. The file names the holder.
Taking the lock is also the first write to the workdir, so a read-only
workdir fails here, before the model is built.

A bucket has no flock. There the lock is the object WORKDIR/trainer.lock
naming its holder, with a heartbeat rewritten every HEARTBEAT_S by a
background thread. It counts as free when it is missing, when its heartbeat
is older than STALE_S, or when its holder was on this host and is gone (a
dead pid, or another boot). Taking it writes our token and reads it back a
moment later: of two trainers starting at once, the last writer wins and
the other stops.
"""

import datetime
import fcntl
import json
import os
import socket
import threading
import time
import uuid

from tripletclip_jax import fileio

LOCK_FILE = "trainer.lock"
HEARTBEAT_S, STALE_S, SETTLE_S = 30.0, 300.0, 2.0


class WorkdirBusy(ValueError):
  """Another live trainer holds the workdir."""


def _holder() -> dict:
  try:
    with open("/proc/sys/kernel/random/boot_id") as f:
      boot = f.read().strip()
  except OSError:
    boot = ""
  return {"host": socket.gethostname(), "pid": os.getpid(), "boot": boot,
          "started": datetime.datetime.now().isoformat(timespec="seconds")}


def _busy(workdir: str, h: dict) -> WorkdirBusy:
  who = f"pid {h.get('pid')} on {h.get('host')}, since {h.get('started')}" if h else "an unknown process"
  return WorkdirBusy(f"{workdir} is in use by another trainer ({who}): wait for it or stop it, or choose "
                     "another --workdir.")


def WorkdirLock(workdir: str):  # noqa: N802 - a class-like factory
  """Context manager: `with WorkdirLock(workdir): train()`; raises WorkdirBusy or ValueError (unwritable)."""
  return BucketLock(workdir) if fileio.is_remote(workdir) else FileLock(workdir)


class FileLock:
  """flock on a local (or NFS) WORKDIR/trainer.lock."""

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
      except ValueError:
        h = {}
      raise _busy(os.path.dirname(self.path), h) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(_holder()).encode(), 0)
    self._fd = fd
    return self

  def __exit__(self, *_):
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


class BucketLock:
  """The lock object WORKDIR/trainer.lock in a bucket, with a heartbeat (see the module docstring)."""

  def __init__(self, workdir: str):
    self.workdir, self.path = workdir, fileio.join(workdir, LOCK_FILE)
    self._stop = threading.Event()
    self._thread = None

  def _read(self) -> dict | None:
    try:
      return json.loads(fileio.read_bytes(self.path))
    except FileNotFoundError:
      return None
    except ValueError:
      return {}

  def _stale(self, h: dict) -> bool:
    if time.time() - h.get("heartbeat", 0) > STALE_S:
      return True
    me = _holder()
    if h.get("host") != me["host"]:
      return False
    if h.get("boot") != me["boot"]:
      return True
    try:
      os.kill(int(h["pid"]), 0)
    except ProcessLookupError:
      return True
    except (OSError, KeyError, ValueError):
      pass
    return False

  def _write(self) -> None:
    fileio.write_bytes(self.path, json.dumps(dict(self._info, heartbeat=time.time())).encode())

  def __enter__(self):
    h = self._read()
    if h is not None and not self._stale(h):
      raise _busy(self.workdir, h)
    self._info = dict(_holder(), token=uuid.uuid4().hex)
    try:
      self._write()
    except OSError as e:
      raise ValueError(f"Cannot write to the workdir {self.workdir} ({e}): check the bucket and its "
                       "permissions.") from None
    time.sleep(SETTLE_S)  # a trainer that wrote at the same moment has written by now: the last writer wins
    h = self._read()
    if not h or h.get("token") != self._info["token"]:
      raise _busy(self.workdir, h or {})
    self._thread = threading.Thread(target=self._beat, daemon=True)
    self._thread.start()
    return self

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      try:
        self._write()
      except OSError:
        pass  # a failed heartbeat is retried; the lock goes stale only after STALE_S without one

  def __exit__(self, *_):
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      h = self._read()
      if h and h.get("token") == self._info["token"]:
        fileio.remove(self.path)
