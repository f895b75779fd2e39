"""Monte-Carlo step labels under provers: the forked labeller and its stage.

Data flow (one chunk of prompts, all shapes static so decode compiles a few
times per run):

  prefill prompts once ─ fork n_cov ─> seed rows ─ decode one step
        (stop_at_step) at a time; rows still running after step h give
        prefix s_{h+1} (s_1: the prompt) ─┐
                                          v
  the seeds' final KV cache holds every prefix: each prefix's n_mc
  continuations are rewound from it into one continuous-batching pool
  (`mc_pool`), decoded a few tokens at a time with finished rows refilled

Q̂(s) = fraction of a prefix's n_mc continuations graded correct. A step that
ends with EOS closes the trajectory: its value is the outcome itself (exact,
no rollouts). Continuations of a *different* model μ (a checkpoint prover)
cannot reuse π's cache: each prefix is prefilled once by μ and forked n_mc.
`mode="reprefill"` instead prefills every continuation separately: the
baseline of the forking benchmark, and the reference of the equality test.
The adaptive MC budget labels one step at a time, forking a state of that
step's prefixes rewound from the seeds (`mc_pool.prefix_state`). Whatever
the path, draw i of prefix h of row r has the key `mc_values.mc_keys`
gives it, so the labels do not depend on the batching: the pooled fork,
the per-step fork and re-prefilling give the same Q̂ (tests). The pool cuts
a continuation at the response budget (max_new_tokens minus the prefix's
response: later tokens are never graded) and skips the padding prompts'
rows, so its `Budget.sampled_tokens` is the tokens that count.

A step ends at any token whose piece holds the delimiter "\n" (the
sampler's `step_id`, an id or a tuple of ids: `Tokenizer.step_ids`, so a
merged "\n\n" piece of a real vocabulary ends a step too); the verifier
reads its values at the same tokens (`verifier.boundary_mask`).

Value layout, shared with `verifier.prefix_values`: `q_NP[:, 0]` = V(s_1),
`q_NP[:, h]` = Q(s_h, a_h) = V(s_{h+1}); `mask_NP` marks real prefixes.

The fork-and-grade core (continuations of prefixes, grading, keys, the
`Budget`) lives in `mc_values.py`, shared with the search's test-time MC
scorer. A rollout cut by a full KV cache before the response budget makes
Q̂ biased: `label_dataset` refuses such a chunk (raise `c.label.cache_size`,
the seeds' cache; the pool sizes its own from the prompts and the budget).

First pits (`LabelConfig.first_pit`, App. D) and the adaptive MC budget
(`n_mc_min`, `mc_tol`, `mc_alloc`; beyond the paper) act on these labels:
see `LabelConfig`. Records: experiments/2026-11-26_label_first_pit and
2026-11-26_label_demo_policy.

`label_dataset` writes a labelled set (shards + manifest, resumable): the
format, its identity and `load_labelled` live in `labelled_set.py`; the math
of advantages and rewards over the labels in `advantages.py`.
"""

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pav_jax import identity as id_lib
from pav_jax import labelled_set
from pav_jax import mc_pool
from pav_jax import mc_values
from pav_jax import metrics
from pav_jax import run_lib
from pav_jax import sampler as sampler_lib
from pav_jax import transformer

log = logging.getLogger(__name__)

GradeFn = mc_values.GradeFn


# -----------------------------------------------------------------------------
# Host helpers.
# -----------------------------------------------------------------------------


def bisect_first_zero(is_zero: Callable[[int], bool], lo: int, hi: int) -> int:
  """Smallest h in [lo, hi] with is_zero(h), assuming zeros persist (host).

  Locates a pit with O(log H) value estimates instead of H. Returns hi + 1
  when no prefix in range is a pit.
  """
  ans = hi + 1
  while lo <= hi:
    mid = (lo + hi) // 2
    if is_zero(mid):
      ans, hi = mid, mid - 1
    else:
      lo = mid + 1
  return ans


# -----------------------------------------------------------------------------
# The labeller.
# -----------------------------------------------------------------------------


FIRST_PIT_MODES = ("off", "filter", "bisect")


