"""Layer ops written for speed equal their plain einsum definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pav_jax import layers

_NEG = layers._NEG_INF  # pylint: disable=protected-access


def _close(a, b, atol=1e-5, rtol=1e-5):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol,
                             rtol=rtol)


@pytest.mark.parametrize("x_shape,w_shape,in_dims,spec", [
    ((3, 5, 8), (8, 4, 6), 1, "BTD,DNH->BTNH"),
    ((3, 5, 4, 6), (4, 6, 8), 2, "BTNH,NHD->BTD"),
    ((2, 7, 8), (8, 16), 1, "BTD,DF->BTF"),
    ((7, 8), (8, 16), 1, "TD,DF->TF"),
])
def test_dense_equals_einsum_in_value_and_gradient(x_shape, w_shape, in_dims,
                                                   spec):
  kx, kw, kc = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, x_shape)
  w = jax.random.normal(kw, w_shape)
  want, vjp_want = jax.vjp(lambda x, w: jnp.einsum(spec, x, w), x, w)
  got, vjp_got = jax.vjp(lambda x, w: layers.dense(x, w, in_dims), x, w)
  assert got.shape == want.shape
  _close(got, want)
  ct = jax.random.normal(kc, want.shape)
  for g, e in zip(vjp_got(ct), vjp_want(ct)):
    _close(g, e)


def _attend_reference(q_BTKGH, k_BSKH, v_BSKH, mask_BTS, cap):
  """The 5-D [B, K, G, T, S] form the heads-major `_attend` replaced."""
  logits = jnp.einsum("BTKGH,BSKH->BKGTS", q_BTKGH, k_BSKH)
  logits = layers.soft_cap(logits, cap)
  logits = jnp.where(mask_BTS[:, None, None], logits, _NEG)
  probs = jax.nn.softmax(logits, axis=-1)
  return jnp.einsum("BKGTS,BSKH->BTKGH", probs, v_BSKH)


@pytest.mark.parametrize("kv_heads,groups", [(1, 4), (2, 2), (4, 1)])
@pytest.mark.parametrize("kv_layout", ["BSKH", "BKSH"])
@pytest.mark.parametrize("window", [None, 3])
def test_attend_equals_reference_in_value_and_gradient(kv_heads, groups,
                                                       kv_layout, window):
  b, t, h = 2, 7, 8
  keys = jax.random.split(jax.random.key(1), 4)
  q = 2.0 * jax.random.normal(keys[0], (b, t, kv_heads, groups, h))
  k = 2.0 * jax.random.normal(keys[1], (b, t, kv_heads, h))
  v = jax.random.normal(keys[2], (b, t, kv_heads, h))
  valid = jnp.arange(t)[None] >= jnp.array([[0], [2]])  # row 1 left-padded
  pos = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
  kpos = jnp.where(valid, pos, -1)
  mask = layers.attention_mask(pos, kpos, window)
  cap = 5.0  # small: the soft-cap's gradient matters

  def ours(q, k, v):
    if kv_layout == "BKSH":
      k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    return layers._attend(q, k, v, mask, cap, kv_layout)  # pylint: disable=protected-access

  want, vjp_want = jax.vjp(
      lambda q, k, v: _attend_reference(q, k, v, mask, cap), q, k, v)
  got, vjp_got = jax.vjp(ours, q, k, v)
  _close(got, want)
  ct = jax.random.normal(keys[3], want.shape)
  for g, e in zip(vjp_got(ct), vjp_want(ct)):
    _close(g, e)
