"""Tests of pav_jax.train_rl: sharded rollout and update, KL, ORM-RL
equivalence at alpha = 0, input checks, MC control and one end-to-end
iteration on the arithmetic task."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pav_jax import config as config_lib
from pav_jax import sampler as sampler_lib
from pav_jax import sharding
from pav_jax import tasks
from pav_jax import tokenizer as tok_lib
from pav_jax import train_rl
from pav_jax import transformer as tr
from pav_jax import verifier

PAD, BOS, EOS, STEP = 0, 1, 2, 4
CFG = config_lib.ModelConfig.tiny(vocab_size=48).replace(
    num_layers=2, embed_dim=32, hidden_dim=64, num_heads=2, num_kv_heads=2,
    head_dim=8, sliding_window=16)
RL = train_rl.RLConfig(
    alpha=2.0, prover_k=2.0, prompts_per_iter=4, samples_per_prompt=2,
    max_prompt_len=8, max_new_tokens=12, max_steps=6, policy_lr=1e-2,
    value_lr=1e-2, warmup_steps=1, total_steps=10)
PROMPTS = np.array([[BOS, 5, 6, STEP, 0, 0, 0, 0],
                    [BOS, 7, STEP, 0, 0, 0, 0, 0],
                    [BOS, 8, 9, 10, 11, STEP, 0, 0],
                    [BOS, 12, STEP, 0, 0, 0, 0, 0]],
                   np.int32)
PLEN = np.array([4, 3, 6, 3], np.int32)


class FakeTok:
  step_id, eos_id, pad_id = STEP, EOS, PAD


def _policy(seed=0):
  graphdef, params = tr.split(tr.create(CFG, seed=seed))
  params["embed_VD"] = (params["embed_VD"].at[STEP].mul(1.4).at[EOS].mul(1.4))
  return graphdef, params


def _pav(cfg, seed=3):
  """A random 'PAV': the head is zero-initialised, so give it weights."""
  vgd, vparams = tr.split(verifier.create(cfg, seed=seed))
  vparams["head_D"] = jax.random.normal(jax.random.key(seed),
                                        vparams["head_D"].shape)
  return vgd, vparams


def _mesh(shape, n=None):
  return sharding.make_mesh(shape, devices=jax.devices()[:n] if n else None)


def _sampler(graphdef):
  return sampler_lib.Sampler(graphdef, CFG, cache_size=24, eos_id=EOS,
                             step_id=STEP, pad_id=PAD)


def _rollout(cfg, mesh, graphdef, params, fork=True, seed=0):
  fn = train_rl.make_rollout_fn(
      _sampler(graphdef), cfg, mesh,
      train_rl.param_shardings(lambda: tr.create(CFG), mesh), fork=fork)
  return fn(params, PROMPTS, PLEN, jax.random.split(jax.random.key(seed), 4))


_ONE = {"data": 1, "fsdp": 1, "tensor": 1}
_OUTCOME = np.array([1, 0, 0, 1, 1, 1, 0, 0], np.float32)


@functools.cache
def _scored_rollout():
  """One rollout (1-device mesh) and the PAV's values of all its prefixes."""
  graphdef, params = _policy()
  mesh = _mesh(_ONE, 1)
  out = jax.device_get(_rollout(RL, mesh, graphdef, params))
  vgd, vparams = _pav(CFG)
  score = train_rl.make_score_fn(
      vgd, train_rl.param_shardings(lambda: verifier.create(CFG), mesh), RL,
      mesh, step_id=STEP, eos_id=EOS)
  tg = jax.device_get(score(
      vparams, out["tokens_BT"], out["valid_BT"], out["prompt_len_B"],
      out["response_mask_BT"], jnp.asarray(_OUTCOME)))
  # The same values in verifier.prefix_values' layout, for other configs.
  v_BP = np.concatenate([tg["v0_B"][:, None], tg["q_pi_BH"]], 1)
  m_BP = np.concatenate([np.ones((len(v_BP), 1), bool), tg["q_mask_BH"]], 1)
  return out, tg, v_BP, m_BP


