"""Trainer machinery: sharded == single-device, checkpoints, resume, NaN."""

import functools
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pav_jax import checkpoint as ckpt_lib
from pav_jax import config as config_lib
from pav_jax import sharding
from pav_jax import train_lib
from pav_jax import train_policy
from pav_jax import transformer

ROOT = Path(__file__).resolve().parents[1]
CFG = config_lib.ModelConfig.tiny(vocab_size=64).replace(
    num_layers=2, embed_dim=32, hidden_dim=64, num_heads=4, num_kv_heads=2,
    head_dim=8, sliding_window=4)


def _batch(step, b=16, t=12):
  rng = np.random.default_rng(step)
  tokens = rng.integers(3, CFG.vocab_size, (b, t)).astype(np.int32)
  valid = np.ones((b, t), bool)
  valid[: b // 2, t - 3:] = False
  return {"tokens": tokens, "loss_mask": valid.astype(np.int32), "valid": valid}


def _train(mesh, steps=3):
  tx = train_lib.make_optimizer(
      train_lib.OptimConfig(learning_rate=1e-2, warmup_steps=1))
  state, sh, graphdef = train_lib.init_state(
      lambda: transformer.create(CFG, seed=0), tx, mesh, seed=0)
  step = train_lib.make_train_step(graphdef, train_policy.sft_loss, tx, sh,
                                   mesh)
  losses = []
  for i in range(steps):
    state, m = step(state, _batch(i))
    losses.append(float(m["loss"]))
  return state, sh, losses


def test_sharded_train_step_equals_single_device():
  assert len(jax.devices()) == 8
  single, _, l1 = _train(sharding.make_mesh({"data": 1}, jax.devices()[:1]))
  sharded, sh, l8 = _train(
      sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}))
  # The big matrices really are split across devices.
  q = sharded["params"]["layer_0"]["attn"]["q_DNH"]
  assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
  assert len(q.addressable_shards) == 8
  assert q.addressable_shards[0].data.shape == (16, 2, 8)
  np.testing.assert_allclose(l1, l8, rtol=1e-5)
  assert l1[-1] < l1[0]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6),
               single["params"], sharded["params"])


def test_checkpoint_round_trip_and_corrupt_fallback(tmp_path, caplog):
  mesh = sharding.make_mesh({"fsdp": 8})
  state, sh, _ = _train(mesh, steps=1)
  ck = ckpt_lib.Checkpointer(tmp_path / "ck")
  ck.save(1, state, {"step": 1, "data_position": 1}, {"a": 1}, force=True)
  state2 = jax.tree.map(lambda x: x + 1 if x.dtype == jnp.float32 else x, state)
  ck.save(2, state2, {"step": 2, "data_position": 2}, force=True)
  ck.wait()
  abstract = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      state, sh)
  step, restored, meta = ck.restore(abstract)
  assert step == 2 and meta["data_position"] == 2
  jax.tree.map(np.testing.assert_array_equal, restored, state2)
  assert restored["params"]["embed_VD"].sharding == sh["params"]["embed_VD"]
  # Corrupt step 2: every data file truncated -> falls back to step 1.
  for f in (tmp_path / "ck" / "2" / "state").rglob("*"):
    if f.is_file() and f.stat().st_size > 0:
      f.write_bytes(f.read_bytes()[:7])
  step, restored, _ = ck.restore(abstract)
  assert step == 1
  jax.tree.map(np.testing.assert_array_equal, restored, state)
  assert "unreadable" in caplog.text
  for f in (tmp_path / "ck" / "1" / "state").rglob("*"):
    if f.is_file() and f.stat().st_size > 0:
      f.write_bytes(b"garbage")
  with pytest.raises(ckpt_lib.CheckpointError, match="none could be restored"):
    ck.restore(abstract)
  ck.close()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  mesh = sharding.make_mesh({"data": 8})
  tx = train_lib.make_optimizer(
      train_lib.OptimConfig(learning_rate=1e-2, warmup_steps=1))
  state, sh, graphdef = train_lib.init_state(
      lambda: transformer.create(CFG, seed=0), tx, mesh, seed=0)

  def loss_fn(graphdef, params, batch, rng):
    loss, aux = train_policy.sft_loss(graphdef, params, batch, rng)
    return loss * batch["scale"][0], aux

  def batch_fn(step):
    b = _batch(step)
    b["scale"] = np.full((16,), np.nan if step == 5 else 1.0, np.float32)
    return b

  step_fn = train_lib.make_train_step(graphdef, loss_fn, tx, sh, mesh)
  with pytest.raises(FloatingPointError,
                     match=r"step 5.*last good checkpoint is step 4"):
    train_lib.fit(stage_dir=tmp_path, state=state, state_shardings=sh,
                  train_step=step_fn, batch_fn=batch_fn,
                  loop=train_lib.LoopConfig(num_steps=10, ckpt_every=2,
                                            log_every=1))
  assert ckpt_lib.Checkpointer(tmp_path / "checkpoints").all_steps()[-1] == 4
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert len(lines) >= 4 and '"loss"' in lines[0]


