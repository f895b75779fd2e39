"""Planted-subsequence environment, prover family mu_gamma and exact values.

Setlur et al. (2024), Sec. 3.3 / App. B. A response is `length` tokens over
`vocab` symbols; the last symbol is EOS, and tokens at and after the first EOS
do not count. The outcome reward is 1 iff `target` (y*) appears contiguously
before EOS.

Matching uses the KMP automaton of y*: automaton state k in 0..m (m = |y*|) is
the length of the longest suffix of the prefix that equals y*[:k]; m is
absorbing (success is already earned). The prover mu_gamma gives weight gamma
to y*[k] and 1 to every other token (EOS included), so it depends on the
prefix only through k. Its Q, V and A are therefore exact tables over
(automaton state K, remaining length R, action V), built by dynamic
programming in float64 on the host.

Shapes: B batch, L positions (h = 0..L-1; step h takes action a_h at state s_h,
the prefix of h tokens), K automaton states (m + 1), R remaining tokens
(0..L), V vocabulary, N rollouts.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Env:
  """Static description of a planted-subsequence instance (hashable)."""

  target: tuple[int, ...] = (3, 6, 0, 3, 5)
  length: int = 10
  vocab: int = 15

  @property
  def eos(self) -> int:
    return self.vocab - 1

  @property
  def m(self) -> int:
    """Length of y*, also the index of the absorbing success state."""
    return len(self.target)

  @property
  def n_states(self) -> int:
    return self.m + 1


def transition_table(env: Env) -> np.ndarray:
  """KMP transitions delta_KV[k, a]: automaton state after appending a.

  Success (k = m) is absorbing. EOS never belongs to y*, so it sends k < m to
  0; callers stop the automaton at EOS through the alive mask.
  """
  t = list(env.target)
  delta_KV = np.zeros((env.n_states, env.vocab), np.int32)
  for k in range(env.n_states):
    for a in range(env.vocab):
      if k == env.m:
        delta_KV[k, a] = env.m
        continue
      s = t[:k] + [a]
      # Longest suffix of s that is a prefix of y* (a plain search is fine
      # at this size and is exactly the KMP automaton).
      for j in range(min(len(s), env.m), -1, -1):
        if s[len(s) - j:] == t[:j]:
          delta_KV[k, a] = j
          break
  return delta_KV


def prover_probs(env: Env, gamma: float) -> np.ndarray:
  """mu_gamma(a | k) as a K x V table; uniform once y* is matched."""
  w_KV = np.ones((env.n_states, env.vocab), np.float64)
  for k in range(env.m):
    w_KV[k, env.target[k]] = gamma
  return w_KV / w_KV.sum(-1, keepdims=True)


@dataclasses.dataclass(frozen=True)
class ExactValues:
  """Exact Q/V/A tables of a policy that depends only on automaton state.

  v_KR[k, r]: success probability from automaton state k with r tokens left.
  q_KRV[k, r, a]: the same after taking a (deterministic dynamics), r >= 1.
  a_KRV = q_KRV - v_KR[..., None]; zero for r = 0 (no action left).
  """

  v_KR: np.ndarray
  q_KRV: np.ndarray
  a_KRV: np.ndarray


def exact_values(env: Env, probs_KV: np.ndarray) -> ExactValues:
  """Dynamic programming over (automaton state, remaining length)."""
  delta_KV = transition_table(env)
  m, el = env.m, env.length
  v_KR = np.zeros((env.n_states, el + 1), np.float64)
  q_KRV = np.zeros((env.n_states, el + 1, env.vocab), np.float64)
  v_KR[m, :] = 1.0
  q_KRV[m, :, :] = 1.0
  for r in range(1, el + 1):
    for k in range(m):
      q_V = v_KR[delta_KV[k], r - 1].copy()
      q_V[env.eos] = 0.0  # Stopping before a match fails.
      q_KRV[k, r] = q_V
      v_KR[k, r] = probs_KV[k] @ q_V
  q_KRV[:, 0, :] = v_KR[:, :1]
  a_KRV = q_KRV - v_KR[:, :, None]
  return ExactValues(v_KR=v_KR, q_KRV=q_KRV, a_KRV=a_KRV)


def prover_values(env: Env, gamma: float) -> ExactValues:
  """Exact Q^mu, V^mu, A^mu of mu_gamma."""
  return exact_values(env, prover_probs(env, gamma))


# ----------------------------------------------------------------------------
# Trajectory bookkeeping (jnp, jit-friendly).
# ----------------------------------------------------------------------------


def automaton_states(env: Env, tokens_BL: jax.Array) -> jax.Array:
  """Automaton state k_h of every state s_h, h = 0..L (s_L is the final one).

  The state is frozen from the first EOS on, so k at the last position is the
  state in which the response ended.
  """
  delta_KV = jnp.asarray(transition_table(env))
  is_eos_BL = tokens_BL == env.eos

  def body(k_B, xs):
    tok_B, eos_B = xs
    nxt_B = jnp.where(eos_B, k_B, delta_KV[k_B, tok_B])
    return nxt_B, k_B

  k0_B = jnp.zeros(tokens_BL.shape[:1], jnp.int32)
  # Freeze at EOS and everything after it.
  stop_BL = jnp.cumsum(is_eos_BL, axis=1) > 0
  kl_B, k_LB = jax.lax.scan(body, k0_B, (tokens_BL.T, stop_BL.T))
  return jnp.concatenate([k_LB.T, kl_B[:, None]], axis=1)


def alive_mask(env: Env, tokens_BL: jax.Array) -> jax.Array:
  """1.0 for real steps: every position up to and including the first EOS."""
  is_eos_BL = (tokens_BL == env.eos).astype(jnp.int32)
  before_BL = jnp.cumsum(is_eos_BL, axis=1) - is_eos_BL
  return (before_BL == 0).astype(jnp.float32)


def reward(env: Env, tokens_BL: jax.Array) -> jax.Array:
  """Outcome reward: 1.0 iff y* occurs contiguously before the first EOS."""
  return (automaton_states(env, tokens_BL)[:, -1] == env.m).astype(
      jnp.float32
  )


def remaining_L(env: Env) -> jax.Array:
  """Tokens left at each position h (state s_h), r_h = L - h."""
  return env.length - jnp.arange(env.length, dtype=jnp.int32)


def gather_step(
    env: Env, table_KRV: jax.Array, tokens_BL: jax.Array
) -> jax.Array:
  """table[k_h, r_h, a_h] for every step of every trajectory, 0 if masked."""
  k_BL = automaton_states(env, tokens_BL)[:, :-1]
  r_L = remaining_L(env)
  r_BL = jnp.broadcast_to(r_L[None, :], tokens_BL.shape)
  out_BL = table_KRV[k_BL, r_BL, tokens_BL]
  return out_BL * alive_mask(env, tokens_BL)


def gather_state(
    env: Env, table_KRV: jax.Array, tokens_BL: jax.Array
) -> jax.Array:
  """table[k_h, r_h, :] for every state s_h: B x L x V."""
  k_BL = automaton_states(env, tokens_BL)[:, :-1]
  r_BL = jnp.broadcast_to(remaining_L(env)[None, :], tokens_BL.shape)
  return table_KRV[k_BL, r_BL]


# ----------------------------------------------------------------------------
# Sampling from the prover and Monte-Carlo values.
# ----------------------------------------------------------------------------


def sample_prover(
    env: Env, probs_KV: jax.Array, rng: jax.Array, n: int
) -> jax.Array:
  """n responses from mu; tokens after the first EOS are set to EOS."""
  delta_KV = jnp.asarray(transition_table(env))
  logp_KV = jnp.log(probs_KV)

  def body(carry, rng_h):
    k_N, done_N = carry
    tok_N = jax.random.categorical(rng_h, logp_KV[k_N])
    tok_N = jnp.where(done_N, env.eos, tok_N)
    done_N = done_N | (tok_N == env.eos)
    return (delta_KV[k_N, tok_N], done_N), tok_N

  init = (jnp.zeros((n,), jnp.int32), jnp.zeros((n,), bool))
  _, tok_LN = jax.lax.scan(body, init, jax.random.split(rng, env.length))
  return tok_LN.T


def mc_prover_successes(
    env: Env,
    probs_KV: jax.Array,
    rng: jax.Array,
    k_S: jax.Array,
    r_S: jax.Array,
    n: int,
) -> jax.Array:
  """Successes of n mu-rollouts from each (automaton state, remaining) pair.

  successes / n is the MC estimate of V^mu(k, r); Q^mu(s, a) is V^mu of the
  next state (deterministic dynamics). Returns int32 counts, shape S.
  """
  delta_KV = jnp.asarray(transition_table(env))
  logp_KV = jnp.log(probs_KV)
  k_SN = jnp.broadcast_to(k_S[:, None], (k_S.shape[0], n))
  r_SN = jnp.broadcast_to(r_S[:, None], (k_S.shape[0], n))

  def body(carry, xs):
    k_SN, done_SN = carry
    t, rng_t = xs
    tok_SN = jax.random.categorical(rng_t, logp_KV[k_SN])
    act_SN = (~done_SN) & (t < r_SN)
    done_SN = done_SN | (act_SN & (tok_SN == env.eos))
    k_SN = jnp.where(act_SN & (tok_SN != env.eos), delta_KV[k_SN, tok_SN],
                     k_SN)
    return (k_SN, done_SN), None

  ts = jnp.arange(env.length)
  (k_SN, _), _ = jax.lax.scan(
      body, (k_SN, jnp.zeros(k_SN.shape, bool)),
      (ts, jax.random.split(rng, env.length)))
  return jnp.sum(k_SN == env.m, axis=1)
