"""Tests of pav_jax.policy_gradient: step indexing, reward spreading (Eq. 5),
dense terms, estimators and the REINFORCE / KL / value losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pav_jax import advantages
from pav_jax import policy_gradient as pg

PAD, EOS, STEP = 0, 1, 2


def _rows():
  # Prompt [9, STEP] (2 tokens), then responses:
  #  row 0: "7 8 \n 9 \n 10 EOS" -> steps 0,0,0,1,1,2,2 ; then pad
  #  row 1: "7 EOS 8 8"          -> steps 0,0 ; tokens after EOS: -1
  #  row 2: "7 7 7 7 7 7 7 7"    -> truncated, one unclosed step
  #  row 3: "\n EOS"             -> an empty-content step closed by "\n",
  #                                 then EOS alone as step 1
  tokens = np.array([
      [9, STEP, 7, 8, STEP, 9, STEP, 10, EOS, PAD],
      [9, STEP, 7, EOS, 8, 8, PAD, PAD, PAD, PAD],
      [9, STEP, 7, 7, 7, 7, 7, 7, 7, 7],
      [9, STEP, STEP, EOS, PAD, PAD, PAD, PAD, PAD, PAD],
  ], np.int32)
  resp_len = np.array([7, 4, 8, 2])
  col = np.arange(10)[None, :]
  resp = (col >= 2) & (col < 2 + resp_len[:, None])
  return jnp.asarray(tokens), jnp.asarray(resp)


def test_token_step_index_hand_built():
  tokens, resp = _rows()
  got = np.asarray(pg.token_step_index(tokens, resp, step_id=STEP, eos_id=EOS))
  want = np.array([
      [-1, -1, 0, 0, 0, 1, 1, 2, 2, -1],
      [-1, -1, 0, 0, -1, -1, -1, -1, -1, -1],
      [-1, -1, 0, 0, 0, 0, 0, 0, 0, 0],
      [-1, -1, 0, 1, -1, -1, -1, -1, -1, -1],
  ])
  np.testing.assert_array_equal(got, want)
  capped = np.asarray(pg.token_step_index(tokens, resp, step_id=STEP,
                                          eos_id=EOS, max_steps=2))
  np.testing.assert_array_equal(capped, np.where(want >= 2, -1, want))
  np.testing.assert_array_equal(
      np.asarray(pg.step_mask(jnp.asarray(want), 4)),
      [[1, 1, 1, 0], [1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]])


def test_step_rewards_to_tokens_gives_each_step_only_its_own_weight():
  tokens, resp = _rows()
  step = pg.token_step_index(tokens, resp, step_id=STEP, eos_id=EOS)
  w = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0],
                 [10.0, 11.0, 12.0]])
  got = np.asarray(pg.step_rewards_to_tokens(w, step))
  want = np.array([
      [0, 0, 1, 1, 1, 2, 2, 3, 3, 0],
      [0, 0, 4, 4, 0, 0, 0, 0, 0, 0],
      [0, 0, 7, 7, 7, 7, 7, 7, 7, 7],
      [0, 0, 10, 11, 0, 0, 0, 0, 0, 0],
  ], np.float32)
  np.testing.assert_array_equal(got, want)
  # An extra mask (e.g. the loss mask) zeroes more tokens.
  m = jnp.ones_like(step, bool).at[:, 3].set(False)
  np.testing.assert_array_equal(
      np.asarray(pg.step_rewards_to_tokens(w, step, m)),
                                np.where(np.arange(10) == 3, 0, want))


def test_dense_terms_rewards_and_returns():
  q = jnp.array([[0.2, 0.5, 0.4], [0.3, 0.0, 0.0]])
  v0 = jnp.array([0.1, 0.6])
  qm = jnp.array([[True, True, True], [True, False, False]])
  a = np.asarray(pg.dense_step_rewards(q, v0, qm, prover_k=1.0))
  np.testing.assert_allclose(a, [[0.1, 0.3, -0.1], [-0.3, 0, 0]], atol=1e-6)
  a4 = np.asarray(pg.dense_step_rewards(q, v0, qm, prover_k=4.0))
  qmu = np.asarray(advantages.bok_q(q, 4.0))
  v0mu = np.asarray(advantages.bok_q(v0, 4.0))
  np.testing.assert_allclose(a4[0], np.diff(np.r_[v0mu[0], qmu[0]]), atol=1e-6)
  qd = np.asarray(pg.dense_step_rewards(q, v0, qm, prover_k=4.0, dense="q"))
  np.testing.assert_allclose(qd, np.where(np.asarray(qm), qmu, 0), atol=1e-6)
  with pytest.raises(ValueError, match="'qq'"):
    pg.dense_step_rewards(q, v0, qm, prover_k=1.0, dense="qq")

  outcome = jnp.array([1.0, 0.0])
  r = np.asarray(pg.step_rewards(outcome, jnp.asarray(a), qm, 2.0))
  np.testing.assert_allclose(r, [[0.2, 0.6, 1 - 0.2], [-0.6, 0, 0]], atol=1e-6)
  g = np.asarray(pg.step_returns(outcome, jnp.asarray(a), qm, 2.0))
  np.testing.assert_allclose(g, [[1.2, 1.6, 0.8], [-0.6, 0, 0]], atol=1e-6)
  # alpha = 0: every step of a trace weighs its outcome (ORM-RL).
  g0 = np.asarray(pg.step_returns(outcome, jnp.asarray(a), qm, 0.0))
  np.testing.assert_array_equal(g0, [[1, 1, 1], [0, 0, 0]])


def test_reinforce_gradient_matches_hand_computed_on_logit_table():
  rng = np.random.default_rng(0)
  t, v = 6, 5
  table = jnp.asarray(rng.normal(size=(t, v)), jnp.float32)
  actions = np.array([0, 3, 2, 2, 4, 1])
  adv = np.array([1.0, -0.5, 2.0, 0.3, -1.0, 7.0], np.float32)
  mask = np.array([1, 1, 1, 0, 1, 1], bool)

  def loss(tab):
    logp = jax.nn.log_softmax(tab, -1)[jnp.arange(t), actions]
    return pg.reinforce_loss(logp[None], jnp.asarray(adv)[None],
                             jnp.asarray(mask)[None])

  got = np.asarray(jax.grad(loss)(table))
  probs = np.asarray(jax.nn.softmax(table, -1))
  want = np.zeros((t, v))
  for i in range(t):
    if mask[i]:
      want[i] = -adv[i] * (np.eye(v)[actions[i]] - probs[i]) / mask.sum()
  np.testing.assert_allclose(got, want, atol=1e-6)
  # The advantage is a constant: its gradient does not flow.
  ga = jax.grad(lambda a: pg.reinforce_loss(
      jnp.ones((1, t)), a, jnp.asarray(mask)[None]))(jnp.asarray(adv)[None])
  np.testing.assert_array_equal(np.asarray(ga), 0)


def test_kl_is_zero_at_equal_policies_and_positive_otherwise():
  logp = jnp.log(jnp.array([[0.5, 0.2, 0.9]]))
  mask = jnp.array([[True, True, False]])
  assert float(pg.kl_penalty(logp, logp, mask)) == 0.0
  g = jax.grad(lambda lp: pg.kl_penalty(lp, logp, mask))(logp)
  np.testing.assert_array_equal(np.asarray(g), 0)
  ref = jnp.log(jnp.array([[0.4, 0.3, 0.1]]))
  k = float(pg.kl_penalty(logp, ref, mask))
  r = np.log([0.4, 0.3]) - np.log([0.5, 0.2])
  assert k > 0
  np.testing.assert_allclose(k, np.mean(np.exp(r) - r - 1), rtol=1e-6)


def test_value_loss():
  v = jnp.array([[1.0, 2.0, 5.0]])
  tgt = jnp.array([[0.0, 2.0, 0.0]])
  m = jnp.array([[True, True, False]])
  assert float(pg.value_loss(v, tgt, m)) == pytest.approx(0.25)
  g = np.asarray(jax.grad(lambda x: pg.value_loss(x, tgt, m))(v))
  np.testing.assert_allclose(g, [[0.5, 0.0, 0.0]])


def test_estimator_registry_and_group_baselines():
  with pytest.raises(KeyError, match="'gae'.*group_mean.*none.*rloo.*value"):
    pg.get_estimator("gae")
  assert set(pg.ESTIMATORS) == {"value", "rloo", "group_mean", "none"}
  # Two prompts x k = 3 samples, outcome-only returns (constant per row).
  out = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.0], np.float32)
  ret = jnp.asarray(np.repeat(out[:, None], 4, 1))
  mask = jnp.asarray(np.tile([True, True, True, False], (6, 1)))
  vals = jnp.full((6, 4), 0.25)
  rloo = np.asarray(pg.get_estimator("rloo")(ret, mask, vals, 3))
  want = out - np.array([0.0, 0.5, 0.5, 0.5, 0.5, 1.0])
  np.testing.assert_allclose(rloo[:, 0], want, atol=1e-6)
  np.testing.assert_array_equal(rloo[:, 3], 0)
  gm = np.asarray(pg.get_estimator("group_mean")(ret, mask, vals, 3))
  np.testing.assert_allclose(gm[:, 1], out - np.repeat([1 / 3, 2 / 3], 3),
                             atol=1e-6)
  val = np.asarray(pg.get_estimator("value")(ret, mask, vals, 3))
  np.testing.assert_allclose(val[:, 2], out - 0.25)
  none = np.asarray(pg.get_estimator("none")(ret, mask, vals, 3))
  np.testing.assert_array_equal(none, np.asarray(ret) * np.asarray(mask))
  with pytest.raises(ValueError, match="group_size"):
    pg.get_estimator("rloo")(ret, mask, vals, 4)