@functools.lru_cache(maxsize=None)
def _trainer(cfg, loss_fn):
  """(mesh, tx, train step) per model and loss, compiled once per process:
  the fits of one test (and of tests sharing a worker) reuse the step."""
  mesh = sharding.make_mesh({"data": 8})
  tx = train_lib.make_optimizer(
      train_lib.OptimConfig(learning_rate=1e-2, warmup_steps=1))
  _, sh, graphdef = train_lib.init_state(
      lambda: transformer.create(cfg, seed=0), tx, mesh, seed=0)
  return mesh, tx, train_lib.make_train_step(graphdef, loss_fn, tx, sh, mesh)


def _fit(stage_dir, num_steps, *, ckpt_every=2, loss_fn=None, batch_fn=None,
         cfg=CFG, config_dict=None, dead_check_steps=10, identity=None):
  mesh, tx, step_fn = _trainer(cfg, loss_fn or train_policy.sft_loss)
  state, sh, _ = train_lib.init_state(
      lambda: transformer.create(cfg, seed=0), tx, mesh, seed=0)
  return train_lib.fit(
      stage_dir=stage_dir, state=state, state_shardings=sh, train_step=step_fn,
      batch_fn=batch_fn or _batch, config_dict=config_dict, identity=identity,
      loop=train_lib.LoopConfig(num_steps=num_steps, ckpt_every=ckpt_every,
                                log_every=1, max_to_keep=5,
                                dead_check_steps=dead_check_steps))


def _corrupt(step_dir):
  for f in (step_dir / "state").rglob("*"):
    if f.is_file() and f.stat().st_size > 0:
      f.write_bytes(f.read_bytes()[:7])


def test_corrupt_latest_step_is_moved_aside_and_training_finishes(tmp_path):
  _fit(tmp_path, 4)
  _corrupt(tmp_path / "checkpoints" / "4")
  _fit(tmp_path, 6)  # Falls back to 2, redoes 3..6 and saves step 4 again.
  steps = ckpt_lib.Checkpointer(tmp_path / "checkpoints").all_steps()
  assert steps == [2, 4, 6]
  (moved,) = (tmp_path / "corrupt").iterdir()
  assert moved.name.startswith("4-") and (moved / "state").is_dir()
  _fit(tmp_path, 8)  # And a further rerun continues from 6.
  assert ckpt_lib.Checkpointer(tmp_path / "checkpoints").all_steps()[-1] == 8


def test_non_finite_params_are_never_saved_with_ckpt_every_1(tmp_path):
  def loss_fn(graphdef, params, batch, rng):
    loss, aux = train_policy.sft_loss(graphdef, params, batch, rng)
    # sqrt(0 * params + 1 - poison): at the poisoned step its value is 0 but
    # its gradient 0 * inf = NaN, so the loss stays finite while the updated
    # params become NaN (elsewhere value 1, gradient 0).
    x = jnp.sum(params["embed_VD"] * 0.0) + 1.0 - batch["poison"][0]
    return loss + jnp.sqrt(x), aux

  def batch_fn(step):
    b = _batch(step)
    b["poison"] = np.full((16,), 1.0 if step == 2 else 0.0, np.float32)
    return b

  with pytest.raises(FloatingPointError,
                     match=r"params are not finite.*step 2.*last good "
                           r"checkpoint is step 2"):
    _fit(tmp_path, 6, ckpt_every=1, loss_fn=loss_fn, batch_fn=batch_fn)
  ck = ckpt_lib.Checkpointer(tmp_path / "checkpoints")
  assert ck.all_steps() == [1, 2]
  mesh = sharding.make_mesh({"data": 8})
  tx = train_lib.make_optimizer(train_lib.OptimConfig())
  state, sh, _ = train_lib.init_state(
      lambda: transformer.create(CFG, seed=0), tx, mesh, seed=0)
  _, restored, _ = ck.restore(ckpt_lib.abstract_like(state))
  ck.close()
  leaves = jax.tree.leaves(restored["params"])
  assert all(np.all(np.isfinite(x)) for x in leaves)


def test_resume_with_changed_config_or_model_stops_naming_keys(tmp_path):
  from pav_jax import identity
  cfg = {"sft": {"steps": 4, "kill_at_step": 3}, "task": {"name": "a"}}
  _fit(tmp_path, 2, config_dict=cfg, identity={"tokenizer": "h1"})
  changed = {"sft": {"steps": 5, "kill_at_step": -1}, "task": {"name": "b"}}
  with pytest.raises(identity.IdentityMismatchError) as e:
    _fit(tmp_path, 4, config_dict=changed)
  msg = str(e.value)
  assert "sft.steps: 4 -> 5" in msg and 'task.name: "a" -> "b"' in msg
  assert "kill_at_step" not in msg  # run control, not identity
  assert "new --workdir" in msg and str(tmp_path / "checkpoints") in msg
  with pytest.raises(identity.IdentityMismatchError, match="tokenizer"):
    _fit(tmp_path, 4, config_dict=cfg, identity={"tokenizer": "h2"})
  with pytest.raises(ckpt_lib.CheckpointShapeError,
                     match=r"shape mismatch(.|\n)*params\.embed_VD: "
                           r"\(64, 32\) -> \(64, 48\)"):
    _fit(tmp_path, 4, cfg=CFG.replace(embed_dim=48))
  _fit(tmp_path, 4, config_dict=dict(cfg, sft={"steps": 4,
                                               "kill_at_step": -1}))


