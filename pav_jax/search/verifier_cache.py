"""A verifier that reads each new step once, through a per-row KV cache.

The beam search forks and gathers the verifier's cache rows with the
policy's. `take_rows` / `fork_rows` are the row operations on a cache pytree
(they move to the one KV-cache API of `pav_jax/kv_cache.py` later).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pav_jax import transformer
from pav_jax import verifier as verifier_lib
from pav_jax.search import compute as compute_lib



def _extend(graphdef, params, tokens_BW, length_B, pos0_B, cache):
  """Feeds up to W new tokens per row; value (sigmoid) at each row's last."""
  w = tokens_BW.shape[1]
  col_BW = jnp.arange(w, dtype=jnp.int32)[None, :]
  valid_BW = col_BW < length_B[:, None]
  pos_BW = pos0_B[:, None] + col_BW
  logit_BW, cache = verifier_lib.score(graphdef, params, tokens_BW, pos_BW,
                                       valid_BW, cache)
  last_B1 = jnp.maximum(length_B - 1, 0)[:, None]
  logit_B = jnp.take_along_axis(logit_BW, last_B1, axis=1)[:, 0]
  return jax.nn.sigmoid(logit_B), cache


def take_rows(cache, rows_R: jax.Array):
  """Gathers rows of a per-row cache pytree (scalars such as the shared
  write index are kept)."""
  return jax.tree.map(
      lambda x: jnp.take(x, rows_R, axis=0) if x.ndim else jnp.copy(x), cache)


def fork_rows(cache, n: int):
  """Row b -> rows b*n .. b*n+n-1 (as `transformer.fork_cache`).

  Scalars get their own buffer: `extend` donates the forked cache.
  """
  return jax.tree.map(
      lambda x: jnp.repeat(x, n, axis=0) if x.ndim else jnp.copy(x), cache)


class CachedVerifier:
  """A verifier that reads each new step once, through a per-row KV cache.

  The beam search needs only `init_cache(batch, size)` and
  `extend(tokens_BW, length_B, pos0_B, cache) -> (value_B, cache)` with a
  cache pytree whose per-row leaves lead with the batch axis (tests plug in
  scripted scorers through the same interface).

  Where the value is read: at the last token of what was fed, i.e. at the
  step delimiter that closes the new step (or at EOS), as
  `verifier.prefix_values` does for a whole trace. The paper appends a
  scoring token instead; reading the delimiter scores every prefix in one
  causal pass without inserting tokens, since the delimiter already closes
  each prefix. The tokenizer's `<score>` id (`tok.score_id`) stays reserved
  and unused (docs/deviations.md, row 4).
  """

  def __init__(self, graphdef, params):
    self.graphdef, self.params = graphdef, params
    self.cfg = compute_lib.verifier_config(graphdef, params)
    self.extend_fn = jax.jit(functools.partial(_extend, graphdef),
                             donate_argnums=(4,))

  def init_cache(self, batch: int, size: int) -> dict:
    return transformer.init_cache(self.cfg, batch, size)

  def extend(self, tokens_BW, length_B, pos0_B, cache):
    """(value_B, cache); the cache is donated."""
    return self.extend_fn(self.params, jnp.asarray(tokens_BW, jnp.int32),
                          jnp.asarray(length_B, jnp.int32),
                          jnp.asarray(pos0_B, jnp.int32), cache)

