"""Process verifiers: the LM backbone plus a scalar head, read at step ends.

A trajectory is BOS + prompt + steps + EOS, where the prompt ends with the
step delimiter and every step ends with it (the last one with EOS). So the
value of every prefix s_1 (question only), s_2, ..., s_{H+1} is read at a
delimiter (or EOS) token, all in **one** teacher-forced forward pass: the
causal mask makes the logit at a boundary depend on its prefix only.

`sigmoid(logit)` is the predicted probability of final success: Q^pi for a
PRM-Q / PAV, the outcome for an ORM (read at the last boundary).

Two designs (`c.verifier.design`), fixed when the module is created (the
graphdef carries it):

  "lp_features" (default)  value logit at position t =
        q(question) + w_1 * sum_{s <= t} lp_s + w_2 * min_{s <= t} lp_s,
      q the head read at the question's last token (prompt_len - 1) and
      broadcast; lp_s the backbone LM's log-probability of response token s
      (0 outside the response), under stop_gradient; w = `lp_w` (2,),
      learned. The correctness of a step sits in how likely a (strong) LM
      finds its result tokens; the hidden state at the step end does not
      encode it linearly (issue 11, /tmp/vx exploration).
  "head"  the head read at every position (logit_t = h_t . head_D + b).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from pav_jax import config as config_lib
from pav_jax import layers
from pav_jax import losses
from pav_jax import steps
from pav_jax import transformer

DESIGNS = ("lp_features", "head")
DEFAULT_DESIGN = "lp_features"
LP_INIT = 0.5  # initial weights of the [sum, min] log-prob features


class Verifier(nnx.Module):
  """Backbone + scalar head (+ log-prob feature weights `lp_w`)."""

  def __init__(self, cfg: config_lib.ModelConfig, *, rngs: nnx.Rngs,
               design: str = DEFAULT_DESIGN):
    if design not in DESIGNS:
      raise ValueError(f"unknown verifier design {design!r}; one of {DESIGNS}")
    self.design = design
    self.backbone = transformer.Transformer(cfg, rngs=rngs)
    self.head_D = layers.param(rngs, (cfg.embed_dim,), ("embed",))
    self.head_b = layers.param(rngs, (), ())
    if design == "lp_features":
      self.lp_w = nnx.Param(jnp.full((2,), LP_INIT, jnp.float32), axes=(None,))

  def outputs(self, tokens_BT, pos_BT, valid_BT, cache=None):
    """One backbone pass: (head logit_BT, LM logits_BTV or None, cache)."""
    h_BTD, cache = self.backbone.hidden(tokens_BT, pos_BT, valid_BT, cache)
    logit_BT = jnp.einsum("BTD,D->BT", h_BTD.astype(jnp.float32),
                          self.head_D[...]) + self.head_b[...]
    lm_BTV = (self.backbone.logits(h_BTD) if self.design == "lp_features"
              else None)
    return logit_BT, lm_BTV, cache

  def __call__(self, tokens_BT, pos_BT, valid_BT, cache=None):
    logit_BT, _, cache = self.outputs(tokens_BT, pos_BT, valid_BT, cache)
    return logit_BT, cache


def create(cfg: config_lib.ModelConfig, seed: int = 0,
           design: str = DEFAULT_DESIGN) -> Verifier:
  return Verifier(cfg, rngs=nnx.Rngs(params=seed), design=design)


def design_of(params: dict) -> str:
  """The design of a verifier's params (an `lp_w` entry or not)."""
  return "lp_features" if "lp_w" in params else "head"


def params_from_policy(policy_params: dict, cfg: config_lib.ModelConfig,
                       design: str = DEFAULT_DESIGN,
                       lp_init: float = LP_INIT) -> dict:
  """Verifier params whose backbone is a copy of `policy_params` (the policy
  or a stronger LM); head zero, `lp_w` = lp_init."""
  out = {
      "backbone": jax.tree.map(jnp.array, policy_params),
      "head_D": jnp.zeros((cfg.embed_dim,), jnp.float32),
      "head_b": jnp.zeros((), jnp.float32),
  }
  if design == "lp_features":
    out["lp_w"] = jnp.full((2,), lp_init, jnp.float32)
  return out


def score(graphdef, params, tokens_BT, pos_BT, valid_BT, cache=None):
  """Pure: (head logit_BT float32, cache) at every position. Safe under
  jax.jit. (The value logit of the "lp_features" design is
  `value_logits`.)"""
  return nnx.merge(graphdef, params)(tokens_BT, pos_BT, valid_BT, cache)


def response_mask(valid_BT: jax.Array, prompt_len_B: jax.Array) -> jax.Array:
  col_BT = jnp.arange(valid_BT.shape[1])[None, :]
  return (col_BT >= prompt_len_B[:, None]) & valid_BT


