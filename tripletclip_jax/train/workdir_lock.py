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
dead pid, or another boot). Every write is conditional on the object's
generation (GCS preconditions): taking a free lock creates it only if it
does not exist (`ifGenerationMatch=0`), or replaces only the stale
generation that was read; a heartbeat and the release touch only the
generation we wrote. Of two trainers starting at once exactly one wins. A
write whose answer was lost and is retried meets its own precondition
failure; the object's token then says whether it was ours.
"""

import datetime
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid

from tripletclip_jax import fileio

log = logging.getLogger(__name__)

LOCK_FILE = "trainer.lock"
HEARTBEAT_S, STALE_S = 30.0, 300.0


class WorkdirBusy(ValueError):
  """Another live trainer holds the workdir."""


def _holder() -> dict:
  try:
    with open("/proc/sys/kernel/random/boot_id") as f:
      boot = f.read().strip()
  except OSError:
    boot = ""
  return {
    "host": socket.gethostname(),
    "pid": os.getpid(),
    "boot": boot,
    "started": datetime.datetime.now().isoformat(timespec="seconds"),
  }


def _busy(workdir: str, h: dict) -> WorkdirBusy:
  who = (
    f"pid {h.get('pid')} on {h.get('host')}, since {h.get('started')}"
    if h
    else "an unknown process"
  )
  return WorkdirBusy(
    f"{workdir} is in use by another trainer ({who}): wait for it or stop it, or choose "
    "another --workdir."
  )


def WorkdirLock(workdir: str):  # noqa: N802 - a class-like factory
  """Context manager: `with WorkdirLock(workdir): train()`; raises WorkdirBusy or ValueError
  (unwritable)."""
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
      raise ValueError(
        f"Cannot write to the workdir {os.path.dirname(self.path)} ({e.strerror}): choose a "
        "writable --workdir."
      ) from None
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


def _retry():
  """google-cloud-storage's retry (transient errors, backoff) bounded by one heartbeat interval, so
  that a bucket that is gone cannot hold a heartbeat (or a start) for the library's default 120
  s."""
  from google.cloud.storage.retry import DEFAULT_RETRY

  return DEFAULT_RETRY.with_timeout(HEARTBEAT_S)


class BucketLock:
  """The lock object WORKDIR/trainer.lock in a bucket, with a heartbeat (see the module
  docstring)."""

  def __init__(self, workdir: str):
    self.workdir, self.path = workdir, fileio.join(workdir, LOCK_FILE)
    self._stop = threading.Event()
    self._thread = None
    self.lost = None  # set to the new holder when a heartbeat finds the lock taken over
    self._client = None

  def _blob(self):
    # gcsfs's dependency; it reads STORAGE_EMULATOR_HOST like gcsfs does
    from google.cloud import (
      storage,
    )

    bucket, _, name = self.path[len("gs://") :].partition("/")
    if self._client is None:
      self._client = storage.Client(project=None)  # no project is needed to read and write objects
    return self._client.bucket(bucket).blob(name)

  def _read(self) -> tuple[dict | None, int]:
    """(holder, generation) of the lock object; (None, 0) when there is none."""
    from google.api_core import exceptions

    blob = self._blob()
    try:
      data = blob.download_as_bytes(retry=_retry(), timeout=HEARTBEAT_S)
    except exceptions.NotFound:
      return None, 0
    try:
      h = json.loads(data)
    except ValueError:
      h = {}
    return h if isinstance(h, dict) else {}, blob.generation

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

  def _write(self, if_generation: int) -> bool:
    """Writes our holder record if the object is at `if_generation` (0: absent); False if it is
    not."""
    from google.api_core import exceptions

    blob = self._blob()
    data = json.dumps(dict(self._info, heartbeat=time.time())).encode()
    try:
      blob.upload_from_string(
        data,
        content_type="application/json",
        if_generation_match=if_generation,
        retry=_retry(),
        timeout=HEARTBEAT_S,
      )
      self._generation = blob.generation
    except exceptions.PreconditionFailed:
      # a retried write whose first try went through fails its own precondition
      h, gen = self._read()
      if not h or h.get("token") != self._info["token"]:
        return False
      self._generation = gen
    return True

  def __enter__(self):
    from google.api_core import exceptions

    try:
      h, gen = self._read()
      if h is not None and not self._stale(h):
        raise _busy(self.workdir, h)
      self._info = dict(_holder(), token=uuid.uuid4().hex)
      won = self._write(gen)
    except exceptions.GoogleAPIError as e:
      raise ValueError(
        f"Cannot write to the workdir {self.workdir} ({type(e).__name__}: "
        f"{str(e).splitlines()[0][:200]}): check the bucket and its permissions."
      ) from None
    if not won:
      raise _busy(self.workdir, self._read()[0] or {})
    self._thread = threading.Thread(target=self._beat, daemon=True)
    self._thread.start()
    return self

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      try:
        if not self._write(self._generation):
          self.lost = self._read()[0] or {}
          log.error(
            "%s",
            _busy(self.workdir, self.lost)
            .args[0]
            .replace("is in use by another trainer", "was taken over by another trainer"),
          )
          return
      except Exception as e:  # noqa: BLE001 - retried at the next beat; stale only after STALE_S without one
        log.warning(
          "Heartbeat of %s failed (%s); retrying in %.0f s.",
          self.path,
          type(e).__name__,
          HEARTBEAT_S,
        )

  def __exit__(self, *_):
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      if self.lost is None:
        from google.api_core import exceptions

        try:
          self._blob().delete(
            if_generation_match=self._generation, retry=_retry(), timeout=HEARTBEAT_S
          )
        except (exceptions.NotFound, exceptions.PreconditionFailed):
          pass  # taken over meanwhile: the new holder's lock stays
