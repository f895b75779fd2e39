"""Monte-Carlo values of prefixes: fork n policy rollouts, grade, count.

The core shared by the labeller (`labelling.label_chunk`, offline labels)
and the test-time Monte-Carlo scorer (`search.mc_scorer`, no learned model):
Q̂(s) = fraction of n continuations of prefix s graded correct.

  `continue_forked`    the prefixes are rows of a sampler state (their KV
                       cache is already there): select, fork n, decode;
  `continue_prefilled` the prefixes are token lists: prefill each once and
                       fork n (or n times, `repeat=True`: the no-fork
                       baseline), then decode.
Both take the continuation keys from the caller (`mc_keys`), so the same
keys give the same Q̂ whether a prefix's cache came from a prefill or from
decoding it step by step (the equality tests rely on it).

A continuation that stops because the KV cache is full is graded on a
truncated text (Q̂ biased towards 0) unless the response already reached
max_new_tokens. `Budget.cache_full` counts every rollout stopped by a full
cache, `Budget.cache_full_biased` those cut before the response budget; the
callers refuse the latter (`check_cache_full`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pav_jax import sampler as sampler_lib

# grade(prompt_index, response_tokens_without_eos) -> 0.0 / 1.0
GradeFn = Callable[[int, list[int]], float]


class McConfig(Protocol):
  """What the MC core reads of a config (`labelling.LabelConfig` has it)."""

  n_mc: int  # continuations per prefix
  max_new_tokens: int  # response budget; longer responses are cut
  row_buckets: int  # batches padded to multiples of total_rows / row_buckets


@dataclasses.dataclass(frozen=True)
class McSettings:
  """A plain `McConfig` (the search's MC scorer)."""

  n_mc: int
  max_new_tokens: int
  row_buckets: int = 4


@dataclasses.dataclass
class Budget:
  """Compute spent: tokens sampled, prompt/prefix tokens prefilled, rollouts.

  `cache_full` counts rollouts stopped by a full KV cache (reported);
  `cache_full_biased` those of them cut before the response budget: their
  grade (and so Q̂) is biased. `pit_rollouts`: the part of `mc_rollouts`
  spent locating first pits (`labelling.LabelConfig.first_pit="bisect"`).
  """

  sampled_tokens: int = 0
  prefilled_tokens: int = 0
  seed_rollouts: int = 0
  mc_rollouts: int = 0
  cache_full: int = 0
  cache_full_biased: int = 0
  pit_rollouts: int = 0
  seconds: float = 0.0

  def add(self, other: "Budget") -> None:
    for f in dataclasses.fields(self):
      setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


class CacheFullError(RuntimeError):
  """Rollouts were cut by a full KV cache: their Q̂ would be biased."""


def check_cache_full(cache_full: int, where: str, key: str) -> None:
  """Raises `CacheFullError` naming the config key to raise if non-zero."""
  if cache_full:
    raise CacheFullError(
        f"{where}: {cache_full} rollouts stopped because the KV cache was "
        f"full before the response budget; their grades (and Q̂) would be "
        f"biased towards 0. Raise `{key}`.")


def mc_keys(key: jax.Array, h: int, rows_A: np.ndarray,
            n_mc: int) -> jax.Array:
  """Continuation keys of (prefix index h, row r, draw i), [A * n_mc]."""
  k_h = jax.random.fold_in(key, h)
  k_A = jax.vmap(lambda r: jax.random.fold_in(k_h, r))(jnp.asarray(rows_A))
  return jax.vmap(lambda k: jax.vmap(lambda i: jax.random.fold_in(k, i))(
      jnp.arange(n_mc)))(k_A).reshape((-1,) + k_A.shape[1:])


def bucket_rows(n: int, total: int, buckets: int) -> int:
  """n rounded up to a multiple of total / buckets (few distinct shapes)."""
  unit = max(-(-total // buckets), 1)
  return min(-(-n // unit) * unit, max(total, n))


def grade_continuations(out_tokens, out_len, prefixes_resp, prompt_ids,
                        n_mc: int, grade: GradeFn, max_new_tokens: int,
                        eos_id: int) -> np.ndarray:
  """Successes per prefix: grades prefix response + continuation (host)."""
  succ = np.zeros(len(prefixes_resp), np.int32)
  for a, resp in enumerate(prefixes_resp):
    for i in range(n_mc):
      r = a * n_mc + i
      cont = out_tokens[r, : out_len[r]].tolist()
      if cont and cont[-1] == eos_id:
        cont = cont[:-1]
      full = (list(resp) + cont)[: max_new_tokens]
      succ[a] += int(grade(int(prompt_ids[a]), full) > 0)
  return succ


def _count(budget: Budget, lens, stops, resp_A, n_mc: int,
           max_new_tokens: int, tokens_out: list | None) -> None:
  """Adds sampled tokens, rollouts and biased cache-full stops of A prefixes
  (and appends each prefix's sampled tokens to `tokens_out`)."""
  n_real = len(resp_A) * n_mc
  if tokens_out is not None:
    tokens_out.extend(lens[:n_real].reshape(-1, n_mc).sum(1).tolist())
  budget.sampled_tokens += int(lens[:n_real].sum())
  budget.mc_rollouts += n_real
  have_R = np.repeat([len(r) for r in resp_A], n_mc) + lens[:n_real]
  full_R = stops[:n_real] == sampler_lib.CACHE_FULL
  budget.cache_full += int(full_R.sum())
  budget.cache_full_biased += int((full_R & (have_R < max_new_tokens)).sum())


def continue_forked(sampler, params, state, rows_A, resp_A, prompt_A, keys,
                    grade: GradeFn, cfg: McConfig, total_rows: int,
                    budget: Budget,
                    tokens_out: list | None = None) -> np.ndarray:
  """MC successes of the prefixes held by `state` rows `rows_A`.

  Args:
    sampler: a `sampler.Sampler` (prefill/decode, `eos_id`).
    params: the policy's params.
    state: a `SamplerState` whose rows `rows_A` end with the prefixes.
    rows_A: int rows of `state`, one per prefix (A >= 1).
    resp_A: each prefix's response tokens so far (graded with the
      continuation, cut at cfg.max_new_tokens).
    prompt_A: each prefix's prompt index (passed to `grade`).
    keys: [A * n_mc] continuation keys (`mc_keys`).
    grade: grade(prompt index, response tokens) -> 0/1.
    cfg: n_mc, max_new_tokens, row_buckets.
    total_rows: the largest A of the caller (padding buckets).
    budget: updated in place (sampled tokens, rollouts, cache_full).
    tokens_out: if given, each prefix's sampled tokens are appended.

  Returns:
    int [A]: successes out of cfg.n_mc per prefix.
  """
  rows_A = np.asarray(rows_A)
  g = bucket_rows(len(rows_A), total_rows, cfg.row_buckets)
  idx = np.concatenate([rows_A, np.full(g - len(rows_A), rows_A[0])])
  sub = sampler_lib.select_rows(state, jnp.asarray(idx.astype(np.int32)))
  pad_B = np.arange(g) >= len(rows_A)
  sub = sub.replace(finished_B=sub.finished_B | jnp.asarray(pad_B))
  pad_keys = jnp.concatenate(
      [keys, jnp.repeat(keys[:1], (g - len(rows_A)) * cfg.n_mc, axis=0)],
      axis=0)
  forked = sampler_lib.fork(sub, cfg.n_mc, key_B=pad_keys)
  out = sampler.decode(params, forked, cfg.max_new_tokens)
  toks, lens, stops = jax.device_get((out.tokens_BN, out.length_B, out.stop_B))
  _count(budget, lens, stops, resp_A, cfg.n_mc, cfg.max_new_tokens,
         tokens_out)
  return grade_continuations(toks, lens, resp_A, prompt_A, cfg.n_mc, grade,
                             cfg.max_new_tokens, sampler.eos_id)


def continue_prefilled(sampler, params, prefixes_A: Sequence[Sequence[int]],
                       resp_A, prompt_A, keys, grade: GradeFn, cfg: McConfig,
                       total_rows: int, budget: Budget, *,
                       repeat: bool,
                       tokens_out: list | None = None) -> np.ndarray:
  """MC successes by prefilling each prefix once (repeat=False, then fork)
  or n_mc times (repeat=True: the no-fork baseline).

  `prefixes_A` are full token lists (BOS + prompt + response so far); the
  other arguments as in `continue_forked`. Rows are padded like it
  (finished pad rows) so shapes stay static.
  """
  n_mc, a = cfg.n_mc, len(prefixes_A)
  g = bucket_rows(a, total_rows, cfg.row_buckets)
  padded = list(prefixes_A) + [prefixes_A[0]] * (g - a)
  keys = jnp.concatenate([keys, jnp.repeat(keys[:1], (g - a) * n_mc, axis=0)],
                         axis=0)
  pad_B = jnp.asarray(np.repeat(np.arange(g) >= a, n_mc))
  if repeat:
    rows = [p for p in padded for _ in range(n_mc)]
    state = sampler.prefill(params, rows, None, key_B=keys)
    budget.prefilled_tokens += sampler_lib.prefilled_tokens(rows[: a * n_mc])
  else:
    state = sampler.prefill(params, padded, None, key_B=keys[::n_mc])
    state = sampler_lib.fork(state, n_mc, key_B=keys)
    budget.prefilled_tokens += sampler_lib.prefilled_tokens(prefixes_A)
  state = state.replace(finished_B=state.finished_B | pad_B)
  out = sampler.decode(params, state, cfg.max_new_tokens)
  toks, lens, stops = jax.device_get((out.tokens_BN, out.length_B, out.stop_B))
  _count(budget, lens, stops, resp_A, n_mc, cfg.max_new_tokens, tokens_out)
  return grade_continuations(toks, lens, resp_A, prompt_A, n_mc, grade,
                             cfg.max_new_tokens, sampler.eos_id)
