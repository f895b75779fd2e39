"""Gemma-2 building blocks in Flax NNX: RMSNorm, RoPE, attention, MLP.

Dimension glossary (suffixes of array names and einsum letters):
  B batch, T tokens of this call, S cache slots, D model width, N query
  heads, K kv heads, G query heads per kv head, H head dim, F MLP width,
  V vocab.

Parameters carry logical axis names in an `axes` metadata field; sharding.py
maps them onto mesh axes. Modules never import sharding or training code;
the KV-cache layout comes from kv_cache.py.
"""

import math

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from pav_jax import config as config_lib
from pav_jax import kv_cache

# Large finite negative: fully masked rows stay finite.
_NEG_INF = -2.3819763e38


def param(rngs: nnx.Rngs, shape, axes, scale: float | None = None) -> nnx.Param:
  """A float32 parameter with logical axis names; normal(0, scale) init."""
  if scale is None:
    value = jnp.zeros(shape, jnp.float32)
  else:
    value = scale * jax.random.normal(rngs.params(), shape, jnp.float32)
  return nnx.Param(value, axes=tuple(axes))


def dense(x: jax.Array, w: jax.Array, in_dims: int = 1) -> jax.Array:
  """x [..., I] @ w [I, O] over the last `in_dims` axes of x and the first
  of w, as ONE 2-D matmul: [prod(...), I] x [I, O], reshaped back.

  Same products and sums as `jnp.einsum` over those axes. Why: a dot with
  several batch-like leading axes (B, T) makes XLA's CPU backend contract
  the weight gradient over two axes, for which it transposes the
  activation gradient, fused with the elementwise ops before it (GELU
  backward, norms): those strided fusions took ~20% of the SFT train step.
  Flattened, every dot of the forward and backward is a plain 2-D GEMM.
  """
  lead = x.shape[:x.ndim - in_dims]
  out = w.shape[in_dims:]
  x2 = x.reshape(math.prod(lead), -1)
  w2 = w.reshape(x2.shape[1], -1)
  return (x2 @ w2).reshape(lead + out)


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


def rope_tables(pos_BT: jax.Array, head_dim: int, base: float
                ) -> tuple[jax.Array, jax.Array]:
  """(sin, cos) of the rotary angles, each [B, T, 1, H/2], float32."""
  # As HF.
  freq_H2 = 1.0 / (base ** (
      jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angle_BTH2 = pos_BT.astype(jnp.float32)[..., None] * freq_H2[None, None]
  return jnp.sin(angle_BTH2)[:, :, None, :], jnp.cos(angle_BTH2)[:, :, None, :]


def rotate(x_BTNH: jax.Array, sin_BT1H2: jax.Array, cos_BT1H2: jax.Array
           ) -> jax.Array:
  """Applies rotary tables from `rope_tables` (half-split convention)."""
  x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos_BT1H2 - x2 * sin_BT1H2,
                         x2 * cos_BT1H2 + x1 * sin_BT1H2], axis=-1)
  return out.astype(x_BTNH.dtype)


def apply_rope(x_BTNH: jax.Array, pos_BT: jax.Array, base: float) -> jax.Array:
  """Rotary embedding, half-split convention (as Gemma / HF Gemma2)."""
  return rotate(x_BTNH, *rope_tables(pos_BT, x_BTNH.shape[-1], base))


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


@flax.struct.dataclass
class AttnContext:
  """What every layer of one forward shares, computed once per forward.

  sin/cos: rotary tables of this call's tokens ([B, T, 1, H/2]).
  global_BTS / local_BTS: the masks of global and sliding-window layers
    (local None when no layer has a window); S is the key slots (the
    cache's, with this call's tokens written; without a cache S = T).
  """

  sin_BT1H2: jax.Array
  cos_BT1H2: jax.Array
  global_BTS: jax.Array
  local_BTS: jax.Array | None

  def mask(self, window: int | None) -> jax.Array:
    return self.global_BTS if window is None else self.local_BTS


def attn_context(cfg: config_lib.ModelConfig, pos_BT: jax.Array,
                 kpos_BS: jax.Array) -> AttnContext:
  """Rotary tables and masks for one forward (see AttnContext)."""
  sin, cos = rope_tables(pos_BT, cfg.head_dim, cfg.rope_base)
  has_local = any(cfg.is_local(i) for i in range(cfg.num_layers))
  return AttnContext(
      sin_BT1H2=sin, cos_BT1H2=cos,
      global_BTS=attention_mask(pos_BT, kpos_BS, None),
      local_BTS=(attention_mask(pos_BT, kpos_BS, cfg.sliding_window)
                 if has_local else None))


def _attend(q_BTKGH: jax.Array, k: jax.Array, v: jax.Array,
            mask_BTS: jax.Array, cap: float | None, kv_layout: str
            ) -> jax.Array:
  """Soft-capped, masked attention of T queries per row; [B, T, K, G, H].

  `kv_layout` names the axes of k and v: "BSKH" (this call's own keys) or
  "BKSH" (the cache).

  Computed heads-major with the G query heads of a KV head stacked along
  the query axis (Q = G * T, index g * T + t): the scores are 4-D
  [B, K, Q, S], so both dots are plain batched GEMMs and the softmax
  reduces the minor axis. The 5-D [B, K, G, T, S] form (a size-1 G axis
  without GQA) made XLA's CPU backend transpose the scores in the backward
  pass and reduce them through a strided layout: attention then took about
  twice as long in the train step.
  """
  dt = q_BTKGH.dtype
  b, t, kh, g, h = q_BTKGH.shape
  if kv_layout == "BSKH":
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  q_BKQH = q_BTKGH.transpose(0, 2, 3, 1, 4).reshape(b, kh, g * t, h)
  logits_BKQS = jnp.einsum("BKQH,BKSH->BKQS", q_BKQH,
                           k.astype(dt)).astype(jnp.float32)
  logits_BKQS = soft_cap(logits_BKQS, cap)
  mask_B1QS = jnp.tile(mask_BTS, (1, g, 1))[:, None]
  logits_BKQS = jnp.where(mask_B1QS, logits_BKQS, _NEG_INF)
  probs_BKQS = jax.nn.softmax(logits_BKQS, axis=-1).astype(dt)
  out_BKQH = jnp.einsum("BKQS,BKSH->BKQH", probs_BKQS, v.astype(dt))
  return out_BKQH.reshape(b, kh, g, t, h).transpose(0, 3, 1, 2, 4)


