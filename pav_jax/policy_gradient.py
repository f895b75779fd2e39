"""Pure math of policy-gradient RL with dense process-advantage rewards.

Every function is a plain `jnp` function over arrays with explicit masks, so
research code can import it without models, configs or NNX.

Shapes: B rollouts (k consecutive rows per prompt), T token positions, H step
slots. A response is a sequence of steps; a step ends at the step delimiter
or at EOS (both belong to the step they close). Tokens after EOS, padding and
prompt tokens belong to no step (step index -1).

How rewards reach tokens (paper Eq. 5). The per-step *reward* is sparse plus
dense: r_h = Rex * [h == last] + alpha * D_h, where D_h is A^mu(s_h, a_h)
(PAV-RL) or Q^mu(s_h, a_h) (the App. G ablation). The policy-gradient weight
of step h is the return-to-go of the outcome (Rex, the same for every step,
an unbiased one-sample estimate of Q^pi(s_h, a_h)) plus alpha * D_h of that
step only: the dense term is NOT summed over later steps (a sum of A^mu
telescopes back to the outcome and erases the dense signal). Each step's
weight is given to that step's tokens only. alpha = 0 is exactly ORM-RL.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from pav_jax import advantages
from pav_jax import steps

DENSE_KINDS = ("advantage", "q")

# Step indexing ----------------------------------------------------------------


def token_step_index(tokens_BT: jax.Array, response_mask_BT: jax.Array, *,
                     step_id: int, eos_id: int,
                     max_steps: int | None = None) -> jax.Array:
  """Per-token step index (0-based) of the response tokens; -1 elsewhere.

  A token's step is the number of step ends (delimiter or EOS) strictly
  before it in the response, so the delimiter / EOS closing a step belongs to
  that step. Tokens after the first EOS get -1, as do tokens outside
  `response_mask_BT` and (with `max_steps`) tokens of steps >= max_steps.
  """
  resp_BT = response_mask_BT.astype(bool)
  end_BT = resp_BT & (steps.is_step_end(tokens_BT, step_id)
                     | (tokens_BT == eos_id))
  eos_BT = resp_BT & (tokens_BT == eos_id)
  ends_incl_BT = jnp.cumsum(end_BT.astype(jnp.int32), axis=1)
  step_BT = ends_incl_BT - end_BT.astype(jnp.int32)
  eos_before_BT = jnp.cumsum(eos_BT.astype(jnp.int32), axis=1) - eos_BT
  ok_BT = resp_BT & (eos_before_BT == 0)
  if max_steps is not None:
    ok_BT = ok_BT & (step_BT < max_steps)
  return jnp.where(ok_BT, step_BT, -1)


def step_mask(step_BT: jax.Array, num_steps: int) -> jax.Array:
  """[B, H] True for step slots that own at least one token."""
  onehot_BTH = step_BT[..., None] == jnp.arange(num_steps)[None, None, :]
  return jnp.any(onehot_BTH, axis=1)


def step_rewards_to_tokens(step_value_BH: jax.Array, step_BT: jax.Array,
                           token_mask_BT: jax.Array | None = None) -> jax.Array:
  """Gives each step's value to that step's tokens only (Eq. 5); 0 elsewhere.

  Args:
    step_value_BH: a weight (reward, return, advantage) per step slot.
    step_BT: per-token step index from `token_step_index` (-1 = no step).
    token_mask_BT: optional extra mask (e.g. the loss mask).
  """
  h = step_value_BH.shape[1]
  idx_BT = jnp.clip(step_BT, 0, h - 1)
  out_BT = jnp.take_along_axis(step_value_BH, idx_BT, axis=1)
  keep_BT = (step_BT >= 0) & (step_BT < h)
  if token_mask_BT is not None:
    keep_BT = keep_BT & token_mask_BT.astype(bool)
  return jnp.where(keep_BT, out_BT, 0.0).astype(jnp.float32)


# Step rewards -----------------------------------------------------------------


def last_step_onehot(mask_BH: jax.Array) -> jax.Array:
  """[B, H] True at the last real step of each row (none if no step)."""
  h = mask_BH.shape[1]
  last_B = jnp.max(jnp.where(mask_BH, jnp.arange(h)[None, :], -1), axis=1)
  return jnp.arange(h)[None, :] == last_B[:, None]


def dense_step_rewards(q_pi_BH: jax.Array, v0_pi_B: jax.Array,
                       q_mask_BH: jax.Array, *, prover_k: float,
                       dense: str = "advantage") -> jax.Array:
  """Dense per-step term from Q^pi of every prefix (a PAV or MC estimates).

  q_pi_BH[:, h] is Q^pi after step h (0-based), v0_pi_B the question-only
  value. The prover is Best-of-K(pi) in closed form (advantages.bok_q):
  dense='advantage' gives A^mu(s_h, a_h) = Q^mu(s_h, a_h) - Q^mu(s_{h-1},
  a_{h-1}); dense='q' gives Q^mu(s_h, a_h) (the App. G ablation). Zero
  where `q_mask_BH` is False (e.g. a truncated, unclosed last step).
  """
  if dense not in DENSE_KINDS:
    raise ValueError(f"unknown dense reward {dense!r}; known: {DENSE_KINDS}")
  q_mu_BH = advantages.bok_q(q_pi_BH, prover_k)
  if dense == "q":
    return jnp.where(q_mask_BH, q_mu_BH, 0.0)
  return advantages.step_advantages(
      q_mu_BH, advantages.bok_q(v0_pi_B, prover_k), q_mask_BH)


def step_rewards(outcome_B: jax.Array, dense_BH: jax.Array,
                 mask_BH: jax.Array, alpha: float | jax.Array) -> jax.Array:
  """Per-step reward r_h = Rex * [h == last step] + alpha * dense_h."""
  last_BH = last_step_onehot(mask_BH)
  r_BH = jnp.where(last_BH, outcome_B[:, None], 0.0) + alpha * dense_BH
  return jnp.where(mask_BH, r_BH, 0.0).astype(jnp.float32)


def step_returns(outcome_B: jax.Array, dense_BH: jax.Array,
                 mask_BH: jax.Array, alpha: float | jax.Array) -> jax.Array:
  """Policy-gradient weight of each step (the effective reward of Eq. 5).

  Q̂^pi(s_h, a_h) + alpha * dense_h with Q̂^pi = the outcome's return-to-go
  (Rex on every step: the outcome is the only sparse reward) and the dense
  term of step h alone (not summed over later steps).
  """
  w_BH = outcome_B[:, None].astype(jnp.float32) + alpha * dense_BH
  return jnp.where(mask_BH, w_BH, 0.0).astype(jnp.float32)


# Advantage estimators ---------------------------------------------------------

# fn(returns_BT, mask_BT, values_BT, group_size) -> adv_BT (0 off the mask).
Estimator = Callable[[jax.Array, jax.Array, jax.Array, int], jax.Array]


def _row_score(returns_BT, mask_BT):
  m_BT = mask_BT.astype(jnp.float32)
  n_B = jnp.maximum(jnp.sum(m_BT, axis=1), 1.0)
  return jnp.sum(returns_BT * m_BT, axis=1) / n_B


def _groups(x_B, group_size):
  b = x_B.shape[0]
  if b % group_size:
    raise ValueError(f"batch of {b} rows is not a multiple of group_size "
                     f"{group_size} (k samples per prompt, consecutive rows)")
  return x_B.reshape(b // group_size, group_size)


def adv_none(returns_BT, mask_BT, values_BT, group_size):
  """No baseline: the token returns themselves."""
  del values_BT, group_size
  return jnp.where(mask_BT, returns_BT, 0.0)


def adv_value(returns_BT, mask_BT, values_BT, group_size):
  """Learned token-level value baseline (the paper's): G_t - V(s_t)."""
  del group_size
  return jnp.where(mask_BT, returns_BT - jax.lax.stop_gradient(values_BT), 0.0)


def adv_rloo(returns_BT, mask_BT, values_BT, group_size):
  """Leave-one-out over the k samples of a prompt (consecutive rows).

  Each row's scalar score is the token-mean of its returns (= the outcome
  when alpha = 0); a row's baseline is the mean score of the other k - 1
  rows of its group. Needs k >= 2.
  """
  del values_BT
  if group_size < 2:
    raise ValueError(f"rloo needs group_size >= 2, got {group_size}")
  s_GK = _groups(_row_score(returns_BT, mask_BT), group_size)
  base_GK = (jnp.sum(s_GK, axis=1, keepdims=True) - s_GK) / (group_size - 1)
  base_B = base_GK.reshape(-1)
  return jnp.where(mask_BT, returns_BT - base_B[:, None], 0.0)


def adv_group_mean(returns_BT, mask_BT, values_BT, group_size):
  """Baseline = mean row score of the prompt's group (self included)."""
  del values_BT
  s_GK = _groups(_row_score(returns_BT, mask_BT), group_size)
  base_B = jnp.broadcast_to(jnp.mean(s_GK, axis=1, keepdims=True),
                            s_GK.shape).reshape(-1)
  return jnp.where(mask_BT, returns_BT - base_B[:, None], 0.0)


ESTIMATORS: dict[str, Estimator] = {
    "value": adv_value,
    "rloo": adv_rloo,
    "group_mean": adv_group_mean,
    "none": adv_none,
}


def get_estimator(name: str) -> Estimator:
  """The registered estimator `name`; raises naming the key and the known."""
  try:
    return ESTIMATORS[name]
  except KeyError:
    raise KeyError(
        f"unknown advantage estimator {name!r} (rl.estimator); known: "
        f"{sorted(ESTIMATORS)}") from None


# Losses -----------------------------------------------------------------------


def _masked_mean(x, mask):
  m = mask.astype(jnp.float32)
  return jnp.sum(x * m) / jnp.maximum(jnp.sum(m), 1.0)


def reinforce_loss(logp_BT: jax.Array, adv_BT: jax.Array,
                   mask_BT: jax.Array) -> jax.Array:
  """-mean_t A_t log pi(a_t | s_t) over masked tokens (A is a constant)."""
  return -_masked_mean(jax.lax.stop_gradient(adv_BT) * logp_BT, mask_BT)


def kl_per_token(logp_BT: jax.Array, ref_logp_BT: jax.Array) -> jax.Array:
  """k3 estimator of KL(pi || ref) at sampled tokens: exp(r) - r - 1 >= 0.

  r = log ref - log pi. Unbiased for KL under samples from pi, always >= 0,
  exactly 0 where pi == ref (Schulman's k3, as in GRPO).
  """
  r_BT = ref_logp_BT - logp_BT
  return jnp.exp(r_BT) - r_BT - 1.0


def kl_penalty(logp_BT: jax.Array, ref_logp_BT: jax.Array,
               mask_BT: jax.Array) -> jax.Array:
  """Token-mean k3 KL to the (stop-gradient) reference policy."""
  return _masked_mean(kl_per_token(logp_BT, jax.lax.stop_gradient(ref_logp_BT)),
                      mask_BT)


def value_loss(v_BT: jax.Array, target_BT: jax.Array,
               mask_BT: jax.Array) -> jax.Array:
  """0.5 * token-mean squared error toward the (constant) targets."""
  err_BT = v_BT - jax.lax.stop_gradient(target_BT)
  return 0.5 * _masked_mean(jnp.square(err_BT), mask_BT)