@dataclasses.dataclass(frozen=True)
class LabelConfig:
  """Static labelling parameters.

  Attributes:
    n_cov: seed rollouts per prompt.
    n_mc: continuations per step-boundary prefix.
    max_new_tokens: response budget (seeds and continuations alike).
    max_step_tokens: longest step a seed may take (longer: truncated).
    max_steps: most steps of a seed rollout.
    prompts_per_chunk: prompts labelled together (one shard each chunk).
    mode: "fork" (continuations fork the prefix cache) or "reprefill".
    row_buckets: continuation batches are padded to multiples of
      rows/row_buckets, so decode compiles at most row_buckets + 1 times.
    first_pit: which prefixes of a failing seed are kept (App. D, Fig. 11):
      "off" all of them; "filter" those up to the first prefix whose
      existing Q̂ is 0 (after one with Q̂ >= pit_high); "bisect" spends
      n_pit extra rollouts per probe to locate the first prefix whose Q̂
      is 0 by bisection over the prefixes, the paper's "first pit". A
      failing seed without a pit keeps all its prefixes; correct seeds
      always do. Dropped prefixes leave `mask_NP` (`seed_mask_NP` keeps
      them), `pit_N` holds the pit's prefix index (-1: none).
    pit_high: a pit is looked for only in failing seeds that reached a
      prefix with Q̂ >= pit_high (the paper's "high-value states"; 0: all).
    n_pit: rollouts of one bisection probe (and of a top-up).
    pit_topup: "bisect" also gives n_pit rollouts to every prefix before
      the pit whose Q̂ is still 0 (it is known to be > 0: a later prefix
      succeeded or the bisection put the pit after it), the paper's
      "estimate those Q̂ with a large number of partial rollouts".
    n_mc_min: adaptive MC budget (beyond the paper) when 0 < n_mc_min <
      n_mc; `count_NP` holds each prefix's rollouts. 0: n_mc for every
      prefix. With mc_alloc "stop" a prefix is sampled in rounds of
      n_mc_min up to n_mc and stops once resolved: all rollouts of the
      first round agree (Q̂ 0 or 1; mc_tol = 0), or (mc_tol > 0) the 99.9%
      binomial half-width of Q̂ is <= mc_tol (`metrics.binomial_ci`).
      With "neyman" the budget of fixed n_mc is kept exactly: n_mc_min
      rollouts per prefix, then the prefixes of one step share the
      remaining (n_mc - n_mc_min) per prefix in proportion to their
      estimated sd sqrt(q(1 - q)), q = (s + 0.5) / (n_mc_min + 1)
      (Neyman allocation: minimum total variance for the budget).
    mc_tol: the half-width that resolves a prefix ("stop" only).
    mc_alloc: "stop" or "neyman" (adaptive only).
  """

  n_cov: int = 4
  n_mc: int = 8
  max_new_tokens: int = 80
  max_step_tokens: int = 32
  max_steps: int = 12
  prompts_per_chunk: int = 32
  mode: str = "fork"
  row_buckets: int = 4
  first_pit: str = "off"
  pit_high: float = 0.0
  n_pit: int = 32
  pit_topup: bool = True
  n_mc_min: int = 0
  mc_tol: float = 0.0
  mc_alloc: str = "stop"

  def __post_init__(self):
    if self.mode not in ("fork", "reprefill"):
      raise ValueError(f"mode must be 'fork' or 'reprefill', got {self.mode!r}")
    if min(self.n_cov, self.n_mc, self.max_steps, self.prompts_per_chunk) < 1:
      raise ValueError("n_cov, n_mc, max_steps, prompts_per_chunk must be"
                       f" >= 1: {self}")
    if self.first_pit not in FIRST_PIT_MODES:
      raise ValueError(f"first_pit must be one of {FIRST_PIT_MODES}, got "
                       f"{self.first_pit!r}")
    if self.mc_alloc not in ("stop", "neyman"):
      raise ValueError(f"mc_alloc must be 'stop' or 'neyman', got "
                       f"{self.mc_alloc!r}")
    if self.n_pit < 1 or self.n_mc_min < 0 or not 0 <= self.pit_high <= 1:
      raise ValueError(f"need n_pit >= 1, n_mc_min >= 0, 0 <= pit_high <= 1:"
                       f" {self}")

  @property
  def adaptive(self) -> bool:
    return 0 < self.n_mc_min < self.n_mc

  @property
  def num_prefixes(self) -> int:
    return self.max_steps + 1


Budget = mc_values.Budget


@dataclasses.dataclass
class Prover:
  """A checkpoint prover μ: its sampler and params (Q̂^μ at π's prefixes)."""

  sampler: Any
  params: Any


def _mc_successes(sampler, params, state, rows_A, resp_A, prefixes_A,
                  prompt_A, keys_AN, grade: GradeFn, cfg: LabelConfig,
                  total_rows: int, budget: Budget) -> np.ndarray:
  """Successes of keys_AN.shape[1] continuations of each prefix: forked
  from `state` rows (fork mode) or re-prefilled n times (state None)."""
  n = keys_AN.shape[1]
  mc = mc_values.McSettings(n, cfg.max_new_tokens, cfg.row_buckets)
  keys = keys_AN.reshape((-1,) + keys_AN.shape[2:])
  if state is not None:
    return mc_values.continue_forked(sampler, params, state, rows_A, resp_A,
                                     prompt_A, keys, grade, mc, total_rows,
                                     budget)
  return mc_values.continue_prefilled(sampler, params, prefixes_A, resp_A,
                                      prompt_A, keys, grade, mc, total_rows,
                                      budget, repeat=True)


