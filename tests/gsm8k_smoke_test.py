"""The GSM8K path through every stage, on the samples shipped in tests/."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gsm8k_smoke_config_runs_every_stage(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "pav_jax.main",
       "--config=configs/gsm8k_smoke.py", f"--workdir={tmp_path}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
      check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for stage in ("sft", "label", "verifiers", "search"):
    done = json.loads((tmp_path / stage / "DONE.json").read_text())
    assert done["identity"]["task"]["name"] == "gsm8k"
  assert "gsm8k" in (tmp_path / "report.md").read_text()


def test_setup_check_names_the_cache_key_before_any_stage_runs(tmp_path):
  from pav_jax import defaults
  from pav_jax import run_lib
  c = defaults.config_file_module("gsm8k_smoke").get_config()
  c.label.cache_size = 320
  run = run_lib.make_run(c, tmp_path, None)
  with pytest.raises(ValueError, match=r"label\.cache_size=520"):
    run_lib.check_setup(run, ["sft", "label"])
  c.label.cache_size = 544
  run_lib.check_setup(run, ["sft", "label"])