def response_logprobs(lm_BTV: jax.Array, tokens_BT: jax.Array,
                      resp_BT: jax.Array) -> jax.Array:
  """log p(token t | < t) at response positions t, 0 elsewhere [B, T];
  position t's log-prob comes from the logits at t - 1."""
  lp_BT = losses.token_logprobs(lm_BTV[:, :-1], tokens_BT[:, 1:])
  lp_BT = jnp.concatenate([jnp.zeros_like(lp_BT[:, :1]), lp_BT], axis=1)
  return jnp.where(resp_BT, lp_BT, 0.0)


def lp_feature_logits(q_B: jax.Array, lp_BT: jax.Array,
                      lp_w: jax.Array) -> jax.Array:
  """q + w_1 * cumsum(lp) + w_2 * cummin(lp) at every position [B, T].

  lp_BT is 0 outside the response, so the running min starts at 0 (the
  value of the question alone is q).
  """
  lp_BT = jax.lax.stop_gradient(lp_BT.astype(jnp.float32))
  csum_BT = jnp.cumsum(lp_BT, axis=1)
  cmin_BT = jax.lax.cummin(lp_BT, axis=1)
  return q_B[:, None] + lp_w[0] * csum_BT + lp_w[1] * cmin_BT


def value_logits(graphdef, params, tokens_BT, valid_BT, prompt_len_B):
  """Value logit at every position, one pass [B, T] float32 (pure, jit-safe).

  "head": the head at each position; "lp_features": the head at
  prompt_len - 1 broadcast, plus lp_w . [cumsum, cummin] of the LM's
  log-probs of the response tokens so far.
  """
  model = nnx.merge(graphdef, params)
  pos_BT = transformer.positions_from_mask(valid_BT)
  logit_BT, lm_BTV, _ = model.outputs(tokens_BT, pos_BT, valid_BT)
  if model.design == "head":
    return logit_BT
  q_B = jnp.take_along_axis(logit_BT, (prompt_len_B - 1)[:, None], axis=1)[:, 0]
  lp_BT = response_logprobs(lm_BTV, tokens_BT,
                            response_mask(valid_BT, prompt_len_B))
  return lp_feature_logits(q_B, lp_BT, params["lp_w"])


def boundary_mask(tokens_BT: jax.Array, valid_BT: jax.Array,
                  prompt_len_B: jax.Array, step_id: int,
                  eos_id: int) -> jax.Array:
  """True at the token that closes each prefix s_1 .. s_{H+1}.

  s_1 closes at the last prompt token (the prompt ends with the delimiter);
  later prefixes close at each step delimiter or EOS of the response.
  """
  t = tokens_BT.shape[1]
  col_BT = jnp.arange(t)[None, :]
  in_resp_BT = (col_BT >= prompt_len_B[:, None]) & valid_BT
  is_end_BT = steps.is_step_end(tokens_BT, step_id) | (tokens_BT == eos_id)
  return (col_BT == (prompt_len_B - 1)[:, None]) | (in_resp_BT & is_end_BT)


def gather_boundaries(values_BT: jax.Array, boundary_BT: jax.Array,
                      num_prefixes: int) -> tuple[jax.Array, jax.Array]:
  """Left-aligns the values at boundaries: (v_BP, mask_BP), P = num_prefixes.

  Boundaries past num_prefixes are dropped (callers size P to fit).
  """
  b = values_BT.shape[0]
  idx_BT = jnp.cumsum(boundary_BT.astype(jnp.int32), axis=1) - 1
  idx_BT = jnp.where(boundary_BT & (idx_BT < num_prefixes), idx_BT,
                     num_prefixes)
  rows_BT = jnp.broadcast_to(jnp.arange(b)[:, None], idx_BT.shape)
  v_BP = jnp.zeros((b, num_prefixes + 1), values_BT.dtype).at[
      rows_BT, idx_BT].set(values_BT)
  m_BP = jnp.zeros((b, num_prefixes + 1), bool).at[rows_BT, idx_BT].set(
      boundary_BT)
  return v_BP[:, :num_prefixes], m_BP[:, :num_prefixes]


def boundary_logits(graphdef, params, tokens_BT, valid_BT, prompt_len_B, *,
                    step_id: int, eos_id: int, num_prefixes: int):
  """Value logits at every prefix boundary, one pass: (logit_BP, mask_BP)."""
  logit_BT = value_logits(graphdef, params, tokens_BT, valid_BT, prompt_len_B)
  bnd_BT = boundary_mask(tokens_BT, valid_BT, prompt_len_B, step_id, eos_id)
  return gather_boundaries(logit_BT, bnd_BT, num_prefixes)


def prefix_values(graphdef, params, tokens_BT, valid_BT, prompt_len_B, *,
                  step_id: int, eos_id: int, num_prefixes: int):
  """Predicted values of every prefix in one pass: (v_BP, mask_BP).

  v_BP[:, 0] is V(s_1) (question only); v_BP[:, h] = Q(s_h, a_h) = V(s_{h+1}).
  """
  logit_BP, m_BP = boundary_logits(
      graphdef, params, tokens_BT, valid_BT, prompt_len_B, step_id=step_id,
      eos_id=eos_id, num_prefixes=num_prefixes)
  return jnp.where(m_BP, jax.nn.sigmoid(logit_BP), 0.0), m_BP
