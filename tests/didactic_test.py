"""Tests of the didactic planted-subsequence experiment (pav_jax.didactic).

Exact DP vs brute-force enumeration, MC estimators vs exact values within
binomial confidence intervals, the advantage identity, the BoK closed form,
MADE autoregressiveness and one RL run on a tiny instance.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pav_jax import advantages
from pav_jax.didactic import env as env_lib
from pav_jax.didactic import policy
from pav_jax.didactic import rl

# Small instances: overlap inside y* ((1, 2, 1), (1, 1, 2)) exercises the
# KMP fallbacks.
_SMALL = (
    env_lib.Env(target=(1, 2, 1), length=6, vocab=4),
    env_lib.Env(target=(1, 1, 2), length=6, vocab=4),
    env_lib.Env(target=(0, 1, 0, 1), length=7, vocab=3),
)
_PAPER = env_lib.Env()
_mc_prover = jax.jit(env_lib.mc_prover_successes, static_argnums=(0, 5))
_mc_q = jax.jit(policy.mc_q, static_argnums=(0, 2, 5))
_sample = jax.jit(policy.sample, static_argnums=(0, 2, 4))


# ----------------------------------------------------------------------------
# Naive reference implementations (no automaton).
# ----------------------------------------------------------------------------


def _naive_success(env, seq) -> bool:
  seq = list(seq)
  if env.eos in seq:
    seq = seq[:seq.index(env.eos)]
  t = list(env.target)
  return any(seq[i:i + env.m] == t for i in range(len(seq) - env.m + 1))


def _naive_mu(env, prefix, gamma) -> np.ndarray:
  """mu_gamma(. | prefix) by direct suffix matching on the token string."""
  w = np.ones(env.vocab)
  if _naive_success(env, prefix):
    return w / w.sum()
  t = list(env.target)
  k = max(j for j in range(env.m) if list(prefix[len(prefix) - j:]) == t[:j]
          or j == 0)
  w[t[k]] = gamma
  return w / w.sum()


@functools.lru_cache(maxsize=None)
def _brute_value(env, prefix, gamma) -> float:
  """Success probability of mu from a prefix, by enumerating the tree."""
  if _naive_success(env, prefix):
    return 1.0
  if len(prefix) == env.length or (prefix and prefix[-1] == env.eos):
    return 0.0
  probs = _naive_mu(env, prefix, gamma)
  return float(sum(probs[a] * _brute_value(env, prefix + (a,), gamma)
                   for a in range(env.vocab)))


def _naive_k(env, prefix) -> int:
  if _naive_success(env, prefix):
    return env.m
  t = list(env.target)
  return max(j for j in range(env.m)
             if j == 0 or list(prefix[len(prefix) - j:]) == t[:j])


# ----------------------------------------------------------------------------
# Environment and exact DP.
# ----------------------------------------------------------------------------


def test_reward_paper_examples_and_overlap():
  seqs = jnp.array([
      [3, 6, 0, 3, 5, 14, 14, 14, 14, 14],  # Fig. 9: reward 1.
      [12, 8, 3, 6, 14, 6, 0, 3, 5, 1],  # Match after EOS: reward 0.
      [3, 6, 0, 3, 6, 0, 3, 5, 1, 2],  # Overlap: naive counter misses it.
      [3, 3, 6, 0, 3, 5, 14, 1, 1, 1],  # "3" restarts the match.
      [1, 3, 6, 0, 3, 3, 6, 0, 3, 1],  # No match.
      [1, 1, 1, 1, 1, 3, 6, 0, 3, 5],  # Match ending at the last token.
  ])
  np.testing.assert_array_equal(
      env_lib.reward(_PAPER, seqs), [1, 0, 1, 1, 0, 1])


@pytest.mark.parametrize("env", _SMALL + (_PAPER,))
def test_automaton_matches_naive_suffix(env):
  rng = np.random.default_rng(0)
  toks = rng.integers(0, env.vocab, (300, env.length))
  # Bias towards target tokens so matches and partial matches are common.
  plant = rng.integers(0, env.m, toks.shape)
  toks = np.where(rng.random(toks.shape) < 0.6,
                  np.asarray(env.target)[plant], toks)
  k_BL = np.asarray(env_lib.automaton_states(env, jnp.asarray(toks)))
  r_B = np.asarray(env_lib.reward(env, jnp.asarray(toks)))
  for b in range(toks.shape[0]):
    seq = tuple(int(x) for x in toks[b])
    stop = seq.index(env.eos) if env.eos in seq else env.length
    for h in range(stop + 1):
      assert k_BL[b, h] == _naive_k(env, seq[:h]), (seq, h)
    assert r_B[b] == float(_naive_success(env, seq))


@pytest.mark.parametrize("env", _SMALL)
@pytest.mark.parametrize("gamma", [1.0, 3.0, 20.0])
def test_dp_equals_brute_force(env, gamma):
  """Q^mu and V^mu of every non-terminal prefix, exactly (float64)."""
  ev = env_lib.prover_values(env, gamma)
  np.testing.assert_allclose(
      ev.v_KR[0, env.length], _brute_value(env, (), gamma), rtol=0, atol=1e-13)
  non_eos = [a for a in range(env.vocab) if a != env.eos]
  for h in range(env.length):
    for prefix in itertools.product(non_eos, repeat=h):
      k, r = _naive_k(env, prefix), env.length - h
      v = _brute_value(env, prefix, gamma)
      assert abs(ev.v_KR[k, r] - v) < 1e-13
      for a in range(env.vocab):
        q = _brute_value(env, prefix + (a,), gamma)
        assert abs(ev.q_KRV[k, r, a] - q) < 1e-13
        assert abs(ev.a_KRV[k, r, a] - (q - v)) < 1e-13


def test_prover_strength_monotone_in_gamma():
  v0 = [env_lib.prover_values(_PAPER, g).v_KR[0, _PAPER.length]
        for g in (1.0, 5.0, 10.0, 15.0, 100.0)]
  assert np.all(np.diff(v0) > 0)
  assert v0[-1] > 0.8  # Fig. 9: gamma = 100 almost always succeeds.


# ----------------------------------------------------------------------------
# Monte-Carlo estimators vs exact values.
# ----------------------------------------------------------------------------


def _check_mc(q_hat, q_true, n, max_miss_frac=0.01):
  """MC estimates within the 99.9% binomial CI at the expected rate, and
  unbiased: the mean squared z-score of non-degenerate cells is ~1."""
  q_hat, q_true = np.asarray(q_hat, np.float64), np.asarray(q_true)
  miss = np.abs(q_hat - q_true) > advantages.binomial_ci(q_true, n)
  assert miss.mean() <= max_miss_frac, (miss.sum(), miss.size)
  inner = (q_true > 1e-3) & (q_true < 1 - 1e-3)
  z2 = (q_hat - q_true)[inner]**2 / (q_true * (1 - q_true) / n)[inner]
  # Mean of `inner.sum()` chi^2_1 variables: sd = sqrt(2 / count).
  tol = 4 * np.sqrt(2.0 / inner.sum())
  assert abs(z2.mean() - 1.0) < tol, (z2.mean(), tol)


def test_mc_prover_values_within_ci():
  # n = 1000: the check's size does not depend on n (99.9% CI, chi^2 mean
  # tolerance from the cell count); its power is test_mc_detects_a_wrong_value.
  env, n = _PAPER, 1000
  ks, rs = np.meshgrid(np.arange(env.n_states), np.arange(env.length + 1),
                       indexing="ij")
  k_S, r_S = jnp.asarray(ks.ravel()), jnp.asarray(rs.ravel())
  q_hat, q_true = [], []
  for i, gamma in enumerate((3.0, 12.0, 40.0)):
    probs = jnp.asarray(env_lib.prover_probs(env, gamma))
    succ = _mc_prover(env, probs, jax.random.key(i), k_S,
                                       r_S, n)
    q_hat.append(np.asarray(succ) / n)
    q_true.append(env_lib.prover_values(env, gamma).v_KR.ravel())
  _check_mc(np.concatenate(q_hat), np.concatenate(q_true), n)


def test_mc_detects_a_wrong_value():
  """The statistical check has power: a 10% relative error is rejected.

  At n = 2000 the 19 non-degenerate cells give E[mean z^2] ~ 9.5 under the
  10% error (exact values V^mu = 0.05..0.57) against the acceptance region
  |mean z^2 - 1| < 1.3, and most cells alone exceed the 99.9% CI, so a
  false pass is far below 1e-6. (At n = 1000 it would still be ~5.2.)
  """
  env, n = _PAPER, 2000
  k_S = jnp.asarray([0, 1, 2, 3, 4] * 4)
  r_S = jnp.asarray([10] * 5 + [8] * 5 + [6] * 5 + [4] * 5)
  probs = jnp.asarray(env_lib.prover_probs(env, 15.0))
  succ = _mc_prover(env, probs, jax.random.key(0), k_S, r_S,
                                     n)
  truth = env_lib.prover_values(env, 15.0).v_KR[np.asarray(k_S),
                                                np.asarray(r_S)]
  with pytest.raises(AssertionError):
    _check_mc(np.asarray(succ) / n, truth * 1.1, n)


_jit_logits = jax.jit(policy.logits_fn, static_argnums=0)


def _enumerate_q_pi(graphdef, params, env, tokens_L, h) -> float:
  """Exact Q^pi(s_h, a_h) of the MADE by enumerating every completion."""
  pre = [int(x) for x in tokens_L[:h + 1]]
  if env.eos in pre:
    return float(_naive_success(env, pre))
  rest = env.length - h - 1
  seqs = []
  for tail in itertools.product(range(env.vocab), repeat=rest):
    tail = list(tail)
    if env.eos in tail:  # Canonical: all EOS after the first EOS.
      i = tail.index(env.eos)
      if any(x != env.eos for x in tail[i:]):
        continue
    seqs.append(pre + tail)
  # Pad to one fixed row count (zero weight) so log_probs compiles once.
  n_real = len(seqs)
  seqs += [seqs[0]] * (env.vocab ** (env.length - 1) - n_real)
  total, q = _completion_mass(graphdef, params, env,
                              jnp.asarray(seqs, jnp.int32), n_real, h)
  assert abs(float(total) - 1.0) < 1e-4
  return float(q)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _completion_mass(graphdef, params, env, seqs_BL, n_real, h):
  """(sum of pi(completion | s_h), sum of pi(completion | s_h) * reward)."""
  real_B = jnp.arange(seqs_BL.shape[0]) < n_real
  logp_BL, _ = policy.log_probs(graphdef, params, seqs_BL)
  mask_BL = env_lib.alive_mask(env, seqs_BL)
  pos = jnp.arange(env.length)[None, :] > h
  p_B = jnp.exp(jnp.sum(jnp.where(pos, logp_BL * mask_BL, 0.0), 1)) * real_B
  return jnp.sum(p_B), jnp.sum(p_B * env_lib.reward(env, seqs_BL))


def test_mc_policy_q_within_ci():
  env, n = env_lib.Env(target=(1, 2), length=5, vocab=4), 1500
  graphdef, params = policy.init_params(env, (32, 32), jax.random.key(1))
  tokens_BL = _sample(graphdef, params, env, jax.random.key(2), 4)
  q_hat = _mc_q(graphdef, params, env, jax.random.key(3), tokens_BL, n)
  mask = np.asarray(env_lib.alive_mask(env, tokens_BL))
  q_true = np.array([[_enumerate_q_pi(graphdef, params, env, tokens_BL[b], h)
                      for h in range(env.length)]
                     for b in range(tokens_BL.shape[0])])
  sel = mask > 0
  _check_mc(np.asarray(q_hat)[sel], q_true[sel], n)


# ----------------------------------------------------------------------------
# Advantage identity and BoK.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [10.0, 30.0])
def test_advantage_identity_and_telescoping(gamma):
  env = _PAPER
  ev = env_lib.prover_values(env, gamma)
  probs = jnp.asarray(env_lib.prover_probs(env, gamma))
  tokens_BL = env_lib.sample_prover(env, probs, jax.random.key(0), 512)
  mask_BL = env_lib.alive_mask(env, tokens_BL)
  adv_BL = env_lib.gather_step(env, jnp.asarray(ev.a_KRV), tokens_BL)
  q_BL = env_lib.gather_step(env, jnp.asarray(ev.q_KRV), tokens_BL)
  v0_B = jnp.full((tokens_BL.shape[0],), ev.v_KR[0, env.length])
  # A(s_h, a_h) = Q(s_h, a_h) - Q(s_{h-1}, a_{h-1}) (deterministic dynamics).
  ident_BL = advantages.step_advantages(q_BL, v0_B, mask_BL)
  np.testing.assert_allclose(adv_BL, ident_BL, atol=1e-6)
  # Sum over real steps telescopes to R - V(s_1).
  r_B = env_lib.reward(env, tokens_BL)
  np.testing.assert_allclose(jnp.sum(adv_BL, 1), r_B - v0_B, atol=1e-5)
  assert 0 < float(r_B.mean()) < 1


@pytest.mark.parametrize("k", [2, 4, 16])
def test_bok_closed_form_vs_simulation(k):
  # 1500 draws per state; the 99.9% CI is calibrated at any n. Power: a wrong
  # exponent (k -> k - 1) shifts q_bok at state (4, 4) by 2.7x (k = 4) and
  # 4.5x (k = 2) the CI half-width, so it is always caught; for k = 16 the
  # shift is 0.6x (0.8x at 3000 draws), weak at either n.
  env, n = _PAPER, 1500
  probs = jnp.asarray(env_lib.prover_probs(env, 5.0))
  k_S = jnp.asarray([0, 0, 1, 2, 3, 4, 2])
  r_S = jnp.asarray([10, 6, 9, 8, 6, 4, 3])
  # n * k single rollouts per state; a BoK draw succeeds if any of k does.
  one_S = _mc_prover(
      env, probs, jax.random.key(k), jnp.repeat(k_S, n * k),
      jnp.repeat(r_S, n * k), 1)
  best_of_k = np.asarray(one_S).reshape(-1, n, k).max(-1).mean(-1)
  v = env_lib.prover_values(env, 5.0).v_KR[np.asarray(k_S), np.asarray(r_S)]
  q_bok = np.asarray(advantages.bok_q(jnp.asarray(v, jnp.float32), k))
  miss = np.abs(best_of_k - q_bok) > advantages.binomial_ci(q_bok, n)
  assert not miss.any(), (best_of_k, q_bok)


# ----------------------------------------------------------------------------
# Policy and RL.
# ----------------------------------------------------------------------------


def test_made_is_autoregressive():
  env = _PAPER
  graphdef, params = policy.init_params(env, (64, 64, 64), jax.random.key(0))
  toks = jax.random.randint(jax.random.key(1), (4, env.length), 0, env.vocab)
  base = _jit_logits(graphdef, params, toks)
  for j in range(env.length):
    pert = toks.at[:, j].set((toks[:, j] + 1) % env.vocab)
    diff_L = jnp.max(jnp.abs(_jit_logits(graphdef, params, pert) - base),
                     axis=(0, 2))
    assert float(jnp.max(diff_L[:j + 1])) == 0.0
    if j + 1 < env.length:
      assert float(diff_L[j + 1]) > 0.0


def test_pg_weights():
  r_B = jnp.asarray([1.0, 0.0, 0.0, 1.0])
  q_BL = jnp.broadcast_to(r_B[:, None], (4, 3))
  adv_BL = jnp.asarray([[0.2, 0.0, 0.1]] * 4)
  mean_BL = jnp.full((4, 3), 0.05)
  mask_BL = jnp.asarray([[1.0, 1.0, 0.0]] * 4)
  w = rl.pg_weights(q_BL, r_B, adv_BL, mean_BL, mask_BL, jnp.float32(2.0))
  # Leave-one-out baseline: 2/3 for successes' partners, 1/3 for successes.
  np.testing.assert_allclose(w[0], [1 - 1 / 3 + 0.3, 1 - 1 / 3 - 0.1, 0.0],
                             atol=1e-6)
  np.testing.assert_allclose(w[1], [0 - 2 / 3 + 0.3, 0 - 2 / 3 - 0.1, 0.0],
                             atol=1e-6)


def test_effective_reward_rl_learns_tiny_instance():
  """alpha = 1 with a moderate prover raises accuracy within 60 steps."""
  env = env_lib.Env(target=(1, 2, 1), length=6, vocab=5)
  graphdef, params = policy.init_params(env, (32, 32), jax.random.key(0))
  tx = optax.adam(3e-3)
  cfg = rl.RLConfig(batch_size=64, learning_rate=3e-3)
  adv = jnp.asarray(env_lib.prover_values(env, 4.0).a_KRV, jnp.float32)
  batch_S = {"alpha": jnp.asarray([1.0]), "adv_KRV": adv[None]}
  state_S = jax.tree.map(lambda x: x[None], rl.init_state(params, tx))
  chunk = jax.jit(functools.partial(rl.rl_chunk, graphdef, n_iters=60,
                                    env=env, tx=tx, cfg=cfg))
  _, m = chunk(state_S, batch_S, jax.random.key(0)[None], jnp.int32(0))
  acc = np.asarray(m["accuracy"][:, 0])
  assert np.all(np.isfinite(np.asarray(m["loss"])))
  assert acc[-15:].mean() > acc[:15].mean() + 0.15, acc


def test_theorem_terms_zero_prover_and_exact_variance():
  env = _PAPER
  graphdef, params = policy.init_params(env, (32, 32, 32), jax.random.key(0))
  ev = env_lib.prover_values(env, 10.0)
  adv = jnp.asarray(np.stack([np.zeros_like(ev.a_KRV), ev.a_KRV]), jnp.float32)
  out = jax.jit(rl.theorem_terms, static_argnums=(0, 2, 5))(
      graphdef, params, env, jax.random.key(1), adv, 256)
  assert float(out["disting"][0]) == 0.0 and float(out["align"][0]) == 0.0
  assert float(out["disting"][1]) > 0.0


def test_sft_in_chunks_equals_one_call():
  """calibrate_sft.py trains in chunks (it0 = 0, 3): same params as run.py."""
  env = env_lib.Env(target=(1, 2, 1), length=6, vocab=5)
  graphdef, params = policy.init_params(env, (8,), jax.random.key(0))
  tx = optax.adam(1e-2)
  data = jax.random.randint(jax.random.key(1), (40, env.length), 0, env.vocab)
  sft = jax.jit(functools.partial(rl.run_sft, graphdef, env=env, tx=tx,
                                  batch_size=8), static_argnames="n_iters")
  rng, state = jax.random.key(2), rl.init_state(params, tx)

  def it0(i):  # Traced: one compile per size.
    return jnp.asarray(i, jnp.int32)

  one, _ = sft(state, data, rng, n_iters=6, it0=it0(0))  # Epoch ends at 5.
  half, _ = sft(state, data, rng, n_iters=3, it0=it0(0))
  two, _ = sft(half, data, rng, n_iters=3, it0=it0(3))
  jax.tree.map(np.testing.assert_array_equal, one.params, two.params)


def _policy_probs(graphdef, params, env, prefix) -> np.ndarray:
  """pi(. | prefix) of the MADE policy (teacher-forced, padded with 0s)."""
  toks = np.zeros((1, env.length), np.int32)
  toks[0, :len(prefix)] = prefix
  _, probs = policy.log_probs(graphdef, params, jnp.asarray(toks))
  return np.asarray(probs[0, len(prefix)], np.float64)


def _exact_theorem_terms(graphdef, params, env, gamma):
  """Distinguishability and alignment of mu_gamma on pi by enumerating every
  response (no automaton, no DP tables): the ratio of expectations that
  `rl.theorem_terms` estimates, over s ~ the alive steps of pi's responses.
  """
  probs = functools.lru_cache(maxsize=None)(
      lambda p: _policy_probs(graphdef, params, env, p))

  @functools.lru_cache(maxsize=None)
  def v_pi(prefix):
    if _naive_success(env, prefix):
      return 1.0
    if len(prefix) == env.length or (prefix and prefix[-1] == env.eos):
      return 0.0
    return float(sum(probs(prefix)[a] * v_pi(prefix + (a,))
                     for a in range(env.vocab)))

  num_d = num_a = den = 0.0

  def walk(prefix, p_prefix):
    nonlocal num_d, num_a, den
    if len(prefix) == env.length or (prefix and prefix[-1] == env.eos):
      return
    pi = probs(prefix)
    a_mu = np.array([_brute_value(env, prefix + (a,), gamma)
                     - _brute_value(env, prefix, gamma)
                     for a in range(env.vocab)])
    a_pi = np.array([v_pi(prefix + (a,)) - v_pi(prefix)
                     for a in range(env.vocab)])
    num_d += p_prefix * (pi @ a_mu ** 2 - (pi @ a_mu) ** 2)
    num_a += p_prefix * (pi @ (a_mu * a_pi))
    den += p_prefix
    for a in range(env.vocab):
      walk(prefix + (a,), p_prefix * pi[a])

  walk((), 1.0)
  return num_d / den, num_a / den


def test_theorem_terms_equal_hand_values_of_a_one_step_task():
  # One step, y* = (1,): A^mu(s, a) = 1[a = 1] - v_mu and A^pi(s, a) =
  # 1[a = 1] - p with p = pi(1), so both terms equal p (1 - p) by hand:
  # Var_pi(1[a = 1]) = p (1 - p); E_pi[(1[a=1] - v_mu)(1[a=1] - p)] = p (1 -
  # v_mu)(1 - p) + (1 - p) v_mu p = p (1 - p).
  env = env_lib.Env(target=(1,), length=1, vocab=3)
  graphdef, params = policy.init_params(env, (8,), jax.random.key(4))
  p = _policy_probs(graphdef, params, env, ())[1]
  assert 0.1 < p < 0.9
  ev = env_lib.prover_values(env, 5.0)
  np.testing.assert_allclose(ev.a_KRV[0, 1], [-5 / 7, 2 / 7, -5 / 7],
                             atol=1e-12)
  out = jax.jit(rl.theorem_terms, static_argnums=(0, 2, 5))(
      graphdef, params, env, jax.random.key(1),
      jnp.asarray(ev.a_KRV[None], jnp.float32), 20_000)
  # The variance is exact per state (one state here): no sampling error.
  np.testing.assert_allclose(float(out["disting"][0]), p * (1 - p),
                             rtol=1e-5)
  assert abs(float(out["align"][0]) - p * (1 - p)) <= 4 * float(
      out["align_se"][0])
  assert float(out["align_se"][0]) < 0.01


@pytest.mark.parametrize("gamma", [1.0, 6.0])
def test_theorem_terms_equal_exact_enumeration(gamma):
  """Both terms of Theorem 3.1 against enumeration of every response of a
  random MADE policy (A^pi exact from its tree, A^mu from brute force)."""
  env = env_lib.Env(target=(1, 2), length=4, vocab=4)
  graphdef, params = policy.init_params(env, (16,), jax.random.key(2))
  d_exact, a_exact = _exact_theorem_terms(graphdef, params, env, gamma)
  assert d_exact > 1e-3 and abs(a_exact) > 1e-3
  ev = env_lib.prover_values(env, gamma)
  out = jax.jit(rl.theorem_terms, static_argnums=(0, 2, 5))(
      graphdef, params, env, jax.random.key(3),
      jnp.asarray(ev.a_KRV[None], jnp.float32), 200_000)
  # Both are ratio estimates over 200k responses (~ 1e-3 relative error for
  # the variance term; the alignment carries a one-rollout estimate).
  np.testing.assert_allclose(float(out["disting"][0]), d_exact, rtol=0.01)
  assert abs(float(out["align"][0]) - a_exact) <= 4 * float(
      out["align_se"][0]) + 1e-4, (float(out["align"][0]), a_exact)
  assert float(out["align_se"][0]) < 0.1 * abs(a_exact)