@functools.cache
def _shared_batch(alpha):
  """(update batch, step targets) of the shared rollout at this alpha."""
  out, tg, v_BP, m_BP = _scored_rollout()
  if alpha != RL.alpha:
    tg = jax.device_get(train_rl.step_targets(
        v_BP, m_BP, out["tokens_BT"], out["response_mask_BT"],
        jnp.asarray(_OUTCOME), step_id=STEP, eos_id=EOS,
        cfg=dataclasses.replace(RL, alpha=alpha)))
  batch = {"tokens_BT": out["tokens_BT"], "valid_BT": out["valid_BT"],
           "response_mask_BT": out["response_mask_BT"],
           "returns_BH": tg["returns_BH"]}
  return batch, tg


@functools.cache
def _shared_update(shape_items):
  """Three RL updates of the shared batch on a mesh (cached per shape)."""
  shape = dict(shape_items)
  _, params = _policy()
  n = 1 if shape == _ONE else None
  return _update(RL, _mesh(shape, n), params, _shared_batch(RL.alpha)[0],
                 steps=3)


def _update(cfg, mesh, params, batch, steps=1):
  graphdef = tr.split(tr.create(CFG))[0]
  tx = train_rl.make_optimizer(cfg)
  state, shard, ref = train_rl.init_state(params, CFG, tx, mesh, seed=0)
  vgd = tr.split(train_rl.create_value_model(CFG))[0]
  step = train_rl.make_update_step(graphdef, vgd, tx, shard, mesh, cfg,
                                   step_id=STEP, eos_id=EOS)
  ms = []
  for _ in range(steps):
    state, m = step(state, ref, batch)
    ms.append(jax.device_get(m))
  return state, ms