def resolved(succ_A: np.ndarray, count_A: np.ndarray, first: bool,
             mc_tol: float) -> np.ndarray:
  """Adaptive stopping (host): mc_tol = 0, the first round's rollouts all
  agree; mc_tol > 0, the 99.9% binomial half-width of Q̂ is at most mc_tol
  (at Q̂ in {0, 1} it is 1/n: all-agree stops once n >= 1 / mc_tol)."""
  if mc_tol <= 0:
    return first & ((succ_A == 0) | (succ_A == count_A))
  q = succ_A / np.maximum(count_A, 1)
  return metrics.binomial_ci(q, np.maximum(count_A, 1)) <= mc_tol


def neyman_extra(succ_A: np.ndarray, n_first: int, extra_total: int
                 ) -> np.ndarray:
  """Extra rollouts per prefix, summing to extra_total, proportional to
  sqrt(q (1 - q)) with q = (s + 0.5) / (n_first + 1) (largest remainders;
  host)."""
  q = (succ_A + 0.5) / (n_first + 1)
  w = np.sqrt(q * (1 - q))
  share = extra_total * w / w.sum()
  out = np.floor(share).astype(np.int64)
  rest = extra_total - int(out.sum())
  out[np.argsort(-(share - out), kind="stable")[:rest]] += 1
  return out


def _adaptive_mc(sampler, params, state, rows_A, resp_A, prefixes_A,
                 prompt_A, keys, grade: GradeFn, cfg: LabelConfig,
                 total_rows: int, budget: Budget
                 ) -> tuple[np.ndarray, np.ndarray]:
  """(successes, rollouts) per prefix: n_mc each, or adaptive rounds.

  Draw i of a prefix uses key i of `keys` ([A * n_mc], `mc_keys`) in both
  cases, so an unresolved prefix gets exactly the fixed-n_mc label.
  """
  rows_A = np.asarray(rows_A)
  a = len(rows_A)
  keys_AN = keys.reshape((a, cfg.n_mc) + keys.shape[1:])
  if not cfg.adaptive:
    succ = _mc_successes(sampler, params, state, rows_A, resp_A, prefixes_A,
                         prompt_A, keys_AN, grade, cfg, total_rows, budget)
    return succ, np.full(a, cfg.n_mc, np.int32)
  if cfg.mc_alloc == "neyman":
    m = cfg.n_mc_min
    succ = _mc_successes(sampler, params, state, rows_A, resp_A, prefixes_A,
                         prompt_A, keys_AN[:, :m], grade, cfg, total_rows,
                         budget)
    extra = neyman_extra(succ, m, (cfg.n_mc - m) * a)
    idx = np.repeat(np.arange(a), extra)
    draw = np.concatenate([np.arange(e) for e in extra])
    # Extra draws: keys of another stream (draw d of prefix i).
    k_x = jax.vmap(jax.random.fold_in)(
        jax.vmap(jax.random.fold_in)(keys_AN[jnp.asarray(idx), 0],
                                     jnp.full(len(idx), 7919)),
        jnp.asarray(draw))
    got = _mc_successes(
        sampler, params, state, rows_A[idx], [resp_A[i] for i in idx],
        [prefixes_A[i] for i in idx], np.asarray(prompt_A)[idx],
        k_x[:, None], grade, cfg, total_rows * (cfg.n_mc - m), budget)
    succ = succ + np.bincount(idx, got, minlength=a).astype(np.int32)
    return succ, (m + extra).astype(np.int32)
  succ, count = np.zeros(a, np.int32), np.zeros(a, np.int32)
  active, j = np.ones(a, bool), 0
  while j < cfg.n_mc and active.any():
    take = min(cfg.n_mc_min, cfg.n_mc - j)
    idx = np.flatnonzero(active)
    succ[idx] += _mc_successes(
        sampler, params, state, rows_A[idx], [resp_A[i] for i in idx],
        [prefixes_A[i] for i in idx], np.asarray(prompt_A)[idx],
        keys_AN[jnp.asarray(idx), j:j + take], grade, cfg, total_rows, budget)
    count[idx] += take
    active &= ~resolved(succ, count, j == 0, cfg.mc_tol)
    j += take
  return succ, count


