"""Step-level beam search guided by a PRM-Q or a PAV (paper Sec. 4).

B beams per problem; each live beam samples C next steps (one step = up to
the "\\n" delimiter) by resuming its own policy KV cache; every candidate
(s, a) is scored by the PAV, Q^pi(s,a) + alpha (Q^mu(s,a) - Q^mu(s)) with
Q^mu = BoK(pi) in closed form (mode "pav"), or by Q^pi alone (mode "q"); the
top B per problem are kept. A candidate that ends with EOS is set aside and
keeps its slot, so a problem holds at most B finished traces and the search
ends when all B slots are finished, or after `max_steps`. The answer is the
finished trace with the highest Q^pi (as in the paper). The verifier keeps a
KV cache per beam (`verifier_cache`) that is forked and gathered with the
policy's, so each new step is scored by reading only its own tokens.

The verifier may instead be the test-time Monte-Carlo scorer
(`mc_scorer.MCScorer`): Q̂^pi of each candidate from n rollouts forked from
the candidate's own policy cache (its rollouts are charged as policy
compute); the prover term is the same closed form on Q̂.

Beam start (`BeamConfig.start`, `c.search.beam_start`):
  "beam" (default): B copies of the question, so the first expansion samples
    B*C first steps and keeps the top B. This is the behaviour every recorded
    result was made with, and it gives the first selection B*C candidates
    instead of C, which matters when C < B (fewer first steps would leave
    slots empty for a step). Measured once (arithmetic, 48 problems, N = 4,
    MC scorer): the same accuracy within noise as "one", which spent 30%
    fewer FLOPs; not enough to change the default (docs/deviations.md).
  "one": the paper's start: one live state per problem, so the first
    expansion samples C first steps; the top min(B, C) are kept and the beam
    fills up over the next steps.

Shapes: E problems of a chunk, R = E*B beam rows, M = R*C candidates,
L response tokens, P prefixes (max_steps + 1).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pav_jax import advantages
from pav_jax import sampler as sampler_lib
from pav_jax import mc_values
from pav_jax.search import mc_scorer
from pav_jax.search import verifier_cache
from pav_jax.search.compute import Compute

BEAM_MODES = ("q", "pav")
# Where A^mu comes from in mode "pav": "bok" the closed form on Q^pi (Eq. 30),
# "q_mu" a trained Q^mu verifier (checkpoint prover: A = Q^mu(s,a) - Q^mu(s)),
# "a_direct" a verifier that predicts A directly (tanh head).
PROVERS = ("bok", "q_mu", "a_direct")
BEAM_STARTS = ("beam", "one")


def beam_scores(q_new_M: jax.Array, q_parent_M: jax.Array, *, mode: str,
                alpha: float, prover_k: float, prover: str = "bok",
                mu_new_M: jax.Array | None = None,
                mu_parent_M: jax.Array | None = None) -> jax.Array:
  """Scores of candidates (s, a): Q^pi(s,a) (+ alpha A^mu(s,a) for "pav").

  Args:
    q_new_M: predicted Q^pi(s, a) = V^pi of the prefix after the new step.
    q_parent_M: predicted V^pi(s) of the prefix the step extends.
    mode: "q" (PRM-Q beam) or "pav".
    alpha: weight of the prover advantage.
    prover_k: K of the Best-of-K(pi) prover, Q^mu = 1 - (1 - Q^pi)^K
      (prover "bok" only).
    prover: "bok", "q_mu" or "a_direct" (`PROVERS`).
    mu_new_M: the prover verifier's output after the new step: Q^mu(s, a)
      ("q_mu") or A^mu(s, a) ("a_direct").
    mu_parent_M: Q^mu(s) of the parent prefix ("q_mu").
  """
  if mode == "q":
    return q_new_M
  if mode != "pav":
    raise ValueError(f"beam mode must be one of {BEAM_MODES}, got {mode!r}")
  if prover == "bok":
    adv_M = advantages.bok_step_advantage(q_new_M, q_parent_M, prover_k)
  elif prover == "q_mu":
    adv_M = mu_new_M - mu_parent_M
  elif prover == "a_direct":
    adv_M = mu_new_M
  else:
    raise ValueError(f"prover must be one of {PROVERS}, got {prover!r}")
  return advantages.effective_reward(q_new_M, adv_M, alpha)


def select_top(score_EM: jax.Array, ok_EM: jax.Array, num_keep_E: jax.Array,
               width: int) -> tuple[jax.Array, jax.Array]:
  """Top-`width` candidates per problem among the valid ones.

  Args:
    score_EM: candidate scores, M candidates per problem.
    ok_EM: which candidates may be kept.
    num_keep_E: how many slots each problem still has (<= width).
    width: static number of returned slots (the beam size B).

  Returns:
    (idx_EB, keep_EB): candidate index per slot, best first, and whether the
    slot holds a kept candidate (False past num_keep or out of candidates).
  """
  masked_EM = jnp.where(ok_EM, score_EM, -jnp.inf)
  top_EB, idx_EB = jax.lax.top_k(masked_EM, width)
  rank_EB = jnp.arange(width)[None, :]
  keep_EB = jnp.isfinite(top_EB) & (rank_EB < num_keep_E[:, None])
  return idx_EB, keep_EB


def distinct_mask(resp_RL: np.ndarray, rlen_R: np.ndarray, tok_MN: np.ndarray,
                  len_M: np.ndarray, parent_M: np.ndarray, ok_M: np.ndarray,
                  per_problem: int) -> np.ndarray:
  """`ok_M` with all but the first copy of each distinct candidate removed.

  A candidate is its parent's response plus its new step; two candidates of
  one problem (`per_problem` consecutive rows) with the same tokens are the
  same state and get the same value, so keeping both spends a beam slot on a
  copy. Measured on arithmetic (record 2026-11-26_search_alpha_diagnosis):
  without this, 88% of selections had B identical parents, which makes the
  PAV's parent term a constant and PAV beam == PRM-Q beam.
  """
  out_M = ok_M.copy()
  seen: set = set()
  for m in np.flatnonzero(ok_M):
    par = parent_M[m]
    key = (m // per_problem, resp_RL[par, :rlen_R[par]].tobytes(),
           tok_MN[m, :len_M[m]].tobytes())
    if key in seen:
      out_M[m] = False
    seen.add(key)
  return out_M


@dataclasses.dataclass(frozen=True)
class BeamConfig:
  """Step-level beam search; see the module docstring."""

  beam_size: int
  expansions: int = 3
  max_steps: int = 8
  max_step_tokens: int = 16
  mode: str = "pav"
  alpha: float = 0.5
  prover_k: float = 4.0
  batch_rows: int = 768  # problems per chunk = batch_rows // (B * C)
  start: str = "beam"  # "beam" (B copies of the question) or "one"
  distinct: bool = False  # keep only distinct prefixes (see distinct_mask)
  prover: str = "bok"  # PROVERS; "q_mu" / "a_direct" need a prover verifier

  def __post_init__(self):
    if self.prover not in PROVERS:
      raise ValueError(f"prover must be one of {PROVERS}, got "
                       f"{self.prover!r}")
    if self.start not in BEAM_STARTS:
      raise ValueError(f"beam start must be one of {BEAM_STARTS}, got "
                       f"{self.start!r}")


@dataclasses.dataclass
class BeamResult:
  """Per problem: the chosen response, its prefix values and the pool."""

  responses: list[list[int]]  # EOS excluded
  finished: np.ndarray  # bool [E]: the chosen trace ended with EOS
  values: list[list[float]]  # Q^pi of the chosen trace's prefixes, V(s_1) first
  pools: list[list[list[int]]]  # all finished traces (EOS excluded)
  compute: Compute  # totals over the problems
  seconds: float = 0.0


@dataclasses.dataclass
class BeamState:
  """Host copy of the live beams of a chunk (row r = problem * B + slot).

  The device state (policy sampler state, verifier cache) travels beside it;
  `pools` holds each problem's finished traces (final Q^pi, tokens, values).
  """

  q_R: np.ndarray  # Q^pi of each beam's last prefix
  alive_R: np.ndarray  # bool: still extending
  resp_RL: np.ndarray  # response tokens so far
  rlen_R: np.ndarray  # response length
  vals_RP: np.ndarray  # Q^pi of each prefix, V(s_1) first
  nstep_R: np.ndarray  # steps taken
  vpos_R: np.ndarray  # next position in the verifier's cache
  pools: list[list[tuple[float, list[int], list[float]]]]
  n_done_E: np.ndarray  # finished traces per problem

  @classmethod
  def init(cls, v0_E: np.ndarray, plen_E: np.ndarray, b: int, max_steps: int,
           max_resp: int, start: str = "beam") -> BeamState:
    """B slots per problem; with start "one" only slot 0 is live."""
    p = len(plen_E)
    r = p * b
    q_R = np.repeat(np.asarray(v0_E), b)
    vals_RP = np.zeros((r, max_steps + 1), np.float32)
    vals_RP[:, 0] = q_R
    alive_R = (np.ones(r, bool) if start == "beam"
               else np.arange(r) % b == 0)
    return cls(q_R=q_R, alive_R=alive_R,
               resp_RL=np.zeros((r, max_resp), np.int32),
               rlen_R=np.zeros(r, np.int32), vals_RP=vals_RP,
               nstep_R=np.zeros(r, np.int32), vpos_R=np.repeat(plen_E, b),
               pools=[[] for _ in range(p)], n_done_E=np.zeros(p, np.int32))

  def advance(self, h: int, b: int, par_R, keep_R, eos_R, step_len_R,
              steps_MN, q_new_M, cand_R) -> None:
    """Keeps candidates `cand_R` (children of rows `par_R`) after step h."""
    new_resp = self.resp_RL[par_R]
    new_len = self.rlen_R[par_R]
    for i in np.flatnonzero(keep_R):
      n = step_len_R[i]
      new_resp[i, new_len[i]:new_len[i] + n] = steps_MN[cand_R[i], :n]
    new_len = new_len + np.where(keep_R, step_len_R, 0)
    new_vals = self.vals_RP[par_R]
    new_vals[:, h + 1] = q_new_M[cand_R]
    for i in np.flatnonzero(keep_R & eos_R):
      pi = i // b
      trace = new_resp[i, : new_len[i] - 1].tolist()
      self.pools[pi].append((float(q_new_M[cand_R[i]]), trace,
                             new_vals[i, : h + 2].tolist()))
      self.n_done_E[pi] += 1
    self.resp_RL, self.rlen_R, self.vals_RP = new_resp, new_len, new_vals
    self.nstep_R = self.nstep_R[par_R] + keep_R
    self.q_R = q_new_M[cand_R]
    self.alive_R = keep_R & ~eos_R
    self.vpos_R = self.vpos_R[par_R] + step_len_R

  def answer(self, pi: int, b: int) -> tuple[list[int], list[float], bool]:
    """(trace, values, finished) chosen for problem pi."""
    pool = self.pools[pi]
    if pool:
      best = max(range(len(pool)), key=lambda j: pool[j][0])
      _, trace, vals = pool[best]
      return trace, vals, True
    rows = np.arange(pi * b, (pi + 1) * b)
    if self.alive_R[rows].any():
      # Nothing finished: the best live (unfinished) beam, graded as is.
      i = rows[np.argmax(np.where(self.alive_R[rows], self.q_R[rows], -np.inf))]
    else:  # every beam died (an over-long step): the longest partial trace
      i = rows[np.argmax(self.rlen_R[rows])]
    return (self.resp_RL[i, : self.rlen_R[i]].tolist(),
            self.vals_RP[i, : 1 + self.nstep_R[i]].tolist(), False)


def beam_search(sampler: sampler_lib.Sampler, policy_params,
                verifier: Any, prompts: Sequence[Sequence[int]],
                cfg: BeamConfig, rng: jax.Array,
                prover_verifier: Any = None) -> BeamResult:
  """Batched step-level beam search over problems (chunked) and beams.

  `verifier` is a `verifier_cache.CachedVerifier` or anything with its
  `init_cache` / `extend` interface, or a `mc_scorer.MCScorer` (its grader
  is called with the index of the problem in `prompts`).
  `prover_verifier` (same interface; needed for cfg.prover "q_mu" /
  "a_direct" in mode "pav") gives Q^mu or A^mu: it reads the same tokens
  through its own cache, and its tokens are charged as verifier tokens too
  (FLOPs assume it has the value verifier's size, as the verifiers stage
  trains every kind on the same backbone).
  """
  if cfg.mode == "pav" and cfg.prover != "bok":
    if prover_verifier is None:
      raise ValueError(f"prover {cfg.prover!r} needs a prover_verifier")
    if isinstance(verifier, mc_scorer.MCScorer):
      raise ValueError("the MC scorer has only the closed-form prover")
  t0 = time.time()
  b, c = cfg.beam_size, cfg.expansions
  per_chunk = max(1, min(len(prompts), cfg.batch_rows // (b * c)))
  out = BeamResult([], np.zeros(0, bool), [], [], Compute())
  finished = []
  for ci, start in enumerate(range(0, len(prompts), per_chunk)):
    chunk = list(prompts[start:start + per_chunk])
    real = len(chunk)
    chunk += [chunk[0]] * (per_chunk - real)
    res = _beam_chunk(sampler, policy_params, verifier, chunk, real, cfg,
                      jax.random.fold_in(rng, ci), start, prover_verifier)
    out.responses += res.responses[:real]
    out.values += res.values[:real]
    out.pools += res.pools[:real]
    finished.append(res.finished[:real])
    out.compute = out.compute + res.compute
  out.finished = np.concatenate(finished)
  out.seconds = time.time() - t0
  return out


def _beam_chunk(sampler, policy_params, verifier: Any, prompts,
                real: int, cfg: BeamConfig, rng, offset: int,
                prover_verifier: Any = None) -> BeamResult:
  """Beam search on one chunk of problems; compute counts `real` ones only.

  `offset` is the index of prompts[0] among all problems (MC grading).
  """
  b, c = cfg.beam_size, cfg.expansions
  p = len(prompts)
  r, m = p * b, p * b * c
  n_w = cfg.max_step_tokens
  plen_E = np.array([len(x) for x in prompts], np.int32)
  real_E = np.arange(p) < real
  compute = Compute(prefilled_tokens=float(plen_E[real_E].sum()))

  mc = isinstance(verifier, mc_scorer.MCScorer)
  k_mc = jax.random.fold_in(rng, 7)
  prob_E = np.minimum(np.arange(p), real - 1) + offset  # pad rows: a real one

  # Prefill the policy and the verifier on the question (one row each).
  pstate = sampler.prefill(policy_params, prompts, rng)
  if mc:
    vcache = None
    v0_E = np.zeros(p, np.float32)
    rows = np.flatnonzero(real_E)
    v0_E[rows] = _mc_values(verifier, sampler, policy_params, pstate, rows,
                            [[]] * len(rows), prob_E[rows], k_mc, 0, p,
                            compute)
  else:
    toks_ET, _ = sampler.pad_prompts(prompts)
    vsize = toks_ET.shape[1] + cfg.max_steps * n_w
    vcache = verifier.init_cache(p, vsize)
    v0_E, vcache = verifier.extend(toks_ET, plen_E, np.zeros(p, np.int32),
                                   vcache)
    compute.verifier_tokens += float(plen_E[real_E].sum())
  use_mu = cfg.mode == "pav" and cfg.prover != "bok"
  if use_mu:
    pcache = prover_verifier.init_cache(p, vsize)
    mu0_E, pcache = prover_verifier.extend(toks_ET, plen_E,
                                           np.zeros(p, np.int32), pcache)
    mu_R = np.repeat(np.asarray(jax.device_get(mu0_E)), b)
    pcache = verifier_cache.fork_rows(pcache, b)
    compute.verifier_tokens += float(plen_E[real_E].sum())
  # B copies of the question per problem: row = problem * B + slot.
  pstate = sampler_lib.fork(pstate, b)
  vcache = None if mc else verifier_cache.fork_rows(vcache, b)
  st = BeamState.init(v0_E, plen_E, b, cfg.max_steps, cfg.max_steps * n_w,
                      cfg.start)
  problem_M = np.arange(m) // (b * c)
  parent_M = np.arange(m) // c

  for h in range(cfg.max_steps):
    if not st.alive_R.any():
      break
    pstate = pstate.replace(finished_B=jnp.asarray(~st.alive_R))
    forked = sampler_lib.fork(pstate, c)
    vc = None if mc else verifier_cache.fork_rows(vcache, c)
    dec = sampler.decode(policy_params, forked, n_w, stop_at_step=True)
    tok_MN, len_M, stop_M = jax.device_get(
        (dec.tokens_BN, dec.length_B, dec.stop_B))
    ok_M = (st.alive_R[parent_M] & (len_M > 0)
            & ((stop_M == sampler_lib.STEP_END) | (stop_M == sampler_lib.EOS)))
    if cfg.distinct:
      ok_M = distinct_mask(st.resp_RL, st.rlen_R, tok_MN, len_M, parent_M,
                           ok_M, b * c)
    live_real_M = st.alive_R[parent_M] & real_E[problem_M]
    compute.generated_tokens += float(len_M[live_real_M].sum())
    if mc:
      q_new_M = _mc_step_values(verifier, sampler, policy_params, dec.state,
                                st, tok_MN, len_M, stop_M,
                                ok_M & real_E[problem_M], parent_M,
                                prob_E[problem_M], k_mc, h + 1, compute)
    else:
      # The verifier reads the new steps, cut to the longest (a multiple of
      # 8, so that it compiles at most max_step_tokens / 8 times).
      w = min(n_w, max(8, -(-int(len_M.max()) // 8) * 8))
      q_new_M, vc = verifier.extend(tok_MN[:, :w], len_M,
                                    np.repeat(st.vpos_R, c), vc)
      q_new_M = np.asarray(jax.device_get(q_new_M))
      compute.verifier_tokens += float(len_M[live_real_M].sum())
    mu_kw = {}
    if use_mu:
      mu_new_M, pc = prover_verifier.extend(
          tok_MN[:, :w], len_M, np.repeat(st.vpos_R, c),
          verifier_cache.fork_rows(pcache, c))
      mu_new_M = np.asarray(jax.device_get(mu_new_M))
      compute.verifier_tokens += float(len_M[live_real_M].sum())
      mu_kw = dict(mu_new_M=jnp.asarray(mu_new_M),
                   mu_parent_M=jnp.asarray(mu_R[parent_M]))
    score_M = beam_scores(jnp.asarray(q_new_M), jnp.asarray(st.q_R[parent_M]),
                          mode=cfg.mode, alpha=cfg.alpha,
                          prover_k=cfg.prover_k, prover=cfg.prover, **mu_kw)
    idx_EB, keep_EB = jax.device_get(select_top(
        score_M.reshape(p, b * c), jnp.asarray(ok_M.reshape(p, b * c)),
        jnp.asarray(b - st.n_done_E), b))
    cand_R = (idx_EB + (np.arange(p) * b * c)[:, None]).reshape(r)
    keep_R = keep_EB.reshape(r)
    eos_R = stop_M[cand_R] == sampler_lib.EOS
    st.advance(h, b, parent_M[cand_R], keep_R, eos_R, len_M[cand_R], tok_MN,
               q_new_M, cand_R)
    rows = jnp.asarray(cand_R)
    pstate = sampler_lib.select_rows(dec.state, rows)
    vcache = None if mc else verifier_cache.take_rows(vc, rows)
    if use_mu:
      pcache = verifier_cache.take_rows(pc, rows)
      mu_R = mu_new_M[cand_R]

  responses, values, fin = [], [], np.zeros(p, bool)
  for pi in range(p):
    trace, vals, fin[pi] = st.answer(pi, b)
    responses.append(trace)
    values.append(vals)
  return BeamResult(responses, fin, values,
                    [[t for _, t, _ in pool] for pool in st.pools], compute)


def _mc_values(scorer, sampler, params, state, rows_A, resp_A, prob_A, key,
               h: int, total_rows: int, compute: Compute) -> np.ndarray:
  """Q̂ of `state` rows `rows_A` by the MC scorer; charges its rollouts."""
  budget = mc_values.Budget()
  q_A = scorer.q_rows(sampler, params, state, rows_A, resp_A, prob_A,
                      mc_values.mc_keys(key, h, rows_A, scorer.n), total_rows,
                      budget)
  mc_values.check_cache_full(budget.cache_full_biased,
                             "MC scorer in beam search",
                             "search.max_steps / search.max_step_tokens "
                             "(the search sampler's cache)")
  compute.prefilled_tokens += float(budget.prefilled_tokens)
  compute.generated_tokens += float(budget.sampled_tokens)
  return q_A


def _mc_step_values(scorer, sampler, params, state, st: BeamState, tok_MN,
                    len_M, stop_M, score_M, parent_M, prob_M, key, h: int,
                    compute: Compute) -> np.ndarray:
  """Q̂ of the candidates `score_M` of step h (rows of `state`).

  A candidate that ends with EOS gets its graded outcome (exact, free); one
  that ends a step gets n rollouts from its cache; the rest get 0 (they are
  not kept: truncated steps, dead parents, padding problems).
  """
  q_M = np.zeros(len(len_M), np.float32)
  resp = {}
  for m in np.flatnonzero(score_M):
    par = parent_M[m]
    resp[m] = (st.resp_RL[par, : st.rlen_R[par]].tolist()
               + tok_MN[m, : len_M[m]].tolist())
  for m in resp:
    if stop_M[m] == sampler_lib.EOS:
      q_M[m] = float(scorer.grade(int(prob_M[m]), resp[m][:-1]) > 0)
  rows = np.array([m for m in resp if stop_M[m] != sampler_lib.EOS], np.int64)
  if len(rows):
    q_M[rows] = _mc_values(scorer, sampler, params, state, rows,
                           [resp[m] for m in rows], prob_M[rows], key, h,
                           len(len_M), compute)
  return q_M
