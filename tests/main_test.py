"""Tests for the entry point: --list, config validation, the workdir lock."""

import os
import subprocess
import sys
from pathlib import Path

from pav_jax import main as main_lib
from pav_jax import workdir_lock

ROOT = Path(__file__).resolve().parents[1]


def _main(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  return subprocess.run([sys.executable, "-m", "pav_jax.main", *args],
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300)


def test_list_text_has_stages_and_every_default_key():
  text = main_lib.list_text()
  for stage in ("sft", "label", "verifiers", "search"):
    assert f"\n  {stage}\n" in text
  assert "  sft.batch_size = 64\n" in text
  assert "  search.ns = '2,4,8,16'\n" in text


def test_list_flag_exits_0():
  proc = _main("--list", "--config=configs/demo.py")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "  sft.steps = 1500  [400]" in proc.stdout


def test_bad_value_stops_before_any_stage(tmp_path):
  proc = _main("--config=configs/demo.py", f"--workdir={tmp_path}",
               "--config.search.ns=2,x", "--config.sft.batch_size=0")
  assert proc.returncode != 0
  assert ("search.ns must be a comma-separated list of positive integers, "
          "got '2,x'") in proc.stderr
  assert "sft.batch_size must be a positive integer, got 0" in proc.stderr
  assert not (tmp_path / "sft").exists()


def test_second_run_on_a_locked_workdir_stops_naming_the_holder(tmp_path):
  lock = workdir_lock.acquire(tmp_path)  # this process plays the other run
  try:
    proc = _main("--config=configs/demo.py", f"--workdir={tmp_path}",
                 "--config.sft.steps=1")
  finally:
    lock.release()
  assert proc.returncode != 0
  assert f"is in use by pid {os.getpid()}" in proc.stderr, proc.stderr[-2000:]
  assert not (tmp_path / "sft").exists()
