"""Pure math of progress rewards: BoK provers, advantages, effective reward.

The one home of the progress math: the labeller, the verifier trainer, the
search and the RL stage all call these. Everything is a plain `jnp` function
over arrays with explicit masks, so research code can import it without
models, configs or NNX. Host-side evaluation metrics live in `metrics.py`.

Layout (shared with `verifier.prefix_values` and the labelled set): a
trajectory with H steps has H + 1 prefixes s_1 .. s_{H+1}; s_1 is the
question alone, s_{h+1} the prefix after step h. `q_NP[:, 0]` = V(s_1) and
`q_NP[:, h]` = Q(s_h, a_h) = V(s_{h+1}) (deterministic dynamics); `mask_NP`
marks the real prefixes (left-aligned). Advantages in this layout are stored
at the index of the step's *result*: `a_NP[:, h]` = A(s_h, a_h), index 0 is
zero. `step_advantages` is the same math in the step layout (`q_BH` without
the s_1 column, `v0_B` beside it).
"""

import jax
import jax.numpy as jnp

from pav_jax import metrics


def bok_q(q_pi: jax.Array, k: float | jax.Array) -> jax.Array:
  """Q of the Best-of-K(pi) prover from Q of pi: 1 - (1 - Q^pi)^K (Eq. 30)."""
  q_pi = jnp.clip(q_pi, 0.0, 1.0)
  # (1 - q)^K computed as exp(K log1p(-q)) is accurate for q near 0, where
  # the advantage lives; q == 1 gives exp(-inf) = 0 exactly.
  return -jnp.expm1(k * jnp.log1p(-q_pi))


def bok_step_advantage(q_after: jax.Array, q_before: jax.Array,
                       prover_k: float | jax.Array) -> jax.Array:
  """A^mu(s, a) = Q^mu(s, a) - V^mu(s) for mu = BoK(pi), from Q^pi values."""
  return bok_q(q_after, prover_k) - bok_q(q_before, prover_k)


def step_advantages(
    q_BH: jax.Array, v0_B: jax.Array, mask_BH: jax.Array
) -> jax.Array:
  """A(s_h, a_h) = Q(s_h, a_h) - Q(s_{h-1}, a_{h-1}); Q(s_0, a_0) := V(s_1).

  Step layout: column h - 1 holds step h.

  Args:
    q_BH: Q of each step h (value of the prefix after step h).
    v0_B: value of the question-only prefix.
    mask_BH: 1 for real steps, 0 for padding. Steps must be left-aligned.

  Returns:
    A_BH, zero at padded positions.
  """
  prev_BH = jnp.concatenate([v0_B[:, None], q_BH[:, :-1]], axis=1)
  return jnp.where(mask_BH > 0, q_BH - prev_BH, 0.0)


def prefix_advantages(v_NP: jax.Array, mask_NP: jax.Array) -> jax.Array:
  """A(s_h, a_h) = V(s_{h+1}) - V(s_h) stored at index h (index 0 is zero).

  `v_NP[:, 0]` is the question-only value V(s_1); padding and index 0 get 0.
  """
  a_NH = step_advantages(v_NP[:, 1:], v_NP[:, 0], mask_NP[:, 1:])
  return jnp.concatenate([jnp.zeros_like(v_NP[:, :1]), a_NH], axis=1)


def prover_advantages(q_pi_NP: jax.Array, mask_NP: jax.Array,
                      prover_k: float | None = None,
                      q_mu_NP: jax.Array | None = None) -> jax.Array:
  """A^mu per prefix for mu = pi (prover_k None/1), BoK(pi), or a checkpoint.

  A checkpoint prover passes its own values `q_mu_NP` (then prover_k is
  ignored).
  """
  if q_mu_NP is not None:
    return prefix_advantages(q_mu_NP, mask_NP)
  v_NP = (q_pi_NP if prover_k is None or prover_k == 1
          else bok_q(q_pi_NP, prover_k))
  return prefix_advantages(v_NP, mask_NP)


def effective_reward(
    q_pi: jax.Array, adv_mu: jax.Array, alpha: float | jax.Array
) -> jax.Array:
  """Effective reward of a step, Q^pi(s, a) + alpha * A^mu(s, a) (Eq. 5)."""
  return q_pi + alpha * adv_mu


