"""Backbone tests: cached decode == full forward, jit == eager, padding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pav_jax import config as config_lib
from pav_jax import transformer as tr

_fwd = jax.jit(tr.forward, static_argnums=0)


def _tiny(**kw):
  return config_lib.ModelConfig.tiny(vocab_size=64).replace(
      num_layers=2, embed_dim=32, hidden_dim=64, head_dim=8, sliding_window=4,
      **kw)


@pytest.mark.parametrize("num_kv_heads", [1, 2, 4])
def test_cached_decode_matches_full_forward(num_kv_heads):
  cfg = _tiny(num_kv_heads=num_kv_heads)
  graphdef, params = tr.split(tr.create(cfg, seed=1))
  b, t, split = 3, 13, 5  # sequence longer than the window of 4
  tok_BT = jax.random.randint(jax.random.key(0), (b, t), 0, cfg.vocab_size)
  valid_BT = jnp.ones((b, t), bool)
  pos_BT = tr.positions_from_mask(valid_BT)
  full_BTV, _ = tr.forward(graphdef, params, tok_BT, pos_BT, valid_BT)
  cache = tr.init_cache(cfg, b, 24)
  out, cache = _fwd(graphdef, params, tok_BT[:, :split],
                          pos_BT[:, :split], valid_BT[:, :split], cache)
  outs = [out]
  for i in range(split, t):
    out, cache = _fwd(graphdef, params, tok_BT[:, i:i + 1],
                            pos_BT[:, i:i + 1], valid_BT[:, i:i + 1], cache)
    outs.append(out)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), full_BTV, atol=2e-5,
                             rtol=1e-5)
  assert int(cache["index"]) == t


def test_sliding_window_changes_logits_only_past_window():
  cfg = _tiny(num_kv_heads=2)
  graphdef, params = tr.split(tr.create(cfg))
  glob = cfg.replace(sliding_window=None)
  graphdef_g, _ = tr.split(tr.create(glob))
  tok = jax.random.randint(jax.random.key(3), (1, 10), 0, cfg.vocab_size)
  valid = jnp.ones_like(tok, bool)
  pos = tr.positions_from_mask(valid)
  local, _ = _fwd(graphdef, params, tok, pos, valid)
  full, _ = _fwd(graphdef_g, params, tok, pos, valid)
  np.testing.assert_allclose(local[:, :4], full[:, :4], atol=1e-5)
  assert jnp.abs(local[:, 4:] - full[:, 4:]).max() > 1e-3


def test_padding_is_ignored():
  cfg = _tiny(num_kv_heads=2)
  graphdef, params = tr.split(tr.create(cfg))
  tok = jax.random.randint(jax.random.key(4), (1, 6), 1, cfg.vocab_size)
  valid = jnp.ones_like(tok, bool)
  ref, _ = _fwd(graphdef, params, tok, tr.positions_from_mask(valid), valid)
  # Same tokens with garbage padding in the middle of the row.
  tok_p = jnp.concatenate([tok[:, :3], jnp.full((1, 2), 7), tok[:, 3:]], 1)
  valid_p = jnp.array([[1, 1, 1, 0, 0, 1, 1, 1]], bool)
  out, _ = _fwd(graphdef, params, tok_p, tr.positions_from_mask(valid_p),
                valid_p)
  np.testing.assert_allclose(out[:, valid_p[0]], ref, atol=2e-5)


def test_jit_equals_eager_and_bf16_close():
  cfg = _tiny(num_kv_heads=2)
  graphdef, params = tr.split(tr.create(cfg))
  tok = jax.random.randint(jax.random.key(5), (2, 7), 0, cfg.vocab_size)
  valid = jnp.ones_like(tok, bool)
  pos = tr.positions_from_mask(valid)
  eager, _ = tr.forward(graphdef, params, tok, pos, valid)
  jitted, _ = jax.jit(tr.forward, static_argnums=0)(graphdef, params, tok,
                                                    pos, valid)
  np.testing.assert_allclose(eager, jitted, atol=1e-5)
  graphdef16, _ = tr.split(tr.create(cfg.replace(dtype="bfloat16")))
  bf16, _ = tr.forward(graphdef16, params, tok, pos, valid)
  assert bf16.dtype == jnp.float32  # logits always float32
  assert float(jnp.mean(jnp.argmax(bf16, -1) == jnp.argmax(eager, -1))) > 0.8


def test_param_count_matches_config():
  cfg = config_lib.ModelConfig.tiny()
  _, params = tr.split(tr.create(cfg))
  n = sum(x.size for x in jax.tree.leaves(params))
  assert n == cfg.num_params() < 2_000_000


def test_remat_gives_same_loss_and_grads():
  cfg = _tiny(num_kv_heads=2)
  graphdef, params = tr.split(tr.create(cfg))
  graphdef_r, _ = tr.split(tr.create(cfg.replace(remat=True)))
  tok = jax.random.randint(jax.random.key(6), (2, 9), 0, cfg.vocab_size)
  valid = jnp.ones_like(tok, bool)
  pos = tr.positions_from_mask(valid)

  def loss(g, p):
    return jnp.mean(tr.forward(g, p, tok, pos, valid)[0] ** 2)

  loss_and_grad = jax.jit(jax.value_and_grad(loss, argnums=1),
                          static_argnums=0)
  l1, g1 = loss_and_grad(graphdef, params)
  l2, g2 = loss_and_grad(graphdef_r, params)
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), g1, g2)
