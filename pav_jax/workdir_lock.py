"""An exclusive lock on a workdir, so two runs never write into one.

`<workdir>/.lock` is held with `fcntl.flock(LOCK_EX | LOCK_NB)` and records
who holds it (pid, host, start time). The kernel drops a flock when its
process dies, so a crashed or SIGKILLed run never leaves a stale lock: the
file may stay, the lock does not.

    with workdir_lock.hold(workdir):
      pipeline.run(...)

Filesystems without working flock (some network mounts) behave as if
unlocked on some setups; the lock is a guard against mistakes, not a
security boundary.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import pathlib
import socket
from collections.abc import Iterator

LOCK_NAME = ".lock"


class WorkdirLockedError(RuntimeError):
  """Another live process holds the workdir's lock."""


class WorkdirLock:
  """The held lock; `release()` (or process exit) frees it."""

  def __init__(self, path: pathlib.Path, fd: int):
    self.path = path
    self._fd = fd

  def release(self) -> None:
    if self._fd >= 0:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = -1


def _holder_text(path: pathlib.Path) -> str:
  try:
    info = json.loads(path.read_text())
    return (f"pid {info.get('pid')} on host {info.get('host')}, started "
            f"{info.get('started')}")
  except (OSError, ValueError):
    return "another process (its details are unreadable)"


def acquire(workdir: str | os.PathLike[str]) -> WorkdirLock:
  """Takes `<workdir>/.lock` at once or raises WorkdirLockedError.

  Raises:
    WorkdirLockedError: naming the process that holds it.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  path = workdir / LOCK_NAME
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    os.close(fd)
    if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
      raise
    raise WorkdirLockedError(
        f"workdir {workdir} is in use by {_holder_text(path)} (lock "
        f"{path}). Wait for that run to finish or stop it, or use another "
        "--workdir; two runs on one workdir would corrupt its checkpoints."
    ) from None
  info = {
      "pid": os.getpid(),
      "host": socket.gethostname(),
      "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
  }
  os.ftruncate(fd, 0)
  os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
  return WorkdirLock(path, fd)


@contextlib.contextmanager
def hold(workdir: str | os.PathLike[str]) -> Iterator[WorkdirLock]:
  """Context manager around `acquire` / `release`."""
  lock = acquire(workdir)
  try:
    yield lock
  finally:
    lock.release()