def _attend_one(q_BKGH: jax.Array, k: jax.Array, v: jax.Array,
                mask_BS: jax.Array, cap: float | None) -> jax.Array:
  """Attention of one query per row over the cache (decode); [B, K, G, H].

  k, v: the cache's buffers as `kv_cache` lays them out, [B, K, S, H], or
  [B, S, H] for a multi-query cache (K = 1). The dots read those buffers
  exactly as the decode loop carries them: a reshape in between (a size-1
  head axis is one) lets XLA fuse the cache write into the dot's operand
  as well as into the loop's state, and every layer's K and V were then
  copied twice per step (~20% of decode time on the CPU).
  """
  dt = q_BKGH.dtype
  if k.ndim == 3:
    logits_BGS = jnp.einsum("BGH,BSH->BGS", q_BKGH[:, 0], k.astype(dt))
    logits_BKGS = logits_BGS[:, None].astype(jnp.float32)
  else:
    logits_BKGS = jnp.einsum("BKGH,BKSH->BKGS", q_BKGH,
                             k.astype(dt)).astype(jnp.float32)
  logits_BKGS = soft_cap(logits_BKGS, cap)
  logits_BKGS = jnp.where(mask_BS[:, None, None], logits_BKGS, _NEG_INF)
  probs_BKGS = jax.nn.softmax(logits_BKGS, axis=-1).astype(dt)
  if k.ndim == 3:
    return jnp.einsum("BGS,BSH->BGH", probs_BKGS[:, 0], v.astype(dt))[:, None]
  return jnp.einsum("BKGS,BKSH->BKGH", probs_BKGS, v.astype(dt))


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

  def __call__(
      self,
      x_BTD: jax.Array,
      ctx: AttnContext,
      kv: dict | None,
      index: jax.Array | None,
  ) -> tuple[jax.Array, dict | None]:
    """Attends x to itself (kv None) or to the cache after writing x into it.

    Args:
      x_BTD: normed inputs.
      ctx: rotary tables and masks of this forward (`attn_context`); the
        masks' key slots already include this call's tokens.
      kv: {'k', 'v'} buffers of one layer (kv_cache.py layout) or None.
      index: slot where this call's T tokens are written (scalar int).
    """
    dt = x_BTD.dtype
    q_BTNH = dense(x_BTD, self.q_DNH[...].astype(dt))
    k_BTKH = dense(x_BTD, self.k_DKH[...].astype(dt))
    v_BTKH = dense(x_BTD, self.v_DKH[...].astype(dt))
    q_BTNH = rotate(q_BTNH, ctx.sin_BT1H2, ctx.cos_BT1H2) * jnp.asarray(
        self.query_scale, dt)
    k_BTKH = rotate(k_BTKH, ctx.sin_BT1H2, ctx.cos_BT1H2)
    b, t, n, h = q_BTNH.shape
    q_BTKGH = q_BTNH.reshape(b, t, self.num_kv_heads, n // self.num_kv_heads, h)
    mask_BTS = ctx.mask(self.window)
    if kv is None:
      out_BTKGH = _attend(q_BTKGH, k_BTKH, v_BTKH, mask_BTS, self.soft_cap,
                          "BSKH")
      new_kv = None
    else:
      new_kv = {"k": kv_cache.write(kv["k"], k_BTKH, index),
                "v": kv_cache.write(kv["v"], v_BTKH, index)}
      if t == 1:
        out_BTKGH = _attend_one(q_BTKGH[:, 0], new_kv["k"], new_kv["v"],
                                mask_BTS[:, 0], self.soft_cap)[:, None]
      else:
        out_BTKGH = _attend(q_BTKGH, kv_cache.heads_major(new_kv["k"]),
                            kv_cache.heads_major(new_kv["v"]), mask_BTS,
                            self.soft_cap, "BKSH")
    out_BTNH = out_BTKGH.reshape(b, t, n, h)
    out_BTD = dense(out_BTNH, self.o_NHD[...].astype(dt), in_dims=2)
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
    gate_BTF = jax.nn.gelu(dense(x_BTD, self.gate_DF[...].astype(dt)),
                           approximate=True)
    up_BTF = dense(x_BTD, self.up_DF[...].astype(dt))
    return dense(gate_BTF * up_BTF, self.down_FD[...].astype(dt))


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

  def __call__(self, x_BTD, ctx: AttnContext, kv, index):
    h_BTD, kv = self.attn(self.pre_attn_norm(x_BTD), ctx, kv, index)
    x_BTD = x_BTD + self.post_attn_norm(h_BTD)
    h_BTD = self.mlp(self.pre_ffw_norm(x_BTD))
    x_BTD = x_BTD + self.post_ffw_norm(h_BTD)
    return x_BTD, kv
