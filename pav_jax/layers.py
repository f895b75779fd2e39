"""Gemma-2 building blocks in Flax NNX: RMSNorm, RoPE, attention, MLP.

Dimension glossary (suffixes of array names and einsum letters):
  B batch, T tokens of this call, S cache slots, D model width, N query
  heads, K kv heads, G query heads per kv head, H head dim, F MLP width,
  V vocab.

Parameters carry logical axis names in an `axes` metadata field; sharding.py
maps them onto mesh axes. Modules never import sharding or training code.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from pav_jax import config as config_lib

# Large finite negative: fully masked rows stay finite.
_NEG_INF = -2.3819763e38


def param(rngs: nnx.Rngs, shape, axes, scale: float | None = None) -> nnx.Param:
  """A float32 parameter with logical axis names; normal(0, scale) init."""
  if scale is None:
    value = jnp.zeros(shape, jnp.float32)
  else:
    value = scale * jax.random.normal(rngs.params(), shape, jnp.float32)
  return nnx.Param(value, axes=tuple(axes))


def soft_cap(x: jax.Array, cap: float | None) -> jax.Array:
  return x if cap is None else jnp.tanh(x / cap) * cap


class RMSNorm(nnx.Module):
  """Gemma RMSNorm: x / rms(x) * (1 + w), computed in float32."""

  def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs):
    self.scale = param(rngs, (dim,), ("norm",))
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    scale = (1.0 + self.scale[...]).reshape((1,) * (x.ndim - 1) + (-1,))
    y = x32 * jax.lax.rsqrt(var + self.eps) * scale
    return y.astype(x.dtype)


def apply_rope(x_BTNH: jax.Array, pos_BT: jax.Array, base: float) -> jax.Array:
  """Rotary embedding, half-split convention (as Gemma / HF Gemma2)."""
  h = x_BTNH.shape[-1]
  # As HF.
  freq_H2 = 1.0 / (base ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
  angle_BTH2 = pos_BT.astype(jnp.float32)[..., None] * freq_H2[None, None]
  sin = jnp.sin(angle_BTH2)[:, :, None, :]
  cos = jnp.cos(angle_BTH2)[:, :, None, :]
  x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BTNH.dtype)


def attention_mask(
    q_pos_BT: jax.Array, k_pos_BS: jax.Array, window: int | None
) -> jax.Array:
  """Causal (optionally sliding-window) mask from absolute positions.

  Key slots with position < 0 are empty (padding, or not yet written).
  Returns a boolean [B, T, S] mask, True where attention is allowed.
  """
  q = q_pos_BT[:, :, None]
  k = k_pos_BS[:, None, :]
  mask_BTS = (k >= 0) & (k <= q)
  if window is not None:
    mask_BTS &= (q - k) < window
  return mask_BTS


class Attention(nnx.Module):
  """Grouped-query attention with RoPE, soft-capping and optional window."""

  def __init__(self, cfg: config_lib.ModelConfig, layer: int, *,
               rngs: nnx.Rngs):
    d, n, k, h = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    self.q_DNH = param(rngs, (d, n, h), ("embed", "heads", "head_dim"),
                       d**-0.5)
    self.k_DKH = param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"),
                       d**-0.5)
    self.v_DKH = param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"),
                       d**-0.5)
    self.o_NHD = param(rngs, (n, h, d), ("heads", "head_dim", "embed"),
                       (n * h) ** -0.5)
    self.num_kv_heads = k
    self.window = cfg.sliding_window if cfg.is_local(layer) else None
    self.query_scale = cfg.query_scale
    self.soft_cap = cfg.attn_logits_soft_cap
    self.rope_base = cfg.rope_base

  def __call__(
      self,
      x_BTD: jax.Array,
      pos_BT: jax.Array,
      kpos_BS: jax.Array,
      kv: dict | None,
      index: jax.Array | None,
  ) -> tuple[jax.Array, dict | None]:
    """Attends x to itself (kv None) or to the cache after writing x into it.

    Args:
      x_BTD: normed inputs.
      pos_BT: absolute positions of the T tokens.
      kpos_BS: positions of the key slots, -1 for empty ones. Without a
        cache S == T and these are the tokens' own positions (or -1 for
        padding); with a cache they already include this call's tokens.
      kv: {'k': [B,S,K,H], 'v': [B,S,K,H]} or None.
      index: slot where this call's T tokens are written (scalar int).
    """
    dt = x_BTD.dtype
    q_BTNH = jnp.einsum("BTD,DNH->BTNH", x_BTD, self.q_DNH[...].astype(dt))
    k_BTKH = jnp.einsum("BTD,DKH->BTKH", x_BTD, self.k_DKH[...].astype(dt))
    v_BTKH = jnp.einsum("BTD,DKH->BTKH", x_BTD, self.v_DKH[...].astype(dt))
    q_BTNH = apply_rope(q_BTNH, pos_BT, self.rope_base) * jnp.asarray(
        self.query_scale, dt
    )
    k_BTKH = apply_rope(k_BTKH, pos_BT, self.rope_base)
    if kv is None:
      k_BSKH, v_BSKH, new_kv = k_BTKH, v_BTKH, None
    else:
      zero = jnp.zeros((), jnp.int32)
      start = (zero, index, zero, zero)
      k_BSKH = jax.lax.dynamic_update_slice(
          kv["k"], k_BTKH.astype(kv["k"].dtype), start)
      v_BSKH = jax.lax.dynamic_update_slice(
          kv["v"], v_BTKH.astype(kv["v"].dtype), start)
      new_kv = {"k": k_BSKH, "v": v_BSKH}
    b, t, n, h = q_BTNH.shape
    g = n // self.num_kv_heads
    q_BTKGH = q_BTNH.reshape(b, t, self.num_kv_heads, g, h)
    logits_BKGTS = jnp.einsum(
        "BTKGH,BSKH->BKGTS", q_BTKGH, k_BSKH.astype(dt)
    ).astype(jnp.float32)
    logits_BKGTS = soft_cap(logits_BKGTS, self.soft_cap)
    mask_BTS = attention_mask(pos_BT, kpos_BS, self.window)
    logits_BKGTS = jnp.where(mask_BTS[:, None, None], logits_BKGTS, _NEG_INF)
    probs_BKGTS = jax.nn.softmax(logits_BKGTS, axis=-1).astype(dt)
    out_BTKGH = jnp.einsum("BKGTS,BSKH->BTKGH", probs_BKGTS, v_BSKH.astype(dt))
    out_BTNH = out_BTKGH.reshape(b, t, n, h)
    out_BTD = jnp.einsum("BTNH,NHD->BTD", out_BTNH, self.o_NHD[...].astype(dt))
    return out_BTD, new_kv


class MLP(nnx.Module):
  """Gated GELU (tanh approximation) MLP."""

  def __init__(self, cfg: config_lib.ModelConfig, *, rngs: nnx.Rngs):
    d, f = cfg.embed_dim, cfg.hidden_dim
    self.gate_DF = param(rngs, (d, f), ("embed", "mlp"), d**-0.5)
    self.up_DF = param(rngs, (d, f), ("embed", "mlp"), d**-0.5)
    self.down_FD = param(rngs, (f, d), ("mlp", "embed"), f**-0.5)

  def __call__(self, x_BTD: jax.Array) -> jax.Array:
    dt = x_BTD.dtype
    gate_BTF = jax.nn.gelu(x_BTD @ self.gate_DF[...].astype(dt),
                           approximate=True)
    up_BTF = x_BTD @ self.up_DF[...].astype(dt)
    return (gate_BTF * up_BTF) @ self.down_FD[...].astype(dt)


class Block(nnx.Module):
  """Gemma-2 decoder block: pre- and post-norms around attention and MLP."""

  def __init__(self, cfg: config_lib.ModelConfig, layer: int, *,
               rngs: nnx.Rngs):
    d, eps = cfg.embed_dim, cfg.norm_eps
    self.pre_attn_norm = RMSNorm(d, eps, rngs=rngs)
    self.attn = Attention(cfg, layer, rngs=rngs)
    self.post_attn_norm = RMSNorm(d, eps, rngs=rngs)
    self.pre_ffw_norm = RMSNorm(d, eps, rngs=rngs)
    self.mlp = MLP(cfg, rngs=rngs)
    self.post_ffw_norm = RMSNorm(d, eps, rngs=rngs)

  def __call__(self, x_BTD, pos_BT, kpos_BS, kv, index):
    h_BTD, kv = self.attn(self.pre_attn_norm(x_BTD), pos_BT, kpos_BS, kv, index)
    x_BTD = x_BTD + self.post_attn_norm(h_BTD)
    h_BTD = self.mlp(self.pre_ffw_norm(x_BTD))
    x_BTD = x_BTD + self.post_ffw_norm(h_BTD)
    return x_BTD, kv
