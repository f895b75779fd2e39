"""Verifier-guided test-time search with compute accounting (paper Sec. 4).

Methods, all on the same base policy pi:

* Best-of-N: N full samples per problem, the one with the highest verifier
  score is the answer. Scores: an ORM (value at the final boundary), or a
  step verifier's per-prefix values aggregated by `last` / `min` / `product`
  ("PAV-as-ORM" is the PRM-Q/PAV model's Q^pi at the last prefix), or the
  PAV effective reward Q^pi + alpha A^mu aggregated by `min`.
* Majority vote over the N extracted answers, and Pass@N with the oracle
  grader (unbiased estimator, `advantages.pass_at_k`).
* Step-level beam search (Snell et al. 2024, as used in the paper): B beams
  per problem, each of the live beams samples C next steps (one step = up to
  the "\\n" delimiter) by resuming its own policy KV cache; every candidate
  (s, a) is scored by the PAV, Q^pi(s,a) + alpha (Q^mu(s,a) - Q^mu(s)) with
  Q^mu = BoK(pi) in closed form (mode "pav"), or by Q^pi alone (mode "q");
  the top B per problem are kept. A candidate that ends with EOS is set
  aside and keeps its slot, so a problem holds at most B finished traces and
  the search ends when all B slots are finished, or after `max_steps`. The
  answer is the finished trace with the highest Q^pi (as in the paper).
  The verifier keeps a KV cache per beam that is forked and gathered with
  the policy's, so each new step is scored by reading only its own tokens.
  The beam is initialised with B copies of the question, so the first
  expansion samples B*C first steps.

Compute accounting (per problem, exact token counts, padding excluded):
  prefilled tokens: prompt tokens read by the policy before sampling;
  generated tokens: tokens sampled by the policy (each costs one forward);
  verifier tokens:  tokens read by the verifier(s).
  FLOPs = 2 * N_policy * (prefilled + generated) + 2 * N_verifier * verifier
where N_policy counts the policy's parameters (embedding once: it is the
output projection) and N_verifier the verifier's non-embedding parameters
plus its head (its embedding is a lookup). Attention over the context
(2 * 2 * layers * T * heads * head_dim per token) is left out: at these
lengths it is < 15% of the total for the tiny model and the same for all
methods per token.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pav_jax import advantages
from pav_jax import config as config_lib
from pav_jax import rollouts
from pav_jax import sampler as sampler_lib
from pav_jax import transformer
from pav_jax import verifier as verifier_lib

log = logging.getLogger(__name__)

AGGREGATIONS = ("last", "min", "product")
BEAM_MODES = ("q", "pav")


# Pure math --------------------------------------------------------------------


def beam_scores(q_new_M: jax.Array, q_parent_M: jax.Array, *, mode: str,
                alpha: float, prover_k: float) -> jax.Array:
  """Scores of candidates (s, a): Q^pi(s,a) (+ alpha A^mu(s,a) for "pav").

  Args:
    q_new_M: predicted Q^pi(s, a) = V^pi of the prefix after the new step.
    q_parent_M: predicted V^pi(s) of the prefix the step extends.
    mode: "q" (PRM-Q beam) or "pav".
    alpha: weight of the prover advantage.
    prover_k: K of the Best-of-K(pi) prover, Q^mu = 1 - (1 - Q^pi)^K.
  """
  if mode == "q":
    return q_new_M
  if mode != "pav":
    raise ValueError(f"beam mode must be one of {BEAM_MODES}, got {mode!r}")
  adv_M = (advantages.bok_q(q_new_M, prover_k)
           - advantages.bok_q(q_parent_M, prover_k))
  return advantages.effective_reward(q_new_M, adv_M, alpha)


def select_top(score_PM: jax.Array, ok_PM: jax.Array, num_keep_P: jax.Array,
               width: int) -> tuple[jax.Array, jax.Array]:
  """Top-`width` candidates per problem among the valid ones.

  Args:
    score_PM: candidate scores, M candidates per problem.
    ok_PM: which candidates may be kept.
    num_keep_P: how many slots each problem still has (<= width).
    width: static number of returned slots (the beam size B).

  Returns:
    (idx_PB, keep_PB): candidate index per slot, best first, and whether the
    slot holds a kept candidate (False past num_keep or out of candidates).
  """
  masked_PM = jnp.where(ok_PM, score_PM, -jnp.inf)
  top_PB, idx_PB = jax.lax.top_k(masked_PM, width)
  rank_PB = jnp.arange(width)[None, :]
  keep_PB = jnp.isfinite(top_PB) & (rank_PB < num_keep_P[:, None])
  return idx_PB, keep_PB


def aggregate_steps(v_BP: jax.Array, mask_BP: jax.Array, how: str) -> jax.Array:
  """One score per trajectory from its prefix values (v_BP[:, 0] = V(s_1)).

  "last": the value of the last prefix (what an ORM reads); "min" / "product"
  over the steps' values v_BP[:, 1:] (V(s_1) alone if there is no step).
  """
  m_BP = mask_BP.astype(bool)
  if how == "last":
    last_B = jnp.maximum(jnp.sum(m_BP, axis=1) - 1, 0)
    return jnp.take_along_axis(v_BP, last_B[:, None], axis=1)[:, 0]
  steps_BP, smask_BP = v_BP[:, 1:], m_BP[:, 1:]
  has_B = jnp.any(smask_BP, axis=1)
  if how == "min":
    agg_B = jnp.min(jnp.where(smask_BP, steps_BP, jnp.inf), axis=1)
  elif how == "product":
    agg_B = jnp.prod(jnp.where(smask_BP, steps_BP, 1.0), axis=1)
  else:
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {how!r}")
  return jnp.where(has_B, agg_B, v_BP[:, 0])


def pav_min_scores(v_BP: jax.Array, mask_BP: jax.Array, alpha: float,
                   prover_k: float) -> jax.Array:
  """min over steps of the effective reward Q^pi + alpha A^mu (PAV as ORM)."""
  m_BP = mask_BP[:, 1:].astype(bool)
  r_BP, _ = advantages.pav_step_rewards(
      v_BP[:, 1:], v_BP[:, 0], m_BP.astype(jnp.float32), alpha, prover_k)
  agg_B = jnp.min(jnp.where(m_BP, r_BP, jnp.inf), axis=1)
  return jnp.where(jnp.any(m_BP, axis=1), agg_B, v_BP[:, 0])


def groups(k: int, n: int) -> int:
  """Disjoint groups of n among k samples (each is one best-of-n run)."""
  if n > k:
    raise ValueError(f"best-of-{n} needs {n} samples per problem, got {k}")
  return k // n


def best_of_n(scores_PK: np.ndarray, correct_PK: np.ndarray, n: int) -> float:
  """Accuracy of best-of-n, averaged over the K // n disjoint groups.

  Ties go to the earlier sample.
  """
  p, k = correct_PK.shape
  g = groups(k, n)
  s_PGN = np.asarray(scores_PK)[:, : g * n].reshape(p, g, n)
  c_PGN = np.asarray(correct_PK)[:, : g * n].reshape(p, g, n)
  pick_PG = np.argmax(s_PGN, axis=2)
  return float(np.take_along_axis(c_PGN, pick_PG[..., None], 2).mean())


def majority_pick(answers: Sequence[str | None]) -> int | None:
  """Index of a sample holding the most frequent answer (None: no answer).

  Ties go to the answer that appears first.
  """
  counts = collections.Counter(a for a in answers if a is not None)
  if not counts:
    return None
  best = max(counts.values())
  for i, a in enumerate(answers):
    if a is not None and counts[a] == best:
      return i
  return None  # unreachable


def majority_vote(answers_PK: Sequence[Sequence[str | None]],
                  correct_PK: np.ndarray, n: int) -> float:
  """Accuracy of majority voting over n samples, averaged over groups."""
  correct_PK = np.asarray(correct_PK)
  p, k = correct_PK.shape
  g = groups(k, n)
  total = 0.0
  for i in range(p):
    for j in range(g):
      pick = majority_pick(answers_PK[i][j * n:(j + 1) * n])
      total += 0.0 if pick is None else float(correct_PK[i, j * n + pick])
  return total / (p * g)


def pass_at_n(correct_PK: np.ndarray, n: int) -> float:
  """Unbiased Pass@n (oracle grader) from K >= n samples per problem."""
  correct_PK = np.asarray(correct_PK)
  p, k = correct_PK.shape
  return float(advantages.pass_at_k(np.full(p, k), correct_PK.sum(1), n).mean())


def interp_log(x: float, xs: Sequence[float],
               ys: Sequence[float]) -> float | None:
  """y at x by linear interpolation in log(x) along a curve (None outside)."""
  xs, ys = np.asarray(xs, float), np.asarray(ys, float)
  order = np.argsort(xs)
  xs, ys = xs[order], ys[order]
  if not xs[0] <= x <= xs[-1]:
    return None
  return float(np.interp(np.log(x), np.log(xs), ys))


def compute_to_match(target_acc: float, flops: Sequence[float],
                     accs: Sequence[float]) -> float | None:
  """Least compute at which a curve reaches target_acc (log-interpolated).

  Walks the curve in order of compute; None if it never gets there.
  """
  pts = sorted(zip(flops, accs))
  for i, (f, a) in enumerate(pts):
    if a >= target_acc:
      if i == 0:
        return float(f)
      f0, a0 = pts[i - 1]
      if a0 >= target_acc or a == a0:
        return float(f)
      t = (target_acc - a0) / (a - a0)
      return float(np.exp(np.log(f0) + t * (np.log(f) - np.log(f0))))
  return None


# Compute accounting -----------------------------------------------------------


@dataclasses.dataclass
class Compute:
  """Token counts of one method (totals or per problem)."""

  prefilled_tokens: float = 0.0
  generated_tokens: float = 0.0
  verifier_tokens: float = 0.0

  def flops(self, policy_params: int, verifier_params: int) -> float:
    policy_tokens = self.prefilled_tokens + self.generated_tokens
    return (2.0 * policy_params * policy_tokens
            + 2.0 * verifier_params * self.verifier_tokens)

  def scaled(self, f: float) -> "Compute":
    return Compute(self.prefilled_tokens * f, self.generated_tokens * f,
                   self.verifier_tokens * f)

  def as_dict(self) -> dict[str, float]:
    return dataclasses.asdict(self)


def policy_flop_params(cfg: config_lib.ModelConfig) -> int:
  """Parameters a policy token touches (tied embedding = output head)."""
  return cfg.num_params()


def verifier_flop_params(cfg: config_lib.ModelConfig) -> int:
  """Parameters a verifier token touches: backbone minus embedding, + head."""
  return cfg.num_params() - cfg.vocab_size * cfg.embed_dim + cfg.embed_dim + 1


def verifier_config(graphdef, params) -> config_lib.ModelConfig:
  """The backbone ModelConfig of a (graphdef, params) verifier."""
  return nnx.merge(graphdef, params).backbone.cfg


# Verifier with a KV cache -----------------------------------------------------


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
  """

  def __init__(self, graphdef, params):
    self.graphdef, self.params = graphdef, params
    self.cfg = verifier_config(graphdef, params)
    self.extend_fn = jax.jit(functools.partial(_extend, graphdef),
                             donate_argnums=(4,))

  def init_cache(self, batch: int, size: int) -> dict:
    return transformer.init_cache(self.cfg, batch, size)

  def extend(self, tokens_BW, length_B, pos0_B, cache):
    """(value_B, cache); the cache is donated."""
    return self.extend_fn(self.params, jnp.asarray(tokens_BW, jnp.int32),
                          jnp.asarray(length_B, jnp.int32),
                          jnp.asarray(pos0_B, jnp.int32), cache)


