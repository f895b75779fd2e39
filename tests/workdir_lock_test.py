"""Tests for pav_jax.workdir_lock: a second holder is refused, naming it."""

import os
import subprocess
import sys

import pytest

from pav_jax import workdir_lock

_HOLDER = """
import sys, time
from pav_jax import workdir_lock
lock = workdir_lock.acquire(sys.argv[1])
print("held", flush=True)
time.sleep(60)
"""


def test_second_run_is_refused_and_lock_dies_with_the_process(tmp_path):
  proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)],
                          stdout=subprocess.PIPE, text=True)
  try:
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(workdir_lock.WorkdirLockedError) as e:
      workdir_lock.acquire(tmp_path)
    assert f"pid {proc.pid}" in str(e.value)
    assert str(tmp_path) in str(e.value)
  finally:
    proc.kill()  # SIGKILL: no cleanup runs, the kernel drops the flock.
    proc.wait()
  with workdir_lock.hold(tmp_path) as lock:
    assert f'"pid": {os.getpid()}' in lock.path.read_text()
  # Released: can be taken again.
  workdir_lock.acquire(tmp_path).release()
