"""The comparison: best-of-N methods and beam searches at every N.

`compare` runs every method on the same problems and policy and returns a
JSON-serialisable dict (accuracy, compute and FLOPs per problem per N).
Method names:
  pass@N (oracle), majority, logprob_bon (the policy's mean / sum token
  log-prob, `c.search.logprob_bon`; "" = off), orm_bon, prm_last_bon (the
  PRM-Q/PAV model's Q^pi at the last prefix, used as an ORM), prm_min_bon,
  prm_product_bon, pav_min_bon;
  weighted majority of the same samples, each answer's score summed over its
  samples (`c.search.weighted_majority`): wmaj_orm, wmaj_prm_last,
  wmaj_prm_min, wmaj_pav_min (the effective reward clipped at 0: it can be
  negative);
  beam search with the learned verifier: prm_q_beam, pav_beam;
  with a trained prover in the workdir (Fig. 5c; `q_mu` = a checkpoint
  prover's Q^mu, `a_direct` = a verifier of A^mu): pav_min_bon_<kind> and
  pav_beam_<kind> (Q^pi from prm_q + alpha A^mu from the prover; both
  verifiers' tokens are charged);
  `c.search.beam_distinct` "1": the same beams over distinct prefixes only
  (suffix "_distinct", `beam.distinct_mask`);
  the test-time MC scorer (`c.search.mc_rollouts` > 0, no learned model,
  its rollouts charged as policy compute): mc_min_bon (min over a sample's
  step prefixes of Q̂, `mc_scorer.MCScorer.bon_scores`), mc_q_beam,
  mc_pav_beam.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import jax
import numpy as np

from pav_jax import config as config_lib
from pav_jax import metrics
from pav_jax import run_lib
from pav_jax import sampler as sampler_lib
from pav_jax.search import bon
from pav_jax.search import compute as compute_lib
from pav_jax.search.beam import BEAM_MODES
from pav_jax.search.beam import BeamConfig
from pav_jax.search.beam import beam_search
from pav_jax.search.compute import Compute
from pav_jax.search.mc_scorer import MCScorer
from pav_jax.search.verifier_cache import CachedVerifier

log = logging.getLogger(__name__)

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
  beam_start: str = "beam"  # "beam" (B copies) or "one" (paper): beam.py
  mc_rollouts: int = 0  # > 0: MC-scorer beams with this many rollouts
  logprob_bon: str = "mean"  # "mean" / "sum" / "" (off)
  weighted_majority: bool = True
  beam_ns: tuple[int, ...] = ()  # N of the beams; () = ns
  mc_ns: tuple[int, ...] = ()  # N of the MC-scorer beams; () = beam_ns
  mc_bon: bool = True  # mc_min_bon (MC rollouts from every sample's prefixes)
  # Beam variants: False = every candidate may be kept (the recorded
  # default), True = distinct prefixes only (names get "_distinct").
  beam_distinct: tuple[bool, ...] = (False,)


def _csv(s, cast) -> tuple:
  return tuple(cast(x) for x in str(s).split(",") if x.strip())


def settings_from_config(config) -> SearchSettings:
  """`c.search` plus alpha and prover K from `c.pav`."""
  s = config.search
  pav = run_lib.pav_settings(config)
  return SearchSettings(
      ns=_csv(s.ns, int), alpha=pav.alpha, prover_k=pav.prover_k,
      expansions=int(s.expansions), max_steps=int(s.max_steps),
      max_step_tokens=int(s.max_step_tokens),
      max_new_tokens=int(config.sample.max_new_tokens),
      batch_rows=int(s.batch_rows), beam_modes=_csv(s.beam_modes, str.strip),
      beam_start=str(s.get("beam_start", "beam")),
      mc_rollouts=int(s.get("mc_rollouts", 0)),
      logprob_bon=str(s.get("logprob_bon", "mean")),
      weighted_majority=bool(s.get("weighted_majority", True)),
      beam_ns=_csv(s.get("beam_ns", ""), int),
      mc_ns=_csv(s.get("mc_ns", ""), int),
      mc_bon=bool(s.get("mc_bon", True)),
      beam_distinct=tuple(bool(int(x)) for x in _csv(
          s.get("beam_distinct", "0"), str.strip)))


def make_search_sampler(run: run_lib.Run, graphdef, settings: SearchSettings,
                        examples) -> sampler_lib.Sampler:
  """The policy sampler, its cache sized for the prompts plus either
  max_new_tokens (best-of-N) or max_steps full steps (beam search); with the
  MC scorer, max_steps full steps plus a max_new_tokens rollout."""
  longest = max(len(p) for p in run.encode_prompts(examples))
  bucket = run.sampler(graphdef).bucket(longest)  # no compile: reads buckets
  beam = settings.max_steps * settings.max_step_tokens
  if settings.mc_rollouts > 0:
    beam += settings.max_new_tokens
  cache = bucket + 1 + max(settings.max_new_tokens, beam)
  return run.sampler(graphdef, cache_size=cache)


def _mc_scorer(settings: SearchSettings, task, tok, examples) -> MCScorer:
  return MCScorer(
      grade=lambda i, ids: task.grade(examples[i], tok.decode(ids)),
      n=settings.mc_rollouts, max_new_tokens=settings.max_new_tokens)


def _grade(task, tok, examples, responses) -> np.ndarray:
  return np.array([task.grade(ex, tok.decode(r))
                   for ex, r in zip(examples, responses)], np.float64)


def compare(*, sampler: sampler_lib.Sampler, policy_params,
            policy_cfg: config_lib.ModelConfig, verifiers: dict[str, Any],
            task, tok, examples, settings: SearchSettings, rng: jax.Array,
            beam_verifier: CachedVerifier | None = None) -> dict:
  """All methods at every N on `examples`; a JSON-serialisable dict.

  `verifiers` maps "orm" and "prm_q" (and, if trained, the provers "q_mu"
  and "a_direct": extra rows pav_min_bon_<kind> and pav_beam_<kind>) to
  (graphdef, params); `beam_verifier`
  (default: a new `CachedVerifier` of "prm_q") lets repeated calls share
  its compiled functions. Returns
  {"ns", "methods": {name: {"acc": [...], "compute": [{...}], "flops": [...]}},
   "settings", "seconds"}; compute is per problem.
  """
  t0, c0 = time.time(), time.process_time()
  ns = sorted(settings.ns)
  prompts = [tok.encode(task.prompt(ex), bos=True) for ex in examples]
  n_pol = compute_lib.policy_flop_params(policy_cfg)
  n_ver = {name: compute_lib.verifier_flop_params(
      compute_lib.verifier_config(*gp)) for name, gp in verifiers.items()}
  methods: dict[str, dict] = {}

  def add(name, n, acc, comp: Compute, ver: str | None, **extra):
    d = methods.setdefault(name, {"acc": [], "compute": [], "flops": [],
                                  "ns": []})
    d["ns"].append(int(n))
    d["acc"].append(float(acc))
    d["compute"].append(comp.as_dict())
    d["flops"].append(comp.flops(n_pol, n_ver[ver] if ver else 0))
    for key, val in extra.items():
      d.setdefault(key, []).append(val)

  if settings.bon_methods:
    t1 = time.time()
    kmax = ns[-1]
    smp = bon.draw_samples(sampler, policy_params, task, tok, examples,
                           prompts, kmax, jax.random.fold_in(rng, 0),
                           settings.max_new_tokens, settings.batch_rows)
    kw = dict(pad_id=tok.pad_id, step_id=tok.step_ids, eos_id=tok.eos_id)
    scores = {}
    if "orm" in verifiers:
      v, msk = bon.score_samples(*verifiers["orm"], smp, prompts, **kw)
      scores["orm_bon"] = ("orm", bon.aggregate_steps(
          v.reshape(-1, v.shape[-1]), msk.reshape(-1, v.shape[-1]), "last"))
    if "prm_q" in verifiers:
      v, msk = bon.score_samples(*verifiers["prm_q"], smp, prompts, **kw)
      v2, m2 = v.reshape(-1, v.shape[-1]), msk.reshape(-1, v.shape[-1])
      scores["prm_last_bon"] = ("prm_q", bon.aggregate_steps(v2, m2, "last"))
      scores["prm_min_bon"] = ("prm_q", bon.aggregate_steps(v2, m2, "min"))
      scores["prm_product_bon"] = ("prm_q",
                                   bon.aggregate_steps(v2, m2, "product"))
      scores["pav_min_bon"] = ("prm_q", bon.pav_min_scores(
          v2, m2, settings.alpha, settings.prover_k))
      for prover in ("q_mu", "a_direct"):  # trained provers (Fig. 5c)
        if prover in verifiers:
          mu, _ = bon.score_samples(*verifiers[prover], smp, prompts, **kw)
          mu2 = mu.reshape(-1, mu.shape[-1])
          if prover == "a_direct":
            mu2 = bon.tanh_from_sigmoid(mu2)
          scores[f"pav_min_bon_{prover}"] = (("prm_q", prover),
                                             bon.pav_min_scores(
              v2, m2, settings.alpha, settings.prover_k, mu_BP=mu2,
              prover=prover))
    p, k = smp.correct.shape
    scores = {name: (ver, np.asarray(s).reshape(p, k))
              for name, (ver, s) in scores.items()}
    wmaj = {}
    if settings.weighted_majority:
      for name in ("orm_bon", "prm_last_bon", "prm_min_bon", "pav_min_bon"):
        if name in scores:
          ver, s = scores[name]  # one verifier each
          wmaj["wmaj_" + name[:-len("_bon")]] = (ver, np.maximum(s, 0.0))
    for n in ns:
      add("pass@N", n, metrics.pass_at_n(smp.correct, n),
          bon.bon_compute(smp, n, 0), None)
      add("majority", n, metrics.majority_vote(smp.answers, smp.correct, n),
          bon.bon_compute(smp, n, 0), None)
      if settings.logprob_bon:
        add("logprob_bon", n, metrics.best_of_n(
            bon.logprob_scores(smp, settings.logprob_bon), smp.correct, n),
            bon.bon_compute(smp, n, 0), None)
      for name, (ver, s) in scores.items():
        # A pair (value verifier, trained prover): both read every sample.
        nv, ver = (2, ver[0]) if isinstance(ver, tuple) else (1, ver)
        add(name, n, metrics.best_of_n(s, smp.correct, n),
            bon.bon_compute(smp, n, nv), ver)
      for name, (ver, s) in wmaj.items():
        add(name, n, metrics.weighted_majority_vote(smp.answers, s,
                                                    smp.correct, n),
            bon.bon_compute(smp, n, 1), ver)
    if settings.mc_rollouts > 0 and settings.mc_bon:
      t2 = time.time()
      scorer = _mc_scorer(settings, task, tok, examples)
      mc_s, mc_tok, mc_v1 = scorer.bon_scores(
          sampler, policy_params, prompts, smp.responses, tok.step_ids,
          jax.random.fold_in(rng, 2), batch_prefixes=max(
              1, settings.batch_rows // settings.mc_rollouts))
      for n in ns:
        add("mc_min_bon", n, metrics.best_of_n(mc_s, smp.correct, n),
            bon.mc_bon_compute(smp, n, mc_tok, mc_v1), None)
      log.info("MC best-of-N scores in %.0f s", time.time() - t2)
    log.info("best-of-N: %d x %d samples in %.0f s", p, k, time.time() - t1)

  # (method name, mode, scorer, verifier name for FLOPs, distinct, ns)
  beams = []
  provers = {}  # trained prover verifiers: kind -> CachedVerifier
  beam_ns = sorted(settings.beam_ns) or ns
  for distinct in settings.beam_distinct:
    sfx = "_distinct" if distinct else ""
    if "prm_q" in verifiers:
      cv = beam_verifier or CachedVerifier(*verifiers["prm_q"])
      beams += [({"q": "prm_q_beam", "pav": "pav_beam"}[mode] + sfx, mode, cv,
                 "prm_q", distinct, beam_ns) for mode in settings.beam_modes]
      for prover in ("q_mu", "a_direct"):  # trained provers (Fig. 5c)
        if prover in verifiers and "pav" in settings.beam_modes:
          provers[prover] = provers.get(prover) or CachedVerifier(
              *verifiers[prover],
              output="tanh" if prover == "a_direct" else "sigmoid")
          beams.append((f"pav_beam_{prover}{sfx}", "pav", cv, "prm_q",
                        distinct, beam_ns, prover))
    if settings.mc_rollouts > 0:
      mc = _mc_scorer(settings, task, tok, examples)
      beams += [({"q": "mc_q_beam", "pav": "mc_pav_beam"}[mode] + sfx, mode,
                 mc, None, distinct, sorted(settings.mc_ns) or beam_ns)
                for mode in settings.beam_modes]
  for name, mode, scorer, ver, distinct, bns, *rest in beams:
    prover = rest[0] if rest else "bok"
    for n in bns:
      bcfg = BeamConfig(
          beam_size=n, expansions=settings.expansions,
          max_steps=settings.max_steps,
          max_step_tokens=settings.max_step_tokens, mode=mode,
          alpha=settings.alpha, prover_k=settings.prover_k,
          batch_rows=settings.batch_rows, start=settings.beam_start,
          distinct=distinct, prover=prover)
      res = beam_search(sampler, policy_params, scorer, prompts, bcfg,
                        jax.random.fold_in(rng, 1000 + n),
                        prover_verifier=provers.get(prover))
      corr = _grade(task, tok, examples, res.responses)
      pool_pass = np.mean([
          any(task.grade(ex, tok.decode(t)) for t in pool)
          for ex, pool in zip(examples, res.pools)])
      add(name, n, corr.mean(), res.compute.scaled(1.0 / len(examples)),
          ver, pool_pass=float(pool_pass),
          finished_frac=float(res.finished.mean()), seconds=res.seconds)
      log.info("%s N=%d: acc %.3f in %.1f s", name, n, corr.mean(),
               res.seconds)
  return {"ns": sorted(set(ns) | set(beam_ns)
                      | {n for b in beams for n in b[5]}),
          "methods": methods,
          "settings": dataclasses.asdict(settings),
          "flop_params": {"policy": n_pol, **n_ver},
          "num_prompts": len(examples), "seconds": time.time() - t0,
          "cpu_seconds": time.process_time() - c0}