# Beam search ------------------------------------------------------------------


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


@dataclasses.dataclass
class BeamResult:
  """Per problem: the chosen response, its prefix values and the pool."""

  responses: list[list[int]]  # EOS excluded
  finished: np.ndarray  # bool [P]: the chosen trace ended with EOS
  values: list[list[float]]  # Q^pi of the chosen trace's prefixes, V(s_1) first
  pools: list[list[list[int]]]  # all finished traces (EOS excluded)
  compute: Compute  # totals over the problems
  seconds: float = 0.0


def beam_search(sampler: sampler_lib.Sampler, policy_params,
                verifier: Any, prompts: Sequence[Sequence[int]],
                cfg: BeamConfig, rng: jax.Array) -> BeamResult:
  """Batched step-level beam search over problems (chunked) and beams."""
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
                      jax.random.fold_in(rng, ci))
    out.responses += res.responses[:real]
    out.values += res.values[:real]
    out.pools += res.pools[:real]
    finished.append(res.finished[:real])
    for f in dataclasses.fields(Compute):
      setattr(out.compute, f.name, getattr(out.compute, f.name)
              + getattr(res.compute, f.name))
  out.finished = np.concatenate(finished)
  out.seconds = time.time() - t0
  return out


def _beam_chunk(sampler, policy_params, verifier: Any, prompts,
                real: int, cfg: BeamConfig, rng) -> BeamResult:
  """Beam search on one chunk of problems; compute counts `real` ones only."""
  b, c = cfg.beam_size, cfg.expansions
  p = len(prompts)
  r, m = p * b, p * b * c
  n_w = cfg.max_step_tokens
  max_resp = cfg.max_steps * n_w
  plen_P = np.array([len(x) for x in prompts], np.int32)
  real_P = np.arange(p) < real
  compute = Compute(prefilled_tokens=float(plen_P[real_P].sum()))

  # Prefill the policy and the verifier on the question (one row each).
  pstate = sampler.prefill(policy_params, prompts, rng)
  toks_PT, _ = sampler.pad_prompts(prompts)
  vsize = toks_PT.shape[1] + cfg.max_steps * n_w
  vcache = verifier.init_cache(p, vsize)
  v0_P, vcache = verifier.extend(toks_PT, plen_P, np.zeros(p, np.int32), vcache)
  compute.verifier_tokens += float(plen_P[real_P].sum())
  # B copies of the question per problem: row = problem * B + slot.
  pstate = sampler_lib.fork(pstate, b)
  vcache = fork_rows(vcache, b)
  q_R = np.repeat(np.asarray(v0_P), b)
  alive_R = np.ones(r, bool)
  resp_RL = np.zeros((r, max_resp), np.int32)
  rlen_R = np.zeros(r, np.int32)
  vals_RH = np.zeros((r, cfg.max_steps + 1), np.float32)
  vals_RH[:, 0] = q_R
  nstep_R = np.zeros(r, np.int32)
  vpos_R = np.repeat(plen_P, b)
  pools = [[] for _ in range(p)]  # (final q, tokens, values)
  n_done_P = np.zeros(p, np.int32)
  problem_M = np.arange(m) // (b * c)
  parent_M = np.arange(m) // c

  for h in range(cfg.max_steps):
    if not alive_R.any():
      break
    pstate = pstate.replace(finished_B=jnp.asarray(~alive_R))
    st = sampler_lib.fork(pstate, c)
    vc = fork_rows(vcache, c)
    dec = sampler.decode(policy_params, st, n_w, stop_at_step=True)
    tok_MN, len_M, stop_M = jax.device_get(
        (dec.tokens_BN, dec.length_B, dec.stop_B))
    # The verifier reads the new steps, cut to the longest (a multiple of 8,
    # so that it compiles at most max_step_tokens / 8 times).
    w = min(n_w, max(8, -(-int(len_M.max()) // 8) * 8))
    q_new_M, vc = verifier.extend(tok_MN[:, :w], len_M, np.repeat(vpos_R, c),
                                  vc)
    q_new_M = np.asarray(jax.device_get(q_new_M))
    ok_M = (alive_R[parent_M] & (len_M > 0)
            & ((stop_M == sampler_lib.STEP_END) | (stop_M == sampler_lib.EOS)))
    live_real_M = alive_R[parent_M] & real_P[problem_M]
    compute.generated_tokens += float(len_M[live_real_M].sum())
    compute.verifier_tokens += float(len_M[live_real_M].sum())
    score_M = beam_scores(jnp.asarray(q_new_M), jnp.asarray(q_R[parent_M]),
                          mode=cfg.mode, alpha=cfg.alpha,
                          prover_k=cfg.prover_k)
    idx_PB, keep_PB = jax.device_get(select_top(
        score_M.reshape(p, b * c), jnp.asarray(ok_M.reshape(p, b * c)),
        jnp.asarray(b - n_done_P), b))
    cand_R = (idx_PB + (np.arange(p) * b * c)[:, None]).reshape(r)
    keep_R = keep_PB.reshape(r)
    eos_R = stop_M[cand_R] == sampler_lib.EOS
    # Extend the host copies of the selected traces.
    par_R = parent_M[cand_R]
    new_resp = resp_RL[par_R]
    new_len = rlen_R[par_R]
    step_len = len_M[cand_R]
    for i in np.flatnonzero(keep_R):
      n = step_len[i]
      new_resp[i, new_len[i]:new_len[i] + n] = tok_MN[cand_R[i], :n]
    new_len = new_len + np.where(keep_R, step_len, 0)
    new_vals = vals_RH[par_R]
    new_vals[:, h + 1] = q_new_M[cand_R]
    for i in np.flatnonzero(keep_R & eos_R):
      pi = i // b
      trace = new_resp[i, : new_len[i] - 1].tolist()
      pools[pi].append((float(q_new_M[cand_R[i]]), trace,
                        new_vals[i, : h + 2].tolist()))
      n_done_P[pi] += 1
    resp_RL, rlen_R, vals_RH = new_resp, new_len, new_vals
    nstep_R = nstep_R[par_R] + keep_R
    q_R = q_new_M[cand_R]
    alive_R = keep_R & ~eos_R
    vpos_R = vpos_R[par_R] + step_len
    rows = jnp.asarray(cand_R)
    pstate = sampler_lib.select_rows(dec.state, rows)
    vcache = take_rows(vc, rows)

  responses, values, fin = [], [], np.zeros(p, bool)
  for pi in range(p):
    if pools[pi]:
      best = max(range(len(pools[pi])), key=lambda j: pools[pi][j][0])
      _, trace, vals = pools[pi][best]
      fin[pi] = True
    elif alive_R[pi * b:(pi + 1) * b].any():
      # Nothing finished: the best live (unfinished) beam, graded as is.
      rows = np.arange(pi * b, (pi + 1) * b)
      i = rows[np.argmax(np.where(alive_R[rows], q_R[rows], -np.inf))]
      trace = resp_RL[i, : rlen_R[i]].tolist()
      vals = vals_RH[i, : 1 + nstep_R[i]].tolist()
    else:  # every beam died (an over-long step): the longest partial trace
      rows = np.arange(pi * b, (pi + 1) * b)
      i = rows[np.argmax(rlen_R[rows])]
      trace = resp_RL[i, : rlen_R[i]].tolist()
      vals = vals_RH[i, : 1 + nstep_R[i]].tolist()
    responses.append(trace)
    values.append(vals)
  return BeamResult(responses, fin, values,
                    [[t for _, t, _ in pool] for pool in pools], compute)


# Best-of-N --------------------------------------------------------------------


@dataclasses.dataclass
class Samples:
  """K i.i.d. samples per problem with grades and per-sample token counts."""

  responses: list[list[list[int]]]  # [P][K], EOS excluded
  finished: np.ndarray  # bool [P, K]
  correct: np.ndarray  # float [P, K]
  answers: list[list[str | None]]  # [P][K]
  generated_P_K: np.ndarray  # tokens sampled per sample (EOS included)
  prompt_len_P: np.ndarray


def draw_samples(sampler: sampler_lib.Sampler, policy_params, task, tok,
                 examples, prompts, k: int, rng: jax.Array,
                 max_new_tokens: int, batch_rows: int) -> Samples:
  """K samples per problem (prefill once, fork K), graded by the oracle."""
  # Chunks of whole problems, no bigger than needed (rollouts pads a short
  # last chunk with copies, which would be wasted work).
  per_chunk = max(1, min(len(prompts), batch_rows // k))
  n_chunks = -(-len(prompts) // per_chunk)
  per_chunk = -(-len(prompts) // n_chunks)
  ro = rollouts.sample(sampler, policy_params, prompts, k, rng, max_new_tokens,
                       batch_rows=per_chunk * k)
  texts = [[tok.decode(r) for r in rs] for rs in ro.responses]
  correct = np.array([[task.grade(ex, t) for t in ts]
                      for ex, ts in zip(examples, texts)], np.float64)
  answers = [[task.extract_answer(t) for t in ts] for ts in texts]
  gen = np.array([[len(r) for r in rs] for rs in ro.responses], np.int64)
  gen = gen + ro.finished.astype(np.int64)
  return Samples(ro.responses, ro.finished, correct, answers, gen,
                 np.array([len(x) for x in prompts], np.int64))


def trajectories(prompts, responses, finished, pad_id: int, eos_id: int,
                 multiple: int = 32):
  """Right-padded BOS + prompt + response (+ EOS): (tokens, valid, plen)."""
  rows = [list(pr) + list(r) + ([eos_id] if f else [])
          for pr, r, f in zip(prompts, responses, finished)]
  t = -(-max(len(x) for x in rows) // multiple) * multiple
  tok_BT = np.full((len(rows), t), pad_id, np.int32)
  for i, x in enumerate(rows):
    tok_BT[i, : len(x)] = x
  valid_BT = np.arange(t)[None, :] < np.array([len(x) for x in rows])[:, None]
  return tok_BT, valid_BT, np.array([len(x) for x in prompts], np.int32)


_PREFIX_FNS: dict = {}


def _prefix_values_fn(graphdef, step_id: int, eos_id: int, num_prefixes: int):
  """One jitted `prefix_values` per verifier graph (compiled once per shape)."""
  key = (id(graphdef), step_id, eos_id, num_prefixes)
  if key not in _PREFIX_FNS:
    _PREFIX_FNS[key] = (graphdef, jax.jit(functools.partial(
        verifier_lib.prefix_values, graphdef, step_id=step_id, eos_id=eos_id,
        num_prefixes=num_prefixes)))
  return _PREFIX_FNS[key][1]


def score_samples(graphdef, params, samples: Samples, prompts, *, pad_id: int,
                  step_id: int, eos_id: int, num_prefixes: int = 32,
                  batch_rows: int = 512) -> tuple[np.ndarray, np.ndarray]:
  """Prefix values of every sample in one pass each: (v [P,K,H], mask)."""
  p = len(prompts)
  k = samples.correct.shape[1]
  flat_prompts = [prompts[i] for i in range(p) for _ in range(k)]
  flat_resp = [r for rs in samples.responses for r in rs]
  flat_fin = samples.finished.reshape(-1).tolist()
  tok_BT, valid_BT, plen_B = trajectories(flat_prompts, flat_resp, flat_fin,
                                          pad_id, eos_id)
  fn = _prefix_values_fn(graphdef, step_id, eos_id, num_prefixes)
  n = len(flat_resp)
  rows = min(batch_rows, n)
  vs, ms = [], []
  for s in range(0, n, rows):
    sl = slice(s, min(s + rows, n))
    pad = rows - (sl.stop - sl.start)
    padr = lambda x: np.concatenate([x[sl], np.repeat(x[sl][:1], pad, 0)])
    v, msk = fn(params, padr(tok_BT), padr(valid_BT), padr(plen_B))
    v, msk = jax.device_get((v, msk))
    vs.append(v[: rows - pad])
    ms.append(msk[: rows - pad])
  v = np.concatenate(vs).reshape(p, k, num_prefixes)
  msk = np.concatenate(ms).reshape(p, k, num_prefixes)
  return v, msk


def bon_compute(samples: Samples, n: int, verifiers: int) -> Compute:
  """Mean per-problem compute of one best-of-n run (over disjoint groups).

  Each run prefills its prompt once and samples n responses; each verifier
  reads every sample in full (prompt + response).
  """
  p, k = samples.correct.shape
  g = groups(k, n)
  gen_PG = samples.generated_P_K[:, : g * n].reshape(p, g, n).sum(2)
  gen = float(gen_PG.mean())
  plen = float(samples.prompt_len_P.mean())
  return Compute(prefilled_tokens=plen, generated_tokens=gen,
                 verifier_tokens=verifiers * (n * plen + gen))


# The comparison ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SearchSettings:
  """The knobs of one comparison (from `c.search`)."""

  ns: tuple[int, ...] = (2, 4, 8, 16)
  alpha: float = 0.5
  prover_k: float = 4.0
  expansions: int = 3
  max_steps: int = 8
  max_step_tokens: int = 16
  max_new_tokens: int = 80
  batch_rows: int = 768
  beam_modes: tuple[str, ...] = BEAM_MODES
  bon_methods: bool = True


def settings_from_config(config) -> SearchSettings:
  s = config.search
  return SearchSettings(
      ns=tuple(int(x) for x in str(s.ns).split(",") if x.strip()),
      alpha=float(s.alpha), prover_k=float(s.prover_k),
      expansions=int(s.expansions), max_steps=int(s.max_steps),
      max_step_tokens=int(s.max_step_tokens),
      max_new_tokens=int(config.sample.max_new_tokens),
      batch_rows=int(s.batch_rows),
      beam_modes=tuple(x.strip() for x in str(s.beam_modes).split(",")
                       if x.strip()))


def _grade(task, tok, examples, responses) -> np.ndarray:
  return np.array([task.grade(ex, tok.decode(r))
                   for ex, r in zip(examples, responses)], np.float64)


def compare(*, sampler: sampler_lib.Sampler, policy_params,
            policy_cfg: config_lib.ModelConfig, verifiers: dict[str, Any],
            task, tok, examples, settings: SearchSettings, rng: jax.Array,
            beam_verifier: CachedVerifier | None = None) -> dict:
  """All methods at every N on `examples`; a JSON-serialisable dict.

  `verifiers` maps "orm" and "prm_q" to (graphdef, params); `beam_verifier`
  (default: a new `CachedVerifier` of "prm_q") lets repeated calls share
  its compiled functions. Returns
  {"ns", "methods": {name: {"acc": [...], "compute": [{...}], "flops": [...]}},
   "settings", "seconds"}; compute is per problem.
  """
  t0, c0 = time.time(), time.process_time()
  ns = sorted(settings.ns)
  prompts = [tok.encode(task.prompt(ex), bos=True) for ex in examples]
  n_pol = policy_flop_params(policy_cfg)
  n_ver = {name: verifier_flop_params(verifier_config(*gp))
           for name, gp in verifiers.items()}
  methods: dict[str, dict] = {}

  def add(name, n, acc, comp: Compute, ver: str | None, **extra):
    d = methods.setdefault(name, {"acc": [], "compute": [], "flops": []})
    d["acc"].append(float(acc))
    d["compute"].append(comp.as_dict())
    d["flops"].append(comp.flops(n_pol, n_ver[ver] if ver else 0))
    for key, val in extra.items():
      d.setdefault(key, []).append(val)

  if settings.bon_methods:
    t1 = time.time()
    kmax = ns[-1]
    smp = draw_samples(sampler, policy_params, task, tok, examples, prompts,
                       kmax, jax.random.fold_in(rng, 0),
                       settings.max_new_tokens, settings.batch_rows)
    kw = dict(pad_id=tok.pad_id, step_id=tok.step_id, eos_id=tok.eos_id)
    scores = {}
    if "orm" in verifiers:
      v, msk = score_samples(*verifiers["orm"], smp, prompts, **kw)
      scores["orm_bon"] = ("orm", aggregate_steps(
          v.reshape(-1, v.shape[-1]), msk.reshape(-1, v.shape[-1]), "last"))
    if "prm_q" in verifiers:
      v, msk = score_samples(*verifiers["prm_q"], smp, prompts, **kw)
      v2, m2 = v.reshape(-1, v.shape[-1]), msk.reshape(-1, v.shape[-1])
      scores["pav_orm_bon"] = ("prm_q", aggregate_steps(v2, m2, "last"))
      scores["prm_min_bon"] = ("prm_q", aggregate_steps(v2, m2, "min"))
      scores["prm_product_bon"] = ("prm_q", aggregate_steps(v2, m2, "product"))
      scores["pav_min_bon"] = ("prm_q", pav_min_scores(
          v2, m2, settings.alpha, settings.prover_k))
    p, k = smp.correct.shape
    for n in ns:
      add("pass@N", n, pass_at_n(smp.correct, n), bon_compute(smp, n, 0), None)
      add("majority", n, majority_vote(smp.answers, smp.correct, n),
          bon_compute(smp, n, 0), None)
      for name, (ver, s) in scores.items():
        add(name, n, best_of_n(np.asarray(s).reshape(p, k), smp.correct, n),
            bon_compute(smp, n, 1), ver)
    log.info("best-of-N: %d x %d samples in %.0f s", p, k, time.time() - t1)

  if "prm_q" in verifiers:
    cv = beam_verifier or CachedVerifier(*verifiers["prm_q"])
    for mode in settings.beam_modes:
      name = {"q": "prm_q_beam", "pav": "pav_beam"}[mode]
      for n in ns:
        bcfg = BeamConfig(
            beam_size=n, expansions=settings.expansions,
            max_steps=settings.max_steps,
            max_step_tokens=settings.max_step_tokens, mode=mode,
            alpha=settings.alpha, prover_k=settings.prover_k,
            batch_rows=settings.batch_rows)
        res = beam_search(sampler, policy_params, cv, prompts, bcfg,
                          jax.random.fold_in(rng, 1000 + n))
        corr = _grade(task, tok, examples, res.responses)
        pool_pass = np.mean([
            any(task.grade(ex, tok.decode(t)) for t in pool)
            for ex, pool in zip(examples, res.pools)])
        add(name, n, corr.mean(), res.compute.scaled(1.0 / len(examples)),
            "prm_q", pool_pass=float(pool_pass),
            finished_frac=float(res.finished.mean()), seconds=res.seconds)
        log.info("%s N=%d: acc %.3f in %.1f s", name, n, corr.mean(),
                 res.seconds)
  return {"ns": ns, "methods": methods,
          "settings": dataclasses.asdict(settings),
          "flop_params": {"policy": n_pol, **n_ver},
          "num_prompts": len(examples), "seconds": time.time() - t0,
          "cpu_seconds": time.process_time() - c0}


# Summary, plots, report -------------------------------------------------------


def _curve(m: dict, name: str) -> tuple[list, list]:
  return m[name]["flops"], m[name]["acc"]


def summarise(results: dict) -> dict:
  """Compute-efficiency ratios and accuracy gaps at equal compute."""
  m = results["methods"]
  out = {}
  if "orm_bon" in m and "pav_beam" in m:
    ref_acc, ref_f = m["orm_bon"]["acc"][-1], m["orm_bon"]["flops"][-1]
    need = compute_to_match(ref_acc, *_curve(m, "pav_beam"))
    need = need if ref_acc > 0 else None  # nothing to match
    out["orm_bon_max_acc"] = ref_acc
    out["pav_vs_orm_compute_ratio"] = None if need is None else ref_f / need
    gaps = [None if (a := interp_log(f, m["orm_bon"]["flops"],
                                     m["orm_bon"]["acc"])) is None else pa - a
            for f, pa in zip(m["pav_beam"]["flops"], m["pav_beam"]["acc"])]
    out["pav_vs_orm_acc_gap_at_equal_compute"] = gaps
    out["pav_vs_orm_acc_gap_at_max_n"] = (
        m["pav_beam"]["acc"][-1] - m["orm_bon"]["acc"][-1])
  if "orm_bon" in m and "pav_beam" in m:
    # The paper's reference point (ORM at the largest N) is degenerate when
    # the ORM curve falls with N; also match the ORM's best point.
    i = int(np.argmax(m["orm_bon"]["acc"]))
    ref_acc, ref_f = m["orm_bon"]["acc"][i], m["orm_bon"]["flops"][i]
    need = compute_to_match(ref_acc, *_curve(m, "pav_beam"))
    out["orm_bon_best_acc"] = ref_acc
    out["pav_vs_orm_best_compute_ratio"] = (
        None if need is None or ref_acc <= 0 else ref_f / need)
    out["best_acc_pav_beam_minus_orm_bon"] = (
        max(m["pav_beam"]["acc"]) - ref_acc)
  if "prm_q_beam" in m and "pav_beam" in m:
    ref_acc, ref_f = m["prm_q_beam"]["acc"][-1], m["prm_q_beam"]["flops"][-1]
    need = compute_to_match(ref_acc, *_curve(m, "pav_beam"))
    need = need if ref_acc > 0 else None
    out["pav_vs_prm_q_beam_compute_ratio"] = (
        None if need is None else ref_f / need)
  if "orm_bon" in m and "pav_orm_bon" in m:
    out["pav_orm_vs_orm_at_max_n"] = (
        m["pav_orm_bon"]["acc"][-1] - m["orm_bon"]["acc"][-1])
  return out


PLOT_METHODS = ("pass@N", "majority", "orm_bon", "pav_orm_bon", "prm_q_beam",
                "pav_beam")


def plot_accuracy(curves: dict[str, dict], ns, path_n: Path, path_c: Path,
                  title: str = "", ylabel: str = "accuracy") -> None:
  """Accuracy vs N and vs FLOPs per problem (PNG), one line per method.

  curves: method -> {"acc": [...], "flops": [...], optional "std": [...]}
  (drawn as a band); methods are taken in PLOT_METHODS order.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  for path, xkey in ((path_n, "N"), (path_c, "flops")):
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name in PLOT_METHODS:
      d = curves.get(name)
      if d is None:
        continue
      x = np.asarray(ns if xkey == "N" else d["flops"], float)
      m = np.asarray(d["acc"], float)
      ax.plot(x, m, marker="o", label=name,
              linestyle="--" if name == "pass@N" else "-")
      if d.get("std") is not None:
        sd = np.asarray(d["std"], float)
        ax.fill_between(x, m - sd, m + sd, alpha=0.15)
    ax.set_xscale("log", base=2 if xkey == "N" else 10)
    ax.set_xlabel("N (samples / beam size)" if xkey == "N"
                  else "FLOPs per problem (policy + verifier)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(results: dict, path_n: Path, path_c: Path, title: str = "") -> None:
  """Accuracy vs N and accuracy vs FLOPs per problem of one comparison."""
  plot_accuracy(results["methods"], results["ns"], path_n, path_c, title)


def _fmt(x) -> str:
  if x is None:
    return "n/a"
  return f"{x:.3f}" if isinstance(x, float) else str(x)


def report_md(results: dict, summary: dict, plots: Sequence[str] = ()) -> str:
  """The headline Markdown: method x N accuracy, compute, ratios."""
  ns = results["ns"]
  m = results["methods"]
  lines = ["## Test-time search (held-out test prompts)", "",
           f"{results['num_prompts']} problems; alpha = "
           f"{results['settings']['alpha']}, prover Bo"
           f"{results['settings']['prover_k']:g}(pi), C = "
           f"{results['settings']['expansions']} expansions per beam.", "",
           "| method | " + " | ".join(f"N={n}" for n in ns) + " |",
           "|---" * (len(ns) + 1) + "|"]
  for name, d in m.items():
    lines.append(f"| {name} | " + " | ".join(f"{a:.3f}" for a in d["acc"])
                 + " |")
  lines += ["", "FLOPs per problem (2 x params x tokens, policy + verifier):",
            "", "| method | " + " | ".join(f"N={n}" for n in ns) + " |",
            "|---" * (len(ns) + 1) + "|"]
  for name, d in m.items():
    lines.append(f"| {name} | " + " | ".join(f"{f:.2e}" for f in d["flops"])
                 + " |")
  lines += ["", f"Search time: {results['seconds']:.0f} s wall, "
            f"{results['cpu_seconds']:.0f} s CPU (all threads).", "",
            "| summary | value |", "|---|---|"]
  for key, val in summary.items():
    if isinstance(val, list):
      val = ", ".join(_fmt(v) for v in val)
    lines.append(f"| {key} | {_fmt(val)} |")
  lines.append("")
  lines += [f"![{Path(p).stem}]({p})" for p in plots]
  return "\n".join(lines)


# The stage --------------------------------------------------------------------


def run_search(config, workdir: Path, mesh) -> dict:
  """Stage "search": loads the SFT policy and the "orm"/"prm_q" verifiers."""
  from pav_jax import train_policy
  from pav_jax import train_verifier
  workdir = Path(workdir)
  setup = train_policy.make_setup(config, workdir, mesh)
  graphdef, params = train_policy.load_policy(workdir, setup)
  verifiers = {name: train_verifier.load_verifier(workdir, setup, name)
               for name in ("orm", "prm_q")}
  settings = settings_from_config(config)
  examples = setup.task.examples(config.search.split, config.search.num_prompts,
                                 seed=config.seed)
  sampler = make_search_sampler(setup, graphdef, config, settings, examples)
  results = compare(sampler=sampler, policy_params=params,
                    policy_cfg=setup.model_cfg, verifiers=verifiers,
                    task=setup.task, tok=setup.tok, examples=examples,
                    settings=settings, rng=jax.random.key(config.seed + 7))
  return write_outputs(results, workdir / "search", workdir,
                       title=f"{config.task.name}: search")


def make_search_sampler(setup, graphdef, config, settings: SearchSettings,
                        examples) -> sampler_lib.Sampler:
  """The policy sampler, its cache sized for the prompts plus either
  max_new_tokens (best-of-N) or max_steps full steps (beam search)."""
  from pav_jax import train_policy
  s = train_policy.make_sampler(setup, graphdef, config)
  longest = max(len(setup.tok.encode(setup.task.prompt(ex), bos=True))
                for ex in examples)
  cache = s.bucket(longest) + 1 + max(
      settings.max_new_tokens, settings.max_steps * settings.max_step_tokens)
  return sampler_lib.Sampler(graphdef, setup.model_cfg, cache_size=cache,
                             eos_id=s.eos_id, step_id=s.step_id,
                             pad_id=s.pad_id, sampling=s.sampling)


def write_outputs(results: dict, out_dir: Path, rel_to: Path,
                  title: str = "") -> dict:
  """results.json, the two plots and the summary (with "report_md")."""
  out_dir.mkdir(parents=True, exist_ok=True)
  summary = summarise(results)
  results = dict(results, summary=summary)
  (out_dir / "results.json").write_text(json.dumps(results, indent=2))
  pn, pc = out_dir / "acc_vs_n.png", out_dir / "acc_vs_compute.png"
  plot(results, pn, pc, title)
  rel = [str(x.relative_to(rel_to)) for x in (pn, pc)]
  return {"summary": summary, "seconds": results["seconds"],
          "cpu_seconds": results["cpu_seconds"],
          "acc": {k: v["acc"] for k, v in results["methods"].items()},
          "ns": results["ns"], "report_md": report_md(results, summary, rel)}
