"""Tests for the rl stage: resume after SIGKILL, input checks, RFT data.

The subprocess tests share one tiny workdir (a 2-step SFT policy and a
random-weight prm_q verifier); each RL run is a few iterations. They also
share one persistent JAX compilation cache (a module tmp dir): each
subprocess would otherwise recompile the same rollout, scoring, update and
evaluation programs, which is most of their time. Resume must still be
bitwise exact with executables loaded from that cache.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from pav_jax import checkpoint as ckpt_lib
from pav_jax import config as config_lib
from pav_jax import rl_stage
from pav_jax import sft_lib
from pav_jax import transformer
from pav_jax import verifier as verifier_lib

ROOT = Path(__file__).resolve().parents[1]

TINY = [
    "--config.task.num_train=256", "--config.task.num_eval=8",
    "--config.model.num_layers=1", "--config.model.embed_dim=32",
    "--config.model.hidden_dim=64", "--config.model.num_heads=2",
    "--config.model.num_kv_heads=1", "--config.model.head_dim=16",
    "--config.sft.batch_size=16", "--config.sft.max_len=80",
    "--config.sft.warmup_steps=1", "--config.sft.log_every=1",
    "--config.eval.num_prompts=2", "--config.eval.samples_per_prompt=2",
    "--config.eval.batch_rows=8", "--config.sample.max_new_tokens=16",
    "--config.sample.cache_size=64",
]
RL = [
    "--config.stages=rl", "--config.rl.init=sft", "--config.rl.iterations=5",
    "--config.rl.ckpt_every=2", "--config.rl.eval_every=2",
    "--config.rl.prompts_per_iter=2", "--config.rl.samples_per_prompt=2",
    "--config.rl.num_prompts=8", "--config.rl.eval_prompts=2",
    "--config.rl.eval_samples=2", "--config.rl.passn_max=2",
    "--config.rl.passn_prompts=2", "--config.rl.max_steps=6",
    "--config.rl.policy_lr=1e-2", "--config.rl.value_lr=1e-2",
    "--config.rl.alpha=3.0", "--config.rl.max_new_tokens=16",
    "--config.rl.max_prompt_len=40",
]
_ENV = {}  # the shared compilation cache, set by the `base` fixture
MODEL = config_lib.PRESETS["tiny"]().replace(
    vocab_size=320, num_layers=1, embed_dim=32, hidden_dim=64, num_heads=2,
    num_kv_heads=1, head_dim=16)


def _main(workdir, *extra, check=True):
  cmd = [sys.executable, "-m", "pav_jax.main", "--config=configs/demo.py",
         f"--workdir={workdir}", *TINY, *extra]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="",  # one device
             **_ENV)
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  if check and proc.returncode != 0:
    raise AssertionError(proc.stderr[-3000:])
  return proc


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  """A workdir with a tokenizer, a 2-step SFT policy, no verifier."""
  _ENV.update(
      JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  d = tmp_path_factory.mktemp("rl_base")
  _main(d, "--config.stages=sft", "--config.sft.steps=2")
  return d


def _with_verifier(base, dest):
  shutil.copytree(base, dest)
  model = verifier_lib.create(MODEL, seed=3)
  params = nnx.to_pure_dict(nnx.split(model, nnx.Param)[1])
  params["head_D"] = np.full_like(params["head_D"], 0.5)
  ckpt_lib.save_params(dest / "verifiers" / "prm_q" / "params", params)
  return dest


def _rl_params(workdir):
  _, abstract = transformer.abstract_params(MODEL)
  return ckpt_lib.load_params_tree(
      Path(workdir) / "rl" / "policy_params", abstract)


def _rows(workdir):
  rows = [json.loads(line) for line in
          (Path(workdir) / "rl" / "metrics.jsonl").read_text().splitlines()]
  drop = ("rollout_s", "score_s", "update_s")
  return [{k: v for k, v in r.items() if k not in drop} for r in rows]


def test_sigkill_then_resume_equals_uninterrupted(base, tmp_path):
  a = _with_verifier(base, tmp_path / "a")
  b = _with_verifier(base, tmp_path / "b")
  _main(a, *RL)
  killed = _main(b, *RL, "--config.rl.kill_at_step=4", check=False)
  assert killed.returncode == -9, killed.stderr[-2000:]
  assert not (b / "rl" / "DONE.json").exists()
  resumed = _main(b, *RL)
  # Step 4 may have been mid-save (async) when the kill landed: then step 2.
  assert ("resumed from step 4" in resumed.stderr
          or "resumed from step 2" in resumed.stderr), resumed.stderr[-2000:]
  jax.tree.map(np.testing.assert_array_equal, _rl_params(a), _rl_params(b))
  # Same per-iteration metrics (loss, KL, accuracy ...), no duplicate rows.
  assert _rows(a) == _rows(b)
  summary = json.loads((b / "rl" / "DONE.json").read_text())
  assert summary["curve"]["iteration"] == [0, 2, 4, 5]  # + the last one
  assert set(summary["pass@n"]["final"]) == {"1", "2"}
  assert summary["arm"]["alpha"] == 3.0 and summary["arm"]["scorer"] == "pav"
  # The policy moved (lr 1e-2): RL did update it.
  _, sft = transformer.abstract_params(MODEL)
  sft = ckpt_lib.load_params_tree(a / "sft" / "params", sft)
  moved = jax.tree.leaves(jax.tree.map(
      lambda x, y: float(np.abs(np.asarray(x) - np.asarray(y)).max()),
      sft, _rl_params(a)))
  assert max(moved) > 0
  assert "## Online RL (rl stage)" in (a / "report.md").read_text()
  again = _main(b, *RL)
  assert "already done" in again.stderr


@pytest.mark.parametrize("flag, message", [
    ("--config.rl.estimator=nope", "rl.estimator"),
    ("--config.rl.alpha=-1.0", "rl.alpha"),
    ("--config.rl.dense=nope", "rl.dense"),
    ("--config.rl.init=nope", "rl.init"),
])
def test_wrong_inputs_fail_naming_the_key(base, tmp_path, flag, message):
  proc = _main(_with_verifier(base, tmp_path / "w"), *RL, flag, check=False)
  assert proc.returncode != 0
  assert message in proc.stderr, proc.stderr[-2000:]


def test_missing_verifier_names_the_stage(base, tmp_path):
  d = tmp_path / "nv"
  shutil.copytree(base, d)
  proc = _main(d, *RL, check=False)
  assert proc.returncode != 0
  assert "verifiers stage" in proc.stderr and "prm_q" in proc.stderr, (
      proc.stderr[-2000:])


def test_token_sft_data_dedups_and_masks_response():
  tokens = np.array([[2, 5, 6, 7, 8, 1, 0],
                     [2, 5, 6, 7, 8, 1, 0],  # duplicate row: kept once
                     [2, 5, 9, 9, 1, 0, 0]], np.int32)
  data = sft_lib.token_sft_data(tokens, np.array([2, 2, 2]),
                                np.array([4, 4, 3]), max_len=8, pad_id=0)
  assert data["tokens"].shape == (2, 8)
  np.testing.assert_array_equal(data["tokens"][1], [2, 5, 9, 9, 1, 0, 0, 0])
  np.testing.assert_array_equal(data["loss_mask"][0], [0, 0, 1, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(data["valid"][1],
                                [1, 1, 1, 1, 1, 0, 0, 0])


def test_curves_accumulate_sampled_tokens():
  hist = [{"step": 1, "sampled_tokens": 10.0, "score_sampled_tokens": 5.0},
          {"step": 2, "sampled_tokens": 20.0},
          {"step": 2, "eval/pass@1": 0.5}]
  c = rl_stage.curves(hist, {"pass@1": 0.25})
  assert c == {"iteration": [0, 2], "sampled_tokens": [0.0, 35.0],
               "pass@1": [0.25, 0.5]}


def test_init_metrics_reused_only_when_made_from_the_same_settings(tmp_path):
  path = tmp_path / "eval_init.json"
  calls = []

  def compute():
    calls.append(1)
    return {"pass@1": 0.5 + len(calls)}

  a = {"init": {"init": "sft"}, "prompts": 64, "k": 4}
  assert rl_stage.init_metrics(path, a, compute) == {"pass@1": 1.5}
  assert rl_stage.init_metrics(path, a, compute) == {"pass@1": 1.5}  # reused
  assert len(calls) == 1
  b = dict(a, prompts=32)  # another setting (or a stale copied-in file)
  assert rl_stage.init_metrics(path, b, compute) == {"pass@1": 2.5}
  path.write_text('{"pass@1": 0.1}')  # an older, unlabelled cache
  assert rl_stage.init_metrics(path, b, compute) == {"pass@1": 3.5}
  assert len(calls) == 3