def test_rollout_rows_split_over_data_axes_and_fork_equals_reprefill():
  graphdef, params = _policy()
  mesh = _mesh({"data": 8, "fsdp": 1, "tensor": 1})
  out = _rollout(RL, mesh, graphdef, params)
  b, t = RL.batch_rows, RL.seq_len
  assert out["tokens_BT"].shape == (b, t)
  shapes = {s.data.shape for s in out["tokens_BT"].addressable_shards}
  assert shapes == {(1, t)}  # each of the 8 devices holds its own row
  tok = np.asarray(out["tokens_BT"])
  plen = np.asarray(out["prompt_len_B"])
  rlen = np.asarray(out["response_len_B"])
  np.testing.assert_array_equal(plen, np.repeat(PLEN, 2))
  for r in range(b):
    np.testing.assert_array_equal(tok[r, :plen[r]], PROMPTS[r // 2, :plen[r]])
    assert np.all(tok[r, plen[r] + rlen[r]:] == PAD)
    eos = np.flatnonzero(tok[r, plen[r]:plen[r] + rlen[r]] == EOS)
    assert eos.size == 0 or eos[0] == rlen[r] - 1
  assert np.asarray(out["response_mask_BT"]).sum() == rlen.sum() > 0
  naive = _rollout(RL, mesh, graphdef, params, fork=False)
  np.testing.assert_array_equal(np.asarray(naive["tokens_BT"]), tok)
  single = _shared_batch(RL.alpha)[0]  # the same rollout on one device
  np.testing.assert_array_equal(single["tokens_BT"], tok)


@pytest.mark.parametrize("shape", [{"data": 8, "fsdp": 1, "tensor": 1},
                                   {"data": 2, "fsdp": 2, "tensor": 2}])
def test_sharded_update_equals_single_device(shape):
  _, params = _policy()
  batch = _shared_batch(RL.alpha)[0]
  s1, m1 = _shared_update(tuple(_ONE.items()))
  s8, m8 = _shared_update(tuple(shape.items()))
  for i in range(3):  # steps 2 and 3 read the params the step before wrote
    for k in ("loss", "pg_loss", "kl", "value_loss", "grad_norm_policy",
              "grad_norm_value"):
      np.testing.assert_allclose(m8[i][k], m1[i][k], rtol=1e-4, atol=1e-7)
  # Adam's first steps are ~ lr * sign(g): float noise on near-zero
  # gradients moves a few entries by up to ~lr/10, so compare the updates
  # in aggregate and bound the worst entry.
  init = {"policy": params,
          "value": train_rl.value_params_from_policy(params, CFG)}
  d8 = jax.tree.leaves(jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b),
                                    s8["params"], init))
  d1 = jax.tree.leaves(jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b),
                                    s1["params"], init))
  diff = np.concatenate([np.ravel(a - b) for a, b in zip(d8, d1)])
  upd = np.concatenate([np.ravel(b) for b in d1])
  assert np.abs(upd).max() > 0.5 * RL.policy_lr  # the params did move
  assert np.abs(diff).mean() < 0.01 * np.abs(upd).mean()
  assert np.abs(diff).max() < 0.2 * RL.policy_lr
  # The batch really is split over the data axes, params over fsdp/tensor.
  mesh = _mesh(shape)
  placed = jax.device_put(batch, sharding.batch_sharding(mesh))
  n_rows = shape["data"] * shape["fsdp"]
  assert {s.data.shape[0] for s in placed["tokens_BT"].addressable_shards} == {
      RL.batch_rows // n_rows}
  if shape["tensor"] > 1:
    emb = s8["params"]["policy"]["embed_VD"]
    assert {s.data.shape for s in emb.addressable_shards} == {(24, 16)}


def test_kl_zero_at_init_positive_after_update_and_params_change():
  _, params = _policy()
  state, ms = _shared_update(tuple({"data": 8, "fsdp": 1, "tensor": 1}.items()))
  assert ms[0]["kl"] == 0.0  # metrics are read before the update
  assert ms[1]["kl"] > 0.0 and ms[2]["kl"] > ms[1]["kl"]
  assert ms[0]["grad_norm_policy"] > 0 and ms[0]["grad_norm_value"] > 0
  assert ms[0]["mean_value"] == 0.0  # value model starts with a zero head
  assert ms[1]["value_loss"] < ms[0]["value_loss"]  # the baseline learns
  assert not np.allclose(np.asarray(state["params"]["policy"]["embed_VD"]),
                         np.asarray(params["embed_VD"]))


def test_alpha_zero_is_exactly_orm_rl():
  graphdef, params = _policy()
  outcome = _OUTCOME
  mesh = _mesh(_ONE, 1)
  pav0 = dataclasses.replace(RL, alpha=0.0)
  orm = dataclasses.replace(RL, alpha=0.0, scorer="none")
  batch, tg = _shared_batch(0.0)
  assert np.abs(tg["dense_BH"]).sum() > 0  # the PAV did score the steps
  # ORM-RL targets: no verifier at all.
  tfn = train_rl.make_targets_fn(orm, mesh, step_id=STEP, eos_id=EOS)
  p = orm.max_steps + 1
  tg_orm = jax.device_get(tfn(np.zeros((8, p), np.float32),
                              np.zeros((8, p), bool),
                              batch["tokens_BT"], batch["response_mask_BT"],
                              jnp.asarray(outcome)))
  np.testing.assert_array_equal(tg_orm["returns_BH"], tg["returns_BH"])
  vgd = tr.split(train_rl.create_value_model(CFG))[0]
  vp = train_rl.value_params_from_policy(params, CFG)
  vp["head_D"] = vp["head_D"] + 0.1  # a non-trivial value baseline
  full = {"policy": params, "value": vp}
  orm_batch = dict(batch, returns_BH=tg_orm["returns_BH"])

  def lg(cfg, b):
    def f(q):
      return train_rl.rl_loss(graphdef, vgd, q, params, b, cfg=cfg,
                              step_id=STEP, eos_id=EOS)[0]
    return jax.value_and_grad(f)(full)

  (l_pav, g_pav), (l_orm, g_orm) = lg(pav0, batch), lg(orm, orm_batch)
  assert float(l_pav) == float(l_orm)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), g_pav, g_orm)
  # alpha > 0 (same rollouts, same PAV) changes the weights and the loss.
  _, tg2 = _shared_batch(RL.alpha)
  assert not np.allclose(tg2["returns_BH"], tg["returns_BH"])
  l_pos, _ = lg(RL, dict(batch, returns_BH=tg2["returns_BH"]))
  assert float(l_pos) != float(l_pav)


def test_bad_inputs_fail_naming_the_key():
  with pytest.raises(ValueError, match="rl.alpha"):
    train_rl.check_config(dataclasses.replace(RL, alpha=-1.0))
  with pytest.raises(KeyError, match="'ppo'"):
    train_rl.check_config(dataclasses.replace(RL, estimator="ppo"))
  with pytest.raises(ValueError, match="rl.scorer"):
    train_rl.check_config(dataclasses.replace(RL, scorer="oracle"))
  graphdef, params = _policy()
  with pytest.raises(ValueError, match="verifier"):
    train_rl.make_context(cfg=RL, sampler=_sampler(graphdef),
                          policy_params=params,
                          task=None, tok=FakeTok(),
                          mesh=_mesh({"data": 8, "fsdp": 1, "tensor": 1}))


