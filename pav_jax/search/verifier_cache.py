"""A verifier that reads each new step once, through a per-row KV cache.

The beam search forks and gathers the verifier's cache rows with the
policy's. The cache is a pytree whose leaves lead with the row axis, so
`take_rows` / `fork_rows` are `kv_cache.take_rows` / `kv_cache.fork_rows`:

  {"kv": the backbone's KV cache (`kv_cache.create`),
   # the "lp_features" design (verifier.py) also carries, per row:
   "started_B": the question has been read (later tokens are response),
   "q_B": the head logit at the question's last token,
   "lp_sum_B", "lp_min_B": running sum / min of the LM's log-probs of the
       response tokens read so far (0 before any),
   "last_logp_BV": log-softmax of the LM logits at the last token read:
       the log-prob of the next step's first token needs them}

so that the value after each step equals `verifier.prefix_values` of the
whole trace in one pass.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from pav_jax import kv_cache
from pav_jax import verifier as verifier_lib
from pav_jax.search import compute as compute_lib

take_rows = kv_cache.take_rows
fork_rows = kv_cache.fork_rows


def _squash(logit_B: jax.Array, output: str) -> jax.Array:
  """sigmoid (values: orm, prm_q, q_mu) or tanh (advantages: a_direct)."""
  return jnp.tanh(logit_B) if output == "tanh" else jax.nn.sigmoid(logit_B)


def _extend(graphdef, output, params, tokens_BW, length_B, pos0_B, state):
  """Feeds up to W new tokens per row; value (`_squash`) at each row's last."""
  w = tokens_BW.shape[1]
  col_BW = jnp.arange(w, dtype=jnp.int32)[None, :]
  valid_BW = col_BW < length_B[:, None]
  pos_BW = pos0_B[:, None] + col_BW
  model = nnx.merge(graphdef, params)
  logit_BW, lm_BWV, kv = model.outputs(tokens_BW, pos_BW, valid_BW,
                                       state["kv"])
  last_B1 = jnp.maximum(length_B - 1, 0)[:, None]
  head_B = jnp.take_along_axis(logit_BW, last_B1, axis=1)[:, 0]
  if model.design == "head":
    return _squash(head_B, output), {"kv": kv}
  started_B = state["started_B"]
  logp_BWV = jax.nn.log_softmax(lm_BWV.astype(jnp.float32), axis=-1)
  # Token j's log-prob: from the carried logits (j = 0) or position j - 1.
  first_B1 = jnp.take_along_axis(state["last_logp_BV"], tokens_BW[:, :1],
                                 axis=1)
  rest_BW = jnp.take_along_axis(logp_BWV[:, :-1], tokens_BW[:, 1:, None],
                                axis=2)[..., 0]
  lp_BW = jnp.concatenate([first_B1, rest_BW], axis=1)
  lp_BW = jnp.where(valid_BW & started_B[:, None], lp_BW, 0.0)
  lp_sum_B = state["lp_sum_B"] + jnp.sum(lp_BW, axis=1)
  lp_min_B = jnp.minimum(state["lp_min_B"], jnp.min(lp_BW, axis=1))
  q_B = jnp.where(started_B, state["q_B"], head_B)
  # As verifier.lp_feature_logits, at the last token read.
  w = params["lp_w"]
  logit_B = q_B + w[0] * lp_sum_B + w[1] * lp_min_B
  fed_B = length_B > 0
  last_BV = jnp.take_along_axis(logp_BWV, last_B1[:, :, None], axis=1)[:, 0]
  new = {
      "kv": kv,
      "started_B": started_B | fed_B,
      "q_B": q_B,
      "lp_sum_B": lp_sum_B,
      "lp_min_B": lp_min_B,
      "last_logp_BV": jnp.where(fed_B[:, None], last_BV,
                                state["last_logp_BV"]),
  }
  return _squash(logit_B, output), new


class CachedVerifier:
  """A verifier that reads each new step once, through a per-row KV cache.

  The beam search needs only `init_cache(batch, size)` and
  `extend(tokens_BW, length_B, pos0_B, cache) -> (value_B, cache)` with a
  cache pytree whose per-row leaves lead with the batch axis (tests plug in
  scripted scorers through the same interface). The first `extend` of a
  row reads its question (BOS + prompt); later ones read response steps.

  Where the value is read: at the last token of what was fed, i.e. at the
  step delimiter that closes the new step (or at EOS), as
  `verifier.prefix_values` does for a whole trace. The paper appends a
  scoring token instead; reading the delimiter scores every prefix in one
  causal pass without inserting tokens, since the delimiter already closes
  each prefix. The tokenizer's `<score>` id (`tok.score_id`) stays reserved
  and unused (docs/deviations.md, row 4).
  """

  def __init__(self, graphdef, params, output: str = "sigmoid"):
    """`output`: "sigmoid" for value verifiers, "tanh" for `a_direct`."""
    if output not in ("sigmoid", "tanh"):
      raise ValueError(f"output must be sigmoid or tanh, got {output!r}")
    self.graphdef, self.params, self.output = graphdef, params, output
    self.cfg = compute_lib.verifier_config(graphdef, params)
    self.design = verifier_lib.design_of(params)
    self.extend_fn = jax.jit(functools.partial(_extend, graphdef, output),
                             donate_argnums=(4,))

  def init_cache(self, batch: int, size: int) -> dict:
    state = {"kv": kv_cache.create(self.cfg, batch, size)}
    if self.design == "lp_features":
      zeros_B = jnp.zeros((batch,), jnp.float32)
      state.update(
          started_B=jnp.zeros((batch,), bool), q_B=zeros_B,
          lp_sum_B=jnp.copy(zeros_B), lp_min_B=jnp.copy(zeros_B),
          last_logp_BV=jnp.zeros((batch, self.cfg.vocab_size), jnp.float32))
    return kv_cache.constrain(state)

  def extend(self, tokens_BW, length_B, pos0_B, cache):
    """(value_B, cache); the cache is donated."""
    return self.extend_fn(self.params, jnp.asarray(tokens_BW, jnp.int32),
                          jnp.asarray(length_B, jnp.int32),
                          jnp.asarray(pos0_B, jnp.int32), cache)