def effective_rewards(q_pi_NP: jax.Array, a_mu_NP: jax.Array,
                      mask_NP: jax.Array,
                      alpha: float | jax.Array) -> jax.Array:
  """Q^pi + alpha A^mu per prefix (zero on padding)."""
  return jnp.where(mask_NP, effective_reward(q_pi_NP, a_mu_NP, alpha), 0.0)


def pav_rewards(q_pi_NP: jax.Array, mask_NP: jax.Array, *, alpha: float,
                prover_k: float) -> jax.Array:
  """PAV effective rewards of every prefix with a BoK(pi) prover (Eq. 5, 30).

  Index 0 (the question) holds Q^pi(s_1) (its advantage is zero).
  """
  a_NP = prover_advantages(q_pi_NP, mask_NP, prover_k)
  return effective_rewards(q_pi_NP, a_NP, mask_NP, alpha)


# Label selection and weighting (over the same layout) -------------------------


def class_balance_weights(q_NP: jax.Array, mask_NP: jax.Array,
                          threshold: float = 0.5) -> jax.Array:
  """Weights giving buckets Q̂ < threshold and Q̂ >= threshold equal mass.

  Normalised so the weights of the masked entries average to 1; an empty
  bucket leaves the other one at weight 1.
  """
  m_NP = mask_NP.astype(jnp.float32)
  hi_NP = (q_NP >= threshold).astype(jnp.float32) * m_NP
  lo_NP = m_NP - hi_NP
  n_hi, n_lo, n = jnp.sum(hi_NP), jnp.sum(lo_NP), jnp.sum(m_NP)
  both = (n_hi > 0) & (n_lo > 0)
  w_hi = jnp.where(both, 0.5 * n / jnp.maximum(n_hi, 1.0), 1.0)
  w_lo = jnp.where(both, 0.5 * n / jnp.maximum(n_lo, 1.0), 1.0)
  return hi_NP * w_hi + lo_NP * w_lo


def first_pit(q_NP: jax.Array, mask_NP: jax.Array,
              high: float = 0.5) -> tuple[jax.Array, jax.Array]:
  """First pit of each row: the first prefix with Q̂ == 0 after a high state.

  Returns (pit_N, keep_NP): pit_N is the prefix index of the pit (-1 when the
  row never reaches a state with Q̂ >= high and then falls to 0), keep_NP marks
  the prefixes up to and including it (all False for rows without a pit).
  """
  p = q_NP.shape[1]
  m_NP = mask_NP.astype(bool)
  high_NP = (q_NP >= high) & m_NP
  seen_high_NP = jnp.cumsum(high_NP.astype(jnp.int32), axis=1) > 0
  pit_NP = seen_high_NP & (q_NP <= 0.0) & m_NP
  has_N = jnp.any(pit_NP, axis=1)
  pit_N = jnp.where(has_N, jnp.argmax(pit_NP, axis=1), -1)
  keep_NP = (jnp.arange(p)[None, :] <= pit_N[:, None]) & m_NP
  return pit_N.astype(jnp.int32), keep_NP


def first_pit_selection(q_NP: jax.Array, mask_NP: jax.Array,
                        outcome_N: jax.Array, high: float = 0.5,
                        keep_no_pit: bool = False) -> jax.Array:
  """"First pit" training prefixes (App. D): every prefix of a correct seed;
  of a failing seed, the prefixes up to its first pit after a high state;
  a failing seed without a pit keeps none (keep_no_pit=False) or all of
  them (keep_no_pit=True, as `labelling.LabelConfig.first_pit` does)."""
  pit_N, keep_NP = first_pit(q_NP, mask_NP, high)
  m_NP = mask_NP.astype(bool)
  if keep_no_pit:
    keep_NP = jnp.where((pit_N < 0)[:, None], m_NP, keep_NP)
  return jnp.where((outcome_N > 0.5)[:, None], m_NP, keep_NP)


def mc_value(successes: jax.Array, n: int) -> jax.Array:
  """Monte-Carlo value estimate: fraction of n rollouts that succeeded."""
  return successes.astype(jnp.float32) / n


# Host metrics moved to `metrics.py`; kept here for existing callers
# (pav_jax/didactic, tests/didactic_test.py).
pass_at_k = metrics.pass_at_k
binomial_ci = metrics.binomial_ci
