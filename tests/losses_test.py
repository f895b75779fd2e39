"""Tests for pav_jax.losses: values and gradients of the masked losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pav_jax import losses


@pytest.mark.parametrize("target", [0.0, 0.25, 1.0])
def test_sigmoid_bce_gradient_at_zero_logit_is_half_minus_target(target):
  x_N = jnp.zeros((4,))
  t_N = jnp.full((4,), target)
  mask_N = jnp.ones((4,))
  grad_N = jax.grad(lambda x: losses.sigmoid_bce(x, t_N, mask_N))(x_N)
  # Mean over 4 masked entries: d/dx_i = (sigmoid(0) - t) / 4.
  np.testing.assert_allclose(grad_N, (0.5 - target) / 4, atol=1e-7)


def test_sigmoid_bce_gradient_with_weights_and_mask():
  x_N = jnp.zeros((3,))
  t_N = jnp.zeros((3,))
  mask_N = jnp.array([1.0, 1.0, 0.0])
  w_N = jnp.array([2.0, 1.0, 5.0])
  grad_N = jax.grad(lambda x: losses.sigmoid_bce(x, t_N, mask_N, w_N))(x_N)
  # Normaliser: sum(mask * w) = 3.
  np.testing.assert_allclose(grad_N, [2 * 0.5 / 3, 0.5 / 3, 0.0], atol=1e-7)


def test_sigmoid_bce_values_are_stable_and_match_the_definition():
  x_N = jnp.array([-200.0, -3.0, 0.0, 2.5, 200.0])
  t_N = jnp.array([0.0, 1.0, 0.3, 0.0, 1.0])
  mask_N = jnp.ones((5,))
  got = [float(losses.sigmoid_bce(x_N[i:i + 1], t_N[i:i + 1], mask_N[:1]))
         for i in range(5)]
  p = 1 / (1 + np.exp(-np.array([-3.0, 0.0, 2.5])))
  want_mid = [-np.log(p[0]), -(0.3 * np.log(p[1]) + 0.7 * np.log(1 - p[1])),
              -np.log(1 - p[2])]
  np.testing.assert_allclose(got[1:4], want_mid, rtol=1e-6)
  assert got[0] == pytest.approx(0.0, abs=1e-6)
  assert got[4] == pytest.approx(0.0, abs=1e-6)
  g = jax.grad(lambda x: losses.sigmoid_bce(x, t_N, mask_N))(x_N)
  assert np.all(np.isfinite(g))


def test_pairwise_ranking_orders_two_hand_built_siblings():
  # Two sibling rows of one question (group 0), one prefix each: row 0 has
  # the higher MC value but starts with the lower logit; a third row of
  # another question must not be paired with them.
  target_BP = jnp.array([[0.9], [0.1], [0.0]])
  mask_BP = jnp.ones((3, 1), bool)
  group_B = jnp.array([0, 0, 1])
  logits_BP = jnp.array([[-1.0], [1.0], [5.0]])
  loss0 = losses.pairwise_ranking(logits_BP, target_BP, mask_BP, group_B)
  np.testing.assert_allclose(loss0, jax.nn.softplus(2.0), rtol=1e-6)
  grad_fn = jax.grad(losses.pairwise_ranking)
  for _ in range(200):
    logits_BP = logits_BP - 0.5 * grad_fn(logits_BP, target_BP, mask_BP,
                                          group_B)
  assert logits_BP[0, 0] > logits_BP[1, 0] + 1.0
  assert float(logits_BP[2, 0]) == 5.0  # unpaired: no gradient


def test_pairwise_ranking_ignores_small_gaps_and_masked_entries():
  target_BP = jnp.array([[0.5, 1.0], [0.4, 0.45]])
  mask_BP = jnp.array([[True, False], [True, True]])
  loss = losses.pairwise_ranking(jnp.array([[0.0, -9.0], [3.0, 9.0]]),
                                 target_BP, mask_BP, jnp.array([0, 0]),
                                 margin=0.25)
  assert float(loss) == 0.0  # 0.5 vs 0.4 too close; the 1.0 one masked
