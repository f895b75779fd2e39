"""The Gemma-2 decoder backbone and the pure forward function.

The forward reads and writes the KV cache of kv_cache.py (layout and
sharding there); `init_cache` / `fork_cache` are kept here as aliases of
`kv_cache.create` / `kv_cache.fork`.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from pav_jax import config as config_lib
from pav_jax import kv_cache
from pav_jax import layers

Cache = dict


class Transformer(nnx.Module):
  """Decoder-only LM with tied, sqrt(D)-scaled embeddings."""

  def __init__(self, cfg: config_lib.ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed_VD = layers.param(
        rngs, (cfg.vocab_size, cfg.embed_dim), ("vocab", "embed"),
        cfg.embed_dim**-0.5)
    for i in range(cfg.num_layers):
      setattr(self, f"layer_{i}", layers.Block(cfg, i, rngs=rngs))
    self.final_norm = layers.RMSNorm(cfg.embed_dim, cfg.norm_eps, rngs=rngs)

  @property
  def blocks(self) -> list[layers.Block]:
    return [getattr(self, f"layer_{i}") for i in range(self.cfg.num_layers)]

  def hidden(
      self,
      tokens_BT: jax.Array,
      pos_BT: jax.Array,
      valid_BT: jax.Array,
      cache: Cache | None = None,
  ) -> tuple[jax.Array, Cache | None]:
    """Final-normed hidden states [B, T, D] and the updated cache."""
    dt = jnp.dtype(self.cfg.dtype)
    x_BTD = self.embed_VD[...].astype(dt)[tokens_BT]
    x_BTD = x_BTD * jnp.asarray(self.cfg.embed_dim**0.5, dt)
    kpos_BT = jnp.where(valid_BT, pos_BT, -1).astype(jnp.int32)
    if cache is None:
      kpos_BS, index = kpos_BT, None
    else:
      index = cache["index"]
      kpos_BS = jax.lax.dynamic_update_slice(
          cache["pos"], kpos_BT, (jnp.zeros((), jnp.int32), index))
    ctx = layers.attn_context(self.cfg, pos_BT, kpos_BS)
    new_layers = {}
    for i, block in enumerate(self.blocks):
      kv = None if cache is None else cache["layers"][f"layer_{i}"]
      if self.cfg.remat and cache is None:
        x_BTD, kv = nnx.remat(_run_block)(block, x_BTD, ctx)
      else:
        x_BTD, kv = block(x_BTD, ctx, kv, index)
      new_layers[f"layer_{i}"] = kv
    x_BTD = self.final_norm(x_BTD)
    if cache is None:
      return x_BTD, None
    new_cache = {
        "pos": kpos_BS,
        "index": index + tokens_BT.shape[1],
        "layers": new_layers,
    }
    return x_BTD, new_cache

  def logits(self, x_BTD: jax.Array) -> jax.Array:
    """Tied output projection, soft-capped, in float32."""
    logits_BTV = layers.dense(
        x_BTD, self.embed_VD[...].astype(x_BTD.dtype).T).astype(jnp.float32)
    return layers.soft_cap(logits_BTV, self.cfg.final_logit_soft_cap)

  def __call__(self, tokens_BT, pos_BT, valid_BT, cache=None):
    x_BTD, cache = self.hidden(tokens_BT, pos_BT, valid_BT, cache)
    return self.logits(x_BTD), cache


def _run_block(block, x_BTD, ctx):
  return block(x_BTD, ctx, None, None)


# Backward-compatible names; the cache API lives in kv_cache.py.
init_cache = kv_cache.create
fork_cache = kv_cache.fork


def positions_from_mask(valid_BT: jax.Array) -> jax.Array:
  """Positions 0..L-1 for the valid (left-aligned or not) tokens of each row."""
  return jnp.maximum(jnp.cumsum(valid_BT.astype(jnp.int32), axis=1) - 1, 0)


def split(model: nnx.Module):
  """(graphdef, params) with params a plain nested dict of arrays."""
  graphdef, state = nnx.split(model, nnx.Param)
  return graphdef, nnx.to_pure_dict(state)


def forward(graphdef, params, tokens_BT, pos_BT, valid_BT, cache=None):
  """Pure forward: (logits_BTV float32, cache). Safe to call under jax.jit."""
  return nnx.merge(graphdef, params)(tokens_BT, pos_BT, valid_BT, cache)


def create(cfg: config_lib.ModelConfig, seed: int = 0) -> Transformer:
  return Transformer(cfg, rngs=nnx.Rngs(params=seed))


def abstract_params(cfg: config_lib.ModelConfig):
  """Shapes/dtypes of the params without allocating them."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: create(cfg)), nnx.Param)
  return graphdef, nnx.to_pure_dict(state)
