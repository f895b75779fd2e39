"""Losses as plain jnp functions over arrays with explicit masks (float32)."""

import jax
import jax.numpy as jnp


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  mask = mask.astype(jnp.float32)
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def token_logprobs(logits_BTV: jax.Array, targets_BT: jax.Array) -> jax.Array:
  """log p(target) per position, in float32."""
  logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp_BTV, targets_BT[..., None], axis=-1)[..., 0]


def next_token_xent(
    logits_BTV: jax.Array, tokens_BT: jax.Array, loss_mask_BT: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Mean next-token cross-entropy over masked target positions.

  logits[:, t] predicts tokens[:, t + 1]; `loss_mask_BT[:, t + 1]` says
  whether token t + 1 is trained on (e.g. solution tokens only).
  Returns (loss, number of target tokens).
  """
  logp_BT = token_logprobs(logits_BTV[:, :-1], tokens_BT[:, 1:])
  mask_BT = loss_mask_BT[:, 1:]
  return -masked_mean(logp_BT, mask_BT), jnp.sum(mask_BT.astype(jnp.float32))


def sigmoid_bce(logits: jax.Array, targets: jax.Array, mask: jax.Array,
                weights: jax.Array | None = None) -> jax.Array:
  """Binary cross-entropy with soft targets in [0, 1] on sigmoid logits.

  Written as t * softplus(-x) + (1 - t) * softplus(x), which is stable for
  large |x| and smooth everywhere: its gradient is sigmoid(x) - t, also at
  x == 0 (0.5 - t), so a zero-initialised head gets a non-zero gradient
  even when every target is 0. (A form with `abs(x)` has a kink at 0 whose
  subgradient JAX takes as -t there, which froze such heads.)
  """
  logits = logits.astype(jnp.float32)
  targets = targets.astype(jnp.float32)
  losses = (targets * jax.nn.softplus(-logits)
            + (1.0 - targets) * jax.nn.softplus(logits))
  if weights is not None:
    mask = mask.astype(jnp.float32) * weights
  return masked_mean(losses, mask)


def pairwise_ranking(logits_BP: jax.Array, targets_BP: jax.Array,
                     mask_BP: jax.Array, group_B: jax.Array,
                     margin: float = 0.25) -> jax.Array:
  """Bradley-Terry loss over pairs of prefixes of one question (group).

  Every ordered pair (i, j) of masked entries whose rows share a group and
  whose targets differ by >= margin (t_i - t_j >= margin) contributes
  softplus(-(logit_i - logit_j)) = -log sigmoid(logit_i - logit_j); the
  loss is the mean over such pairs (0 when there are none). Ranking within
  a question is what best-of-N and beam search need; a pointwise BCE can be
  lowered by learning question difficulty alone.
  """
  p = logits_BP.shape[1]
  l_F = logits_BP.astype(jnp.float32).reshape(-1)
  t_F = targets_BP.astype(jnp.float32).reshape(-1)
  m_F = mask_BP.astype(bool).reshape(-1)
  g_F = jnp.repeat(group_B, p)
  pair_FF = ((g_F[:, None] == g_F[None, :]) & m_F[:, None] & m_F[None, :]
             & (t_F[:, None] - t_F[None, :] >= margin))
  loss_FF = jax.nn.softplus(-(l_F[:, None] - l_F[None, :]))
  return masked_mean(loss_FF, pair_FF)