def test_resumed_steps_are_not_written_twice_to_metrics(tmp_path):
  import json
  import shutil
  _fit(tmp_path, 4)
  shutil.rmtree(tmp_path / "checkpoints" / "4")  # as if killed mid-save
  _fit(tmp_path, 5)
  rows = [json.loads(line) for line in
          (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
  assert "params_finite" not in rows[0]


def test_dead_gradient_is_flagged(tmp_path):
  def dead_loss(graphdef, params, batch, rng):
    loss, aux = train_policy.sft_loss(graphdef, params, batch, rng)
    return jax.lax.stop_gradient(loss), aux

  _fit(tmp_path / "dead", 4, loss_fn=dead_loss, dead_check_steps=3)
  summary = train_lib.read_train_summary(tmp_path / "dead")
  assert summary["dead_gradient"] is True
  assert "grad_norm is exactly 0" in summary["dead_reason"]
  rows = (tmp_path / "dead" / "metrics.jsonl").read_text()
  assert '"dead_gradient": 1.0' in rows
  _fit(tmp_path / "alive", 4, dead_check_steps=3)
  summary = train_lib.read_train_summary(tmp_path / "alive")
  assert summary["dead_gradient"] is False


# Entry point (subprocesses) -------------------------------------------------

TINY = [
    "--config.task.num_train=512", "--config.task.num_eval=8",
    "--config.model.num_layers=1", "--config.model.embed_dim=32",
    "--config.model.hidden_dim=64", "--config.model.num_heads=2",
    "--config.model.num_kv_heads=1", "--config.model.head_dim=16",
    "--config.sft.batch_size=16", "--config.sft.max_len=80",
    "--config.sft.warmup_steps=2", "--config.sft.log_every=5",
    "--config.eval.num_prompts=4", "--config.eval.samples_per_prompt=2",
    "--config.eval.batch_rows=8", "--config.sample.max_new_tokens=8",
    "--config.sample.cache_size=96", "--config.stages=sft",
]


_ENV = {}  # the module's shared compilation cache, set by `compile_cache`


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
  """One persistent JAX compilation cache for this module's subprocesses:
  the runs of a drill compile the same programs, and resume must be
  bitwise exact with executables loaded from the cache too."""
  _ENV.update(
      JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


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


def _final_params(workdir):
  _, abstract = transformer.abstract_params(
      CFG.replace(vocab_size=320, num_layers=1, embed_dim=32, hidden_dim=64,
                  num_heads=2, num_kv_heads=1, head_dim=16, sliding_window=64))
  return ckpt_lib.load_params_tree(Path(workdir) / "sft" / "params", abstract)


def test_sigkill_then_resume_equals_uninterrupted(compile_cache, tmp_path):
  steps = ["--config.sft.steps=24", "--config.sft.ckpt_every=8"]
  _main(tmp_path / "a", *steps)
  killed = _main(tmp_path / "b", *steps, "--config.sft.kill_at_step=19",
                 check=False)
  assert killed.returncode == -9, killed.stderr[-2000:]
  assert not (tmp_path / "b" / "sft" / "DONE.json").exists()
  resumed = _main(tmp_path / "b", *steps)
  # Step 16 may have been mid-save when the kill landed: then step 8 it is.
  assert ("resumed from step 16" in resumed.stderr
          or "resumed from step 8" in resumed.stderr), resumed.stderr[-2000:]
  jax.tree.map(np.testing.assert_array_equal, _final_params(tmp_path / "a"),
               _final_params(tmp_path / "b"))
  # A third run finds the stage done and skips it.
  again = _main(tmp_path / "b", *steps)
  assert "already done" in again.stderr


@pytest.mark.parametrize("flag, message", [
    ("--config.model.num_layerz=2", "num_layerz"),
    ("--config.sft.steps=abc", "sft.steps"),
    ("--config.model.vocab_size=100",
     "tokenizer has 320 pieces but the model's vocab_size is 100"),
    ("--config.stages=sft,nope", "unknown stage"),
])
def test_bad_config_fails_with_clear_message(compile_cache, tmp_path, flag,
                                             message):
  proc = _main(tmp_path, "--config.sft.steps=1", flag, check=False)
  assert proc.returncode != 0
  assert message in proc.stderr, proc.stderr[-2000:]