def test_rft_pairs():
  ps, rs = train_rl.rft_pairs(["b", "a"], [["x", "y", "x"], ["z", "w"]],
                              [[1, 0, 1], [0, 1]])
  assert list(zip(ps, rs)) == [("a", "w"), ("b", "x")]
  with pytest.raises(ValueError, match="no correct"):
    train_rl.rft_pairs(["a"], [["x"]], [[0]])


@pytest.fixture(scope="module")
def arith(tmp_path_factory):
  task = tasks.get_task("arithmetic", num_ops=2)
  exs = task.examples("train", 200, seed=0)
  tok = tok_lib.train_tokenizer([task.prompt(e) + e.solution for e in exs],
                                tmp_path_factory.mktemp("tok") / "t", 300)
  cfg = CFG.replace(vocab_size=320)
  return task, tok, cfg


def test_end_to_end_iteration_pav_and_mc_control(arith):
  task, tok, cfg = arith
  exs = task.examples("train", 4, seed=1)
  width = max(len(tok.encode(task.prompt(e), bos=True)) for e in exs)
  rl = dataclasses.replace(RL, max_prompt_len=width, max_new_tokens=16)
  graphdef, params = tr.split(tr.create(cfg, seed=0))
  params["embed_VD"] = params["embed_VD"].at[tok.step_id].mul(5.0)
  vgd, vparams = _pav(cfg, seed=1)
  def mk(size):
    return sampler_lib.Sampler(graphdef, cfg, cache_size=size,
                               eos_id=tok.eos_id, step_id=tok.step_id,
                               pad_id=tok.pad_id, buckets=(64,))
  mesh = _mesh({"data": 8, "fsdp": 1, "tensor": 1})
  ctx, state = train_rl.make_context(
      cfg=rl, sampler=mk(rl.seq_len), policy_params=params, task=task, tok=tok,
      mesh=mesh, verifier_graphdef=vgd, verifier_params=vparams)
  before = np.asarray(state["params"]["policy"]["embed_VD"])
  state, m = train_rl.iteration(ctx, state, exs)
  assert int(state["step"]) == 1
  assert m["sampled_tokens"] > 0 and m["mean_steps"] > 1
  assert all(np.isfinite(v) for v in m.values())
  after = np.asarray(state["params"]["policy"]["embed_VD"])
  assert not np.allclose(after, before)
  # Verifier-free control: Q̂ from MC continuations of every prefix.
  mc = dataclasses.replace(rl, scorer="mc", mc_samples=2)
  ro = train_rl.rollout(ctx.rollout_fn, state["params"]["policy"], task, tok,
                        exs, jax.random.key(5), rl)
  v_BP, m_BP, sampled = train_rl.mc_prefix_values(
      mk(64 + mc.max_new_tokens), params, task, tok, exs, ro, n=2,
      rng=jax.random.key(6), cfg=mc)
  assert sampled > 0 and m_BP[:, 0].all()
  assert np.all((v_BP >= 0) & (v_BP <= 1))
  assert np.all(np.isin(v_BP[m_BP], [0.0, 0.5, 1.0]))  # n = 2 continuations
  tok_BT, plen, rlen = (np.asarray(x) for x in jax.device_get(
      (ro.tokens_BT, ro.prompt_len_B, ro.response_len_B)))
  for r in range(len(tok_BT)):  # an EOS-closed prefix is graded exactly
    resp = tok_BT[r, plen[r]:plen[r] + rlen[r]]
    n_bounds = 1 + int(np.isin(resp, [tok.step_id, tok.eos_id]).sum())
    assert m_BP[r].sum() == min(n_bounds, mc.max_steps + 1)
    if ro.finished_B[r] and n_bounds <= mc.max_steps + 1:
      assert v_BP[r, n_bounds - 1] == ro.outcome_B[r]
  tg = train_rl.step_targets(v_BP, m_BP, ro.tokens_BT, ro.response_mask_BT,
                             jnp.asarray(ro.outcome_B), step_id=tok.step_id,
                             eos_id=tok.eos_id, cfg=mc)
  assert np.all(np.isfinite(np.asarray(tg["returns_BH"])))
