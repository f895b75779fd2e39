"""Pure math of progress rewards: Q, BoK provers, advantages, effective reward.

Everything here is a plain `jnp` function over arrays with explicit masks, so
research code can import it without models, configs or NNX.

Shapes: B = trajectories, P = step-boundary prefixes of a trajectory. A
trajectory with H steps has H + 1 prefixes s_1 .. s_{H+1}: s_1 is the
question alone, s_{h+1} the prefix after step h. `q_BP[:, h]` holds the value
Q(s_h, a_h) = V(s_{h+1}) of the prefix *after* step h (deterministic dynamics),
and `v0_B` the value of the question-only prefix s_1.
"""

import jax
import jax.numpy as jnp
import numpy as np


def bok_q(q_pi: jax.Array, k: float | jax.Array) -> jax.Array:
  """Q of the Best-of-K(pi) prover from Q of pi: 1 - (1 - Q^pi)^K (Eq. 30)."""
  q_pi = jnp.clip(q_pi, 0.0, 1.0)
  # (1 - q)^K computed as exp(K log1p(-q)) is accurate for q near 0, where
  # the advantage lives; q == 1 gives exp(-inf) = 0 exactly.
  return -jnp.expm1(k * jnp.log1p(-q_pi))


def step_advantages(
    q_BP: jax.Array, v0_B: jax.Array, mask_BP: jax.Array
) -> jax.Array:
  """A(s_h, a_h) = Q(s_h, a_h) - Q(s_{h-1}, a_{h-1}), with Q(s_0, a_0) := V(s_1).

  Args:
    q_BP: Q of each step h (value of the prefix after step h).
    v0_B: value of the question-only prefix.
    mask_BP: 1 for real steps, 0 for padding. Steps must be left-aligned.

  Returns:
    A_BP, zero at padded positions.
  """
  prev_BP = jnp.concatenate([v0_B[:, None], q_BP[:, :-1]], axis=1)
  return jnp.where(mask_BP > 0, q_BP - prev_BP, 0.0)


def effective_reward(
    q_pi_BP: jax.Array, adv_mu_BP: jax.Array, alpha: float | jax.Array
) -> jax.Array:
  """Effective reward of a step, Q^pi(s, a) + alpha * A^mu(s, a) (Eq. 5)."""
  return q_pi_BP + alpha * adv_mu_BP


def pav_step_rewards(
    q_pi_BP: jax.Array,
    v0_pi_B: jax.Array,
    mask_BP: jax.Array,
    alpha: float,
    k: float,
) -> tuple[jax.Array, jax.Array]:
  """Effective rewards and BoK(pi) advantages from Q^pi of every prefix.

  Returns (reward_BP, adv_mu_BP), zero at padded positions.
  """
  adv_BP = step_advantages(bok_q(q_pi_BP, k), bok_q(v0_pi_B, k), mask_BP)
  reward_BP = jnp.where(mask_BP > 0, effective_reward(q_pi_BP, adv_BP, alpha), 0.0)
  return reward_BP, adv_BP


def pass_at_k(n: np.ndarray, c: np.ndarray, k: int) -> np.ndarray:
  """Unbiased pass@k from n samples with c correct (Chen et al., 2021).

  1 - C(n - c, k) / C(n, k), computed as a stable product. Host-side numpy:
  it is an evaluation metric, not part of a jitted step.
  """
  n = np.asarray(n, dtype=np.int64)
  c = np.asarray(c, dtype=np.int64)
  if np.any(k > n):
    raise ValueError(f"pass@{k} needs at least {k} samples per problem; got {n.min()}")
  out = np.empty(np.broadcast(n, c).shape, dtype=np.float64)
  for idx in np.ndindex(out.shape):
    ni, ci = int(np.broadcast_to(n, out.shape)[idx]), int(np.broadcast_to(c, out.shape)[idx])
    if ni - ci < k:
      out[idx] = 1.0
    else:
      out[idx] = 1.0 - np.prod(1.0 - k / np.arange(ni - ci + 1, ni + 1))
  return out


def mc_value(successes: jax.Array, n: int) -> jax.Array:
  """Monte-Carlo value estimate: fraction of n rollouts that succeeded."""
  return successes.astype(jnp.float32) / n


def binomial_ci(q: np.ndarray, n: int, z: float = 3.29) -> np.ndarray:
  """Half-width of a Wilson-style normal CI for a Bernoulli mean from n draws.

  z = 3.29 is two-sided 99.9%. Adds 1/n of continuity so q in {0, 1} gets a
  nonzero width.
  """
  q = np.asarray(q, dtype=np.float64)
  return z * np.sqrt(q * (1 - q) / n) + 1.0 / n
