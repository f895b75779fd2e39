"""MADE-style autoregressive MLP policy (Germain et al., 2015) in Flax NNX.

The NNX module only defines parameters; `__call__` is a masked MLP over the
one-hot response, and every other function here is a pure function of
(graphdef, params) so it can be jitted and vmapped over seeds and runs.

Degrees: input unit (position p, symbol v) has degree p + 1 in 1..L, hidden
units have degrees in 1..L-1, and the output for position p (degree p + 1)
only sees hidden units of degree <= p, hence only tokens < p. Logits at
position 0 are the output bias alone.

Shapes: B batch, L positions, V vocabulary, D = L * V one-hot inputs, F
hidden width, N rollouts per step.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pav_jax.didactic import env as env_lib


@functools.lru_cache(maxsize=None)
def made_masks(
    length: int, vocab: int, hidden: tuple[int, ...]
) -> tuple[np.ndarray, ...]:
  """Connectivity masks (in x out) of every layer, as host constants."""
  deg_in = np.repeat(np.arange(1, length + 1), vocab)
  degs = [deg_in]
  for f in hidden:
    degs.append(1 + np.arange(f) % max(length - 1, 1))
  masks = [
      (d_out[None, :] >= d_in[:, None]).astype(np.float32)
      for d_in, d_out in zip(degs[:-1], degs[1:])
  ]
  deg_out = np.repeat(np.arange(1, length + 1), vocab)
  masks.append((deg_out[None, :] > degs[-1][:, None]).astype(np.float32))
  return tuple(masks)


class MaskedDense(nnx.Module):
  """Dense layer whose kernel is multiplied by a fixed mask at call time."""

  def __init__(self, d_in: int, d_out: int, *, rngs: nnx.Rngs):
    init = nnx.initializers.lecun_normal()
    self.kernel = nnx.Param(init(rngs.params(), (d_in, d_out)))
    self.bias = nnx.Param(jnp.zeros((d_out,)))

  def __call__(self, x_BD: jax.Array, mask_DF: np.ndarray) -> jax.Array:
    return x_BD @ (self.kernel[...] * mask_DF) + self.bias[...][None, :]


class Made(nnx.Module):
  """Autoregressive MLP: logits_BLV = Made(...)(tokens_BL)."""

  def __init__(
      self,
      length: int,
      vocab: int,
      hidden: tuple[int, ...] = (128, 128, 128),
      *,
      rngs: nnx.Rngs,
  ):
    self.length, self.vocab, self.hidden = length, vocab, tuple(hidden)
    dims = [length * vocab, *hidden, length * vocab]
    self.layers = nnx.List(
        [MaskedDense(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])]
    )

  def __call__(self, tokens_BL: jax.Array) -> jax.Array:
    masks = made_masks(self.length, self.vocab, self.hidden)
    x_BD = jax.nn.one_hot(tokens_BL, self.vocab).reshape(
        tokens_BL.shape[0], -1)
    for layer, mask in zip(self.layers[:-1], masks[:-1]):
      x_BD = jax.nn.relu(layer(x_BD, mask))
    x_BD = self.layers[-1](x_BD, masks[-1])
    return x_BD.reshape(tokens_BL.shape[0], self.length, self.vocab)


def init_params(env: env_lib.Env, hidden: tuple[int, ...], rng: jax.Array):
  """(graphdef, params) of a fresh policy; params is a pure pytree."""
  model = Made(env.length, env.vocab, hidden, rngs=nnx.Rngs(params=rng))
  return nnx.split(model, nnx.Param)


def logits_fn(graphdef, params, tokens_BL: jax.Array) -> jax.Array:
  """Teacher-forced fp32 logits of every position."""
  return nnx.merge(graphdef, params)(tokens_BL).astype(jnp.float32)


def log_probs(graphdef, params, tokens_BL: jax.Array):
  """(log pi(a_h | s_h)_BL, pi(. | s_h)_BLV) of the given responses."""
  logp_BLV = jax.nn.log_softmax(logits_fn(graphdef, params, tokens_BL))
  logp_BL = jnp.take_along_axis(logp_BLV, tokens_BL[..., None], -1)[..., 0]
  return logp_BL, jnp.exp(logp_BLV)


def complete(
    graphdef,
    params,
    env: env_lib.Env,
    rng: jax.Array,
    tokens_BL: jax.Array,
    keep_B: jax.Array,
    temperature: float = 1.0,
) -> jax.Array:
  """Sample positions >= keep_B[b] of each row; earlier tokens are kept.

  One full forward per position (the MADE has no cache); tokens after the
  first EOS are set to EOS.
  """
  pos_L = jnp.arange(env.length)

  def body(h, toks_BL):
    logits_BV = logits_fn(graphdef, params, toks_BL)[:, h] / temperature
    new_B = jax.random.categorical(jax.random.fold_in(rng, h), logits_BV)
    done_B = jnp.any((toks_BL == env.eos) & (pos_L[None, :] < h), axis=1)
    new_B = jnp.where(done_B, env.eos, new_B)
    new_B = jnp.where(h < keep_B, toks_BL[:, h], new_B)
    return toks_BL.at[:, h].set(new_B)

  return jax.lax.fori_loop(0, env.length, body, tokens_BL)


def sample(
    graphdef,
    params,
    env: env_lib.Env,
    rng: jax.Array,
    n: int,
    temperature: float = 1.0,
) -> jax.Array:
  """n fresh responses from pi, N x L int32."""
  zeros_NL = jnp.zeros((n, env.length), jnp.int32)
  keep_N = jnp.zeros((n,), jnp.int32)
  return complete(graphdef, params, env, rng, zeros_NL, keep_N, temperature)


def mc_q(
    graphdef,
    params,
    env: env_lib.Env,
    rng: jax.Array,
    tokens_BL: jax.Array,
    n: int,
) -> jax.Array:
  """MC estimate of Q^pi(s_h, a_h) from n rollouts after every step, B x L.

  Rollouts for step h keep tokens 0..h and resample the rest under pi.
  """
  b, el = tokens_BL.shape
  toks_BLNL = jnp.broadcast_to(tokens_BL[:, None, None, :], (b, el, n, el))
  keep_BLN = jnp.broadcast_to(
      (jnp.arange(el, dtype=jnp.int32) + 1)[None, :, None], (b, el, n))
  flat_TL = toks_BLNL.reshape(-1, el)
  done_TL = complete(graphdef, params, env, rng, flat_TL, keep_BLN.reshape(-1))
  r_BLN = env_lib.reward(env, done_TL).reshape(b, el, n)
  return r_BLN.mean(-1)
