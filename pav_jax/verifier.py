"""Process verifiers: the LM backbone plus a scalar head read at step ends.

A trajectory is BOS + prompt + steps + EOS, where the prompt ends with the
step delimiter and every step ends with it (the last one with EOS). So the
value of every prefix s_1 (question only), s_2, ..., s_{H+1} is read at a
delimiter (or EOS) token, all in **one** teacher-forced forward pass: the
causal mask makes the logit at a boundary depend on its prefix only.

`sigmoid(logit)` is the predicted probability of final success: Q^pi for a
PRM-Q / PAV, the outcome for an ORM (read at the last boundary).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from pav_jax import config as config_lib
from pav_jax import layers
from pav_jax import transformer


class Verifier(nnx.Module):
  """Backbone + scalar head: one logit per position."""

  def __init__(self, cfg: config_lib.ModelConfig, *, rngs: nnx.Rngs):
    self.backbone = transformer.Transformer(cfg, rngs=rngs)
    self.head_D = layers.param(rngs, (cfg.embed_dim,), ("embed",))
    self.head_b = layers.param(rngs, (), ())

  def __call__(self, tokens_BT, pos_BT, valid_BT, cache=None):
    h_BTD, cache = self.backbone.hidden(tokens_BT, pos_BT, valid_BT, cache)
    logit_BT = jnp.einsum("BTD,D->BT", h_BTD.astype(jnp.float32), self.head_D[...])
    return logit_BT + self.head_b[...], cache


def create(cfg: config_lib.ModelConfig, seed: int = 0) -> Verifier:
  return Verifier(cfg, rngs=nnx.Rngs(params=seed))


def params_from_policy(policy_params: dict, cfg: config_lib.ModelConfig) -> dict:
  """Verifier params whose backbone is a copy of the policy's (head zero)."""
  return {
      "backbone": jax.tree.map(jnp.array, policy_params),
      "head_D": jnp.zeros((cfg.embed_dim,), jnp.float32),
      "head_b": jnp.zeros((), jnp.float32),
  }


def score(graphdef, params, tokens_BT, pos_BT, valid_BT, cache=None):
  """Pure: (logit_BT float32, cache). Safe under jax.jit."""
  return nnx.merge(graphdef, params)(tokens_BT, pos_BT, valid_BT, cache)


def boundary_mask(tokens_BT: jax.Array, valid_BT: jax.Array, prompt_len_B: jax.Array,
                  step_id: int, eos_id: int) -> jax.Array:
  """True at the token that closes each prefix s_1 .. s_{H+1}.

  s_1 closes at the last prompt token (the prompt ends with the delimiter);
  later prefixes close at each step delimiter or EOS of the response.
  """
  t = tokens_BT.shape[1]
  col_BT = jnp.arange(t)[None, :]
  in_resp_BT = (col_BT >= prompt_len_B[:, None]) & valid_BT
  is_end_BT = (tokens_BT == step_id) | (tokens_BT == eos_id)
  return (col_BT == (prompt_len_B - 1)[:, None]) | (in_resp_BT & is_end_BT)


def gather_boundaries(values_BT: jax.Array, boundary_BT: jax.Array,
                      num_prefixes: int) -> tuple[jax.Array, jax.Array]:
  """Left-aligns the values at boundaries: (v_BP, mask_BP), P = num_prefixes.

  Boundaries past num_prefixes are dropped (callers size P to fit).
  """
  b = values_BT.shape[0]
  idx_BT = jnp.cumsum(boundary_BT.astype(jnp.int32), axis=1) - 1
  idx_BT = jnp.where(boundary_BT & (idx_BT < num_prefixes), idx_BT, num_prefixes)
  rows_BT = jnp.broadcast_to(jnp.arange(b)[:, None], idx_BT.shape)
  v_BP = jnp.zeros((b, num_prefixes + 1), values_BT.dtype).at[rows_BT, idx_BT].set(values_BT)
  m_BP = jnp.zeros((b, num_prefixes + 1), bool).at[rows_BT, idx_BT].set(boundary_BT)
  return v_BP[:, :num_prefixes], m_BP[:, :num_prefixes]


def prefix_values(graphdef, params, tokens_BT, valid_BT, prompt_len_B, *,
                  step_id: int, eos_id: int, num_prefixes: int):
  """Predicted values of every prefix in one pass: (v_BP, mask_BP).

  v_BP[:, 0] is V(s_1) (question only); v_BP[:, h] = Q(s_h, a_h) = V(s_{h+1}).
  """
  pos_BT = transformer.positions_from_mask(valid_BT)
  logit_BT, _ = score(graphdef, params, tokens_BT, pos_BT, valid_BT)
  bnd_BT = boundary_mask(tokens_BT, valid_BT, prompt_len_B, step_id, eos_id)
  return gather_boundaries(jax.nn.sigmoid(logit_BT), bnd_BT, num_prefixes)