def _first_pits(sampler, params, prompts, resp, resp_len, prompt_of_row,
                q_succ, q_count, mask, exact_m, outcome, n: int, key,
                grade: GradeFn, cfg: LabelConfig, total_rows: int,
                budget: Budget, prompt_offset: int):
  """First pit of each failing seed (rows < n): returns (succ, count, pit).

  "filter": the first prefix with Q̂ == 0 after one with Q̂ >= pit_high.
  "bisect": a prefix with a success has Q > 0, and so (a pit persists:
  the seed's own next step has probability > 0) have all before it; the
  pit lies after the last such prefix. Bisection over the rest, all at
  Q̂ = 0, probes a prefix with n_pit more rollouts (prefilled, then forked);
  an EOS-closed prefix of a failing seed is an exact zero. The probes'
  rollouts add to the labels and to `budget.pit_rollouts`. pit = -1: no pit
  (a correct seed, no high state, or no zero found).
  """
  q_succ, q_count = q_succ.copy(), q_count.copy()
  r_total, p_max = q_succ.shape
  pit = np.full(r_total, -1, np.int64)
  q = q_succ / np.maximum(q_count, 1)
  q = np.where(exact_m, outcome[:, None], q)
  last = mask.sum(1) - 1
  rows = [r for r in range(n) if outcome[r] == 0
          and (q[r, : last[r] + 1] >= cfg.pit_high).any()]
  if cfg.first_pit == "filter":
    for r in rows:
      high = np.cumsum(q[r, : last[r] + 1] >= cfg.pit_high) > 0
      zero = np.flatnonzero(high & (q[r, : last[r] + 1] <= 0))
      pit[r] = zero[0] if len(zero) else -1
    return q_succ, q_count, pit
  mc_before = budget.mc_rollouts
  # Bisection state per row: [lo, hi] still open, ans = smallest zero seen.
  nz = {r: np.flatnonzero((q_succ[r] > 0) & mask[r] & ~exact_m[r])
        for r in rows}
  lo = {r: (int(nz[r][-1]) + 1 if len(nz[r]) else 0) for r in rows}
  hi = {r: int(last[r]) for r in rows}
  ans = {r: int(last[r]) + 1 for r in rows}
  probed = set()

  def probe(items):
    """n_pit more rollouts at (row, h) items; updates q_succ / q_count."""
    if not items:
      return
    pref = [prompts[prompt_of_row[r]] + resp[r][: resp_len[r, h]]
            for r, h in items]
    resp_A = [resp[r][: resp_len[r, h]] for r, h in items]
    keys = jnp.concatenate([mc_values.mc_keys(key, h, np.array([r]),
                                              cfg.n_pit) for r, h in items])
    mc = mc_values.McSettings(cfg.n_pit, cfg.max_new_tokens, cfg.row_buckets)
    succ = mc_values.continue_prefilled(
        sampler, params, pref, resp_A,
        np.array([prompt_of_row[r] + prompt_offset for r, _ in items]), keys,
        grade, mc, total_rows, budget, repeat=False)
    for (r, h), s in zip(items, succ):
      q_succ[r, h] += s
      q_count[r, h] += cfg.n_pit
      probed.add((r, h))

  while True:
    active = [r for r in rows if lo[r] <= hi[r]]
    if not active:
      break
    mid = {r: (lo[r] + hi[r]) // 2 for r in active}
    probe([(r, mid[r]) for r in active if not exact_m[r, mid[r]]])
    for r in active:
      if q_succ[r, mid[r]] == 0:  # exact zero, or every probe failed
        ans[r], hi[r] = mid[r], mid[r] - 1
      else:
        lo[r] = mid[r] + 1
  for r in rows:
    pit[r] = ans[r] if ans[r] <= last[r] else -1
  if cfg.pit_topup:
    probe([(r, h) for r in rows if pit[r] >= 0 for h in range(pit[r])
           if q_succ[r, h] == 0 and not exact_m[r, h]
           and (r, h) not in probed])
  budget.pit_rollouts += budget.mc_rollouts - mc_before
  return q_succ, q_count, pit


def label_chunk(sampler, params, prompts: Sequence[Sequence[int]],
                grade: GradeFn, key: jax.Array, cfg: LabelConfig,
                prover: Prover | None = None,
                prompt_offset: int = 0) -> tuple[dict, Budget]:
  """Seed rollouts and MC labels of every step-boundary prefix of a chunk.

  Args:
    sampler: a `sampler.Sampler` (or anything with its prefill/decode and a
      `SamplerState`): the base policy π.
    params: π's params.
    prompts: token lists (BOS + prompt, ending with the step delimiter);
      padded to cfg.prompts_per_chunk with copies of the first.
    grade: grade(prompt index (prompt_offset + i), response tokens) -> 0/1.
    key: PRNG key of the chunk.
    cfg: labelling parameters.
    prover: optional checkpoint prover μ; adds Q̂^μ at π's prefixes.
    prompt_offset: global index of prompts[0] (passed to `grade`).

  Returns:
    (arrays, budget); arrays (N = real prompts * n_cov rows, P prefixes):
      tokens_NT: BOS + prompt + response (+ EOS), pad after; T =
        longest prompt + max_new_tokens + 1.
      prompt_len_N, response_len_N, num_prefixes_N, outcome_N (0/1),
      finished_N (ended with EOS), prompt_index_N,
      q_NP (Q̂^π), succ_NP, count_NP (n_mc; 0 where exact/padded), mask_NP,
      and with a prover q_mu_NP, succ_mu_NP.
  """
  t0 = time.time()
  budget = Budget()
  real = len(prompts)
  if real > cfg.prompts_per_chunk:
    raise ValueError(f"{real} prompts exceed prompts_per_chunk"
                     f" {cfg.prompts_per_chunk}")
  prompts = [list(p) for p in prompts]
  prompts += [prompts[0]] * (cfg.prompts_per_chunk - real)
  c, n_cov, n_mc, p_max = len(prompts), cfg.n_cov, cfg.n_mc, cfg.num_prefixes
  r_total = c * n_cov
  eos = sampler.eos_id
  k_prompt, k_seed, k_mc, k_mu, k_pit = (jax.random.fold_in(key, i)
                                         for i in range(5))

  prompt_of_row = np.repeat(np.arange(c), n_cov)
  resp = [[] for _ in range(r_total)]
  q_succ = np.zeros((r_total, p_max), np.int32)
  q_count = np.zeros((r_total, p_max), np.int32)
  mu_succ = np.zeros((r_total, p_max), np.int32)
  n_prefix = np.ones(r_total, np.int32)  # s_1 always exists
  exact = np.full((r_total, p_max), -1.0)  # outcome at an EOS-closed prefix
  finished = np.zeros(r_total, bool)
  running = np.ones(r_total, bool)
  resp_len = np.zeros((r_total, p_max), np.int64)  # response tokens of s_h+1

  def prefix_of(h, rows_A):
    """(seed rows, responses, full prefixes, prompt indices) of prefix h of
    rows_A (h = 0: rows_A are prompts, s_1 is shared by their seeds)."""
    if h == 0:
      return (rows_A * n_cov, [[] for _ in rows_A],
              [prompts[i] for i in rows_A], rows_A + prompt_offset)
    resp_A = [resp[r][: resp_len[r, h]] for r in rows_A]
    return (rows_A, resp_A,
            [prompts[prompt_of_row[r]] + x for r, x in zip(rows_A, resp_A)],
            prompt_of_row[rows_A] + prompt_offset)

  def label(h, rows_A):
    """Q̂^π (and Q̂^μ) of prefix h of rows_A, one step at a time (reprefill
    mode, adaptive MC): fork mode forks a state of the prefixes rewound
    from the seeds' final state (`mc_pool.prefix_state`).

    Returns (successes, rollouts, μ's successes out of n_mc or None).
    """
    src, resp_A, prefixes, prompt_A = prefix_of(h, rows_A)
    keys = mc_values.mc_keys(k_mc, h, rows_A, n_mc)
    state, rows = None, rows_A
    if cfg.mode == "fork":
      state = mc_pool.prefix_state(
          sampler, seed, src, [len(p) - 1 for p in prefixes],
          [p[-1] for p in prefixes], keys[::n_mc], cfg.max_new_tokens)
      rows = np.arange(len(rows_A))
    succ, count = _adaptive_mc(
        sampler, params, state, rows, resp_A, prefixes, prompt_A, keys,
        grade, cfg, r_total, budget)
    return succ, count, prover_successes(h, rows_A)

  def prover_successes(h, rows_A):
    """Q̂^μ successes (out of n_mc) of prefix h of rows_A; None without a
    checkpoint prover (μ cannot reuse π's cache: prefilled, then forked)."""
    if prover is None:
      return None
    _, resp_A, prefixes, prompt_A = prefix_of(h, rows_A)
    return mc_values.continue_prefilled(
        prover.sampler, prover.params, prefixes, resp_A, prompt_A,
        mc_values.mc_keys(k_mu, h, rows_A, n_mc), grade, cfg, r_total, budget,
        repeat=False)

  # Prompts: prefilled once, forked into the seed rows.
  state = sampler.prefill(params, prompts, None,
                          key_B=jax.random.split(k_prompt, c))
  budget.prefilled_tokens += sampler_lib.prefilled_tokens(prompts[:real])
  seed_keys = jax.vmap(lambda r: jax.random.fold_in(k_seed, r))(
      jnp.arange(r_total))
  seed = sampler_lib.fork(state, n_cov, key_B=seed_keys)
  del state
  # Seeds first, step by step; the prefixes to label are (h, running rows).
  # Their caches stay in the seeds' final state (every fed token keeps its
  # slot and position), from which the labels rewind them.
  todo = [(0, np.arange(c))]
  for h in range(1, cfg.max_steps + 1):
    out = sampler.decode(params, seed, cfg.max_step_tokens, stop_at_step=True)
    seed = out.state
    toks, lens, stops = jax.device_get(
        (out.tokens_BN, out.length_B, out.stop_B))
    budget.sampled_tokens += int(lens[running[:]].sum())
    for r in np.flatnonzero(running):
      resp[r] += toks[r, : lens[r]].tolist()
      resp_len[r, h] = len(resp[r])
    over = np.array([len(x) >= cfg.max_new_tokens for x in resp])
    ended_eos = running & (stops == sampler_lib.EOS)
    stepped = running & (stops == sampler_lib.STEP_END) & ~over
    # A seed cut by the cache before the response budget is biased.
    full = running & (stops == sampler_lib.CACHE_FULL)
    budget.cache_full += int(full.sum())
    budget.cache_full_biased += int((full & ~over).sum())
    # An EOS-closed step is a prefix whose value is the outcome (exact).
    for r in np.flatnonzero(ended_eos):
      if len(resp[r]) <= cfg.max_new_tokens:
        exact[r, h] = -2.0  # filled after grading
        n_prefix[r] = h + 1
      finished[r] = len(resp[r]) <= cfg.max_new_tokens
    for r in np.flatnonzero(stepped):
      n_prefix[r] = h + 1
    running = stepped
    if h == cfg.max_steps or not running.any():
      break
    todo.append((h, np.flatnonzero(running)))
    # Stop rows that reached their budget from decoding further.
    seed = seed.replace(finished_B=jnp.asarray(~running))

  def store(h, rows_A, succ, count, succ_mu):
    if h == 0:  # per prompt: copied to its seeds
      rows_A, succ, count = (np.arange(r_total), succ[prompt_of_row],
                             count[prompt_of_row])
      succ_mu = None if succ_mu is None else succ_mu[prompt_of_row]
    q_succ[rows_A, h] = succ
    q_count[rows_A, h] = count
    if succ_mu is not None:
      mu_succ[rows_A, h] = succ_mu

  if cfg.mode == "fork" and not cfg.adaptive:
    # Every rollout of every prefix in one continuous-batching pool; rows of
    # padding prompts are not labelled (their arrays are dropped).
    todo = [(h, rows_A[rows_A < (real if h == 0 else real * n_cov)])
            for h, rows_A in todo]
    todo = [(h, rows_A) for h, rows_A in todo if len(rows_A)]
    parts = [prefix_of(h, rows_A) for h, rows_A in todo]
    keys = jnp.concatenate([mc_values.mc_keys(k_mc, h, rows_A, n_mc)
                            for h, rows_A in todo])
    succ = mc_pool.pooled_successes(
        sampler, params, seed, np.concatenate([x[0] for x in parts]),
        [r for x in parts for r in x[1]], [p for x in parts for p in x[2]],
        np.concatenate([x[3] for x in parts]),
        keys.reshape((-1, n_mc) + keys.shape[1:]), grade,
        cfg.max_new_tokens, budget)
    lo = 0
    for h, rows_A in todo:
      s_A = succ[lo: lo + len(rows_A)]
      lo += len(rows_A)
      if h == 0:
        s_A = np.concatenate([s_A, np.zeros(c - len(s_A), np.int32)])
      mu = prover_successes(h, rows_A)
      if h == 0 and mu is not None:
        mu = np.concatenate([mu, np.zeros(c - len(mu), np.int32)])
      store(h, rows_A, s_A, np.full(len(s_A), n_mc, np.int32), mu)
  else:
    for h, rows_A in todo:
      store(h, rows_A, *label(h, rows_A))
  # Rows running at max_steps are truncated (their last step had no label).
  n_prefix = np.where(running & (n_prefix > cfg.max_steps), cfg.max_steps,
                      n_prefix)

  n = real * n_cov
  outcome = np.zeros(r_total, np.float32)
  for r in range(n):
    body = resp[r][:-1] if resp[r] and resp[r][-1] == eos else resp[r]
    outcome[r] = float(grade(int(prompt_of_row[r]) + prompt_offset,
                             body[: cfg.max_new_tokens]) > 0)
  p_ids = np.arange(p_max)[None, :]
  mask = p_ids < n_prefix[:, None]
  exact_m = (exact == -2.0) & mask
  pit = None
  if cfg.first_pit != "off":
    q_succ, q_count, pit = _first_pits(
        sampler, params, prompts, resp, resp_len, prompt_of_row, q_succ,
        q_count, mask, exact_m, outcome, n, k_pit, grade, cfg, r_total,
        budget, prompt_offset)
  q = np.where(q_count > 0, q_succ / np.maximum(q_count, 1), 0.0)
  q = np.where(exact_m, outcome[:, None], q)
  q_count = np.where(exact_m | ~mask, 0, q_count)
  t_len = max(len(p) for p in prompts) + cfg.max_new_tokens + 1
  tokens = np.full((n, t_len), sampler.pad_id, np.int32)
  for r in range(n):
    row = prompts[prompt_of_row[r]] + resp[r][: cfg.max_new_tokens]
    tokens[r, : len(row)] = row
  arrays = {
      "tokens_NT": tokens,
      "prompt_len_N": np.array(
          [len(prompts[prompt_of_row[r]]) for r in range(n)], np.int32),
      "response_len_N": np.array(
          [min(len(resp[r]), cfg.max_new_tokens + 1) for r in range(n)],
          np.int32),
      "num_prefixes_N": n_prefix[:n].astype(np.int32),
      "outcome_N": outcome[:n],
      "finished_N": finished[:n],
      "prompt_index_N": (prompt_of_row[:n] + prompt_offset).astype(np.int32),
      "q_NP": q[:n].astype(np.float32),
      "succ_NP": np.where(mask, q_succ, 0)[:n].astype(np.int32),
      "count_NP": q_count[:n].astype(np.int32),
      "mask_NP": mask[:n],
  }
  if pit is not None:
    arrays["seed_mask_NP"] = mask[:n]
    arrays["pit_N"] = pit[:n].astype(np.int32)
    arrays["mask_NP"] = mask[:n] & ((pit[:n, None] < 0)
                                    | (p_ids <= pit[:n, None]))
  if prover is not None:
    q_mu = np.where(q_count > 0, mu_succ / n_mc, q)
    arrays["q_mu_NP"] = np.where(mask, q_mu, 0.0)[:n].astype(np.float32)
    arrays["succ_mu_NP"] = np.where(mask, mu_succ, 0)[:n].astype(np.int32)
  budget.seed_rollouts += n
  budget.seconds += time.time() - t0
  return arrays, budget


# -----------------------------------------------------------------------------
# Labelling a whole set into a directory (format: `labelled_set`).
# -----------------------------------------------------------------------------


def identity_config(cfg: LabelConfig) -> dict:
  """The labelling settings of a set's identity. A set made before a field
  existed lacks it and is compared at the field's default (`label_dataset`
  passes `LabelConfig()`'s values as `identity.diff` defaults)."""
  return dataclasses.asdict(cfg)


def label_dataset(directory: str | Path, sampler, params,
                  prompts: Sequence[Sequence[int]], grade: GradeFn,
                  key: jax.Array, cfg: LabelConfig, identity: dict,
                  prover: Prover | None = None, config: dict | None = None,
                  max_chunks: int | None = None,
                  cache_key: str = "label.cache_size") -> dict:
  """Labels all prompts chunk by chunk into `directory` (resumes); manifest.

  `identity` (JSON-able: tokenizer sha256, step/eos ids, policy checkpoint,
  prover ...) must match an existing manifest. `max_chunks` stops after that
  many *new* chunks (simulates an interruption in tests). A chunk whose
  rollouts were cut by a full KV cache before the response budget
  (`Budget.cache_full_biased` > 0: Q̂ biased)
  raises `mc_values.CacheFullError` naming `cache_key`. Every process
  labels; process 0 alone writes shards and the manifest.
  """
  directory = Path(directory)
  if labelled_set.is_writer():
    directory.mkdir(parents=True, exist_ok=True)
  labelled_set.sync(f"label_dataset:{directory}:mkdir")
  identity = json.loads(json.dumps(dict(
      identity, label_config=identity_config(cfg),
      num_prompts=len(prompts))))
  manifest = labelled_set.open_manifest(
      directory, identity, config, Budget().to_dict(),
      defaults={"label_config": dataclasses.asdict(LabelConfig())})
  chunk = cfg.prompts_per_chunk
  num_chunks = -(-len(prompts) // chunk)
  new = 0
  for i in range(num_chunks):
    if labelled_set.has_shard(directory, manifest, i):
      continue
    if max_chunks is not None and new >= max_chunks:
      break
    lo = i * chunk
    arrays, b = label_chunk(sampler, params, prompts[lo:lo + chunk], grade,
                            jax.random.fold_in(key, i), cfg, prover, lo)
    # Checked before the shard is written: a biased shard is never kept.
    mc_values.check_cache_full(b.cache_full_biased, f"labelling chunk {i} of "
                               f"{directory}", cache_key)
    manifest = labelled_set.add_shard(
        directory, manifest, i, arrays,
        (lo, lo + len(prompts[lo:lo + chunk])), b.to_dict(), num_chunks)
    new += 1
    log.info("labelled chunk %d/%d (%d prefixes, %.1fs)", i + 1, num_chunks,
             manifest["shards"][labelled_set.shard_name(i)]["prefixes"],
             b.seconds)
  return manifest


# -----------------------------------------------------------------------------
# The pipeline stage.
# -----------------------------------------------------------------------------


def label_config(config, split: str = "train") -> LabelConfig:
  """The `LabelConfig` of `config.label`; first pits on the train split only
  (the eval set keeps every prefix, for label and verifier metrics)."""
  lc = config.label
  return LabelConfig(
      n_cov=lc.n_cov, n_mc=lc.n_mc, max_new_tokens=config.sample.max_new_tokens,
      max_step_tokens=lc.max_step_tokens, max_steps=lc.max_steps,
      prompts_per_chunk=lc.prompts_per_chunk, mode=lc.mode,
      first_pit=lc.get("first_pit", "off") if split == "train" else "off",
      pit_high=lc.get("pit_high", 0.0), n_pit=lc.get("n_pit", 32),
      pit_topup=lc.get("pit_topup", True), n_mc_min=lc.get("n_mc_min", 0),
      mc_tol=lc.get("mc_tol", 0.0), mc_alloc=lc.get("mc_alloc", "stop"))


def _params_sha256(params, path) -> str:
  """Content hash of a policy: its arrays on one host; on several hosts
  (arrays not fully addressable) the bytes of its exported files."""
  if jax.process_count() == 1:
    return id_lib.tree_sha256(params)
  files = sorted(p for p in Path(path).rglob("*") if p.is_file())
  return id_lib.tree_sha256({str(p.relative_to(path)): np.frombuffer(
      p.read_bytes(), np.uint8) for p in files})


def set_summary(manifest: dict, data: dict, seconds: float) -> dict:
  """A labelled set's summary: counts, budget (with `cache_full`, every
  rollout a full KV cache stopped, and `cache_full_biased`, those cut before
  the response budget: non-zero never loads), mean V(s_1), outcome."""
  b = manifest["budget"]
  return {"counts": manifest["counts"], "budget": b,
          "mean_v1": float(data["q_NP"][:, 0].mean()),
          "outcome": float(data["outcome_N"].mean()),
          "cache_full": int(b.get("cache_full", 0)),
          "cache_full_biased": int(b.get("cache_full_biased", 0)),
          "pit_rollouts": int(b.get("pit_rollouts", 0)),
          "seconds": seconds}


def summary_row(split: str, s: dict) -> str:
  """The report's table row of a `set_summary`."""
  b, c = s["budget"], s["counts"]
  return (f"| {split} | {c['prompts']} | {c['rollouts']} | {c['prefixes']} | "
          f"{b['sampled_tokens']} | {b['prefilled_tokens']} | "
          f"{b['mc_rollouts']} | {s['cache_full']} ({s['cache_full_biased']})"
          f" | {s['mean_v1']:.3f} | {s['outcome']:.3f} | {s['seconds']:.0f} |")


def run_label(run: run_lib.Run) -> dict:
  """Stage "label": train and eval labelled sets under <workdir>/label/."""
  config, workdir = run.config, run.workdir
  graphdef, params = run.load_policy()
  lc = config.label
  sampler = run.sampler(graphdef, cache_size=lc.cache_size)
  prover, prover_sha = None, None
  if lc.prover_checkpoint:
    _, prover_params = run.load_params_dir(
        lc.prover_checkpoint, lambda: transformer.create(run.model_cfg))
    prover = Prover(sampler, prover_params)
    prover_sha = _params_sha256(prover_params, lc.prover_checkpoint)
  cfg = label_config(config)
  identity = labelled_set.identity(
      run.tok, policy_sha256=_params_sha256(params, workdir / "sft" / "params"),
      prover_sha256=prover_sha, task=config.task.name, seed=run.seed)
  summary, md = {}, ["| split | prompts | rollouts | prefixes | sampled tok | "
                     "prefilled tok | MC rollouts | cache full (biased) | "
                     "mean Q̂(s_1) | outcome | s |",
                     "|---|---|---|---|---|---|---|---|---|---|---|"]
  for split, task_split, num, stream in (
      ("train", "train", lc.num_prompts, "label_train"),
      ("eval", "test", lc.num_eval_prompts, "label_eval")):
    exs = run.examples(task_split, num, stream)
    prompts = run.encode_prompts(exs)

    def grade(i, ids, exs=exs):
      return run.task.grade(exs[i], run.tok.decode(ids))

    t0 = time.time()
    m = label_dataset(workdir / "label" / split, sampler, params, prompts,
                      grade, run.key(stream), label_config(config, split),
                      dict(identity, split=split), prover, config.to_dict())
    data = labelled_set.load_labelled(workdir / "label" / split)
    summary[split] = set_summary(m, data, time.time() - t0)
    print(f"label/{split}: {m['counts']} budget {m['budget']}")
    md.append(summary_row(split, summary[split]))
  extra = ""
  if cfg.first_pit != "off":
    extra += (f" First pit (train): {cfg.first_pit}, pit_high="
              f"{cfg.pit_high}, n_pit={cfg.n_pit}; pit rollouts "
              f"{summary['train']['pit_rollouts']} (in MC rollouts).")
  if cfg.adaptive:
    extra += (f" Adaptive MC ({cfg.mc_alloc}): first {cfg.n_mc_min} per "
              f"prefix, n_mc={cfg.n_mc}, mc_tol={cfg.mc_tol}.")
  summary["report_md"] = (
      f"MC labels: n_cov={cfg.n_cov}, n_mc={cfg.n_mc}, mode={cfg.mode} "
      "(continuations fork each prefix's KV cache)." + extra
      + " Cache full: rollouts stopped by a full KV cache (biased: before "
      "the response budget; a set with any is refused).\n\n"
      + "\n".join(md))
  return summary
