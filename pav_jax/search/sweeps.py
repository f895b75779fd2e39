"""The search sweeps: Fig. 4/5a over seeds, the alpha sweep, the prover sweep.

Part of the search stage (`python -m pav_jax.main ... --config.stages=search`),
driven by `c.search` (see defaults.py); needs a workdir where the sft, label
and verifiers stages have run. Parts, in this order:

  alpha:  PAV beam at N = sweep_n on the *validation* split for every alpha
          in sweep_alphas (alpha = 0 is the PRM-Q beam); the best mean
          accuracy picks the alpha used by the other parts (ties: the smaller
          alpha), unless use_swept_alpha is False (then c.pav.alpha).
  main:   every method of `comparison.compare` at every N of `ns` on the test
          split, once per seed of `seeds` (seeds change the samples, not the
          problems).
  prover: PAV beam with Bo-K(pi) provers, K in sweep_prover_ks, at
          sweep_prover_ns.
Writes results.json (one entry per part; a rerun keeps the parts it does not
redo), tables.md, main_seed<s>.json and PNG plots into the output directory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np

from pav_jax import run_lib
from pav_jax.search import comparison
from pav_jax.search import report
from pav_jax.search.verifier_cache import CachedVerifier

log = logging.getLogger(__name__)


def _ints(s) -> list[int]:
  return [int(x) for x in str(s).split(",") if x.strip()]


def _floats(s) -> list[float]:
  return [float(x) for x in str(s).split(",") if x.strip()]


def is_sweep(config) -> bool:
  """Whether the search stage runs the sweeps (seeds or sweeps set)."""
  return bool(str(config.search.seeds).strip()
              or str(config.search.sweeps).strip())


def mean_std(runs: list[dict]) -> dict:
  """Per method: mean and std over seeds of accuracy and FLOPs per N."""
  out = {}
  for name in runs[0]["methods"]:
    acc = np.array([r["methods"][name]["acc"] for r in runs])
    fl = np.array([r["methods"][name]["flops"] for r in runs])
    out[name] = {"ns": runs[0]["methods"][name].get("ns"),
                 "acc_mean": acc.mean(0).tolist(),
                 "acc_std": acc.std(0).tolist(),
                 "flops_mean": fl.mean(0).tolist()}
  return out


def chosen_alpha(sweep: dict[float, list[float]]) -> float:
  """The alpha with the best mean accuracy (ties: the smaller alpha)."""
  return max(sorted(sweep), key=lambda a: (np.mean(sweep[a]), -a))


class Runner:
  """Holds the policy and verifiers; runs `compare` variants."""

  def __init__(self, run: run_lib.Run, graphdef, params, verifiers: dict,
               settings: comparison.SearchSettings):
    self.run_, self.graphdef, self.params = run, graphdef, params
    self.verifiers = verifiers
    self.beam_verifier = CachedVerifier(*verifiers["prm_q"])
    self.base = settings
    self._samplers = {}

  def examples(self, split: str, num: int):
    return self.run_.examples(split, num)

  def run(self, examples, seed: int, **overrides) -> dict:
    settings = dataclasses.replace(self.base, **overrides)
    key = id(examples)
    if key not in self._samplers:
      self._samplers[key] = comparison.make_search_sampler(
          self.run_, self.graphdef, settings, examples)
    return comparison.compare(
        sampler=self._samplers[key], policy_params=self.params,
        policy_cfg=self.run_.model_cfg, verifiers=self.verifiers,
        task=self.run_.task, tok=self.run_.tok, examples=examples,
        settings=settings, rng=run_lib.stream_key(1000 * seed, "search"),
        beam_verifier=self.beam_verifier)


def run_sweeps(runner: Runner, config, out: Path) -> dict:
  """The parts `c.search` asks for; returns the stage summary."""
  s = config.search
  out.mkdir(parents=True, exist_ok=True)
  parts = _sweep_names(s.sweeps) + (["main"] if s.main else [])
  res_path = out / "results.json"
  res = json.loads(res_path.read_text()) if res_path.exists() else {}
  title = config.task.name
  alpha = runner.base.alpha
  # The alpha and prover sweeps run one beam variant: distinct prefixes or
  # not (c.search.sweep_distinct, see beam.distinct_mask).
  sw_distinct = bool(s.get("sweep_distinct", False))
  pav_name = "pav_beam_distinct" if sw_distinct else "pav_beam"
  sw = dict(bon_methods=False, beam_modes=("pav",), mc_rollouts=0,
            beam_distinct=(sw_distinct,))

  if "alpha" in parts:
    t0 = time.time()
    val = runner.examples("validation", int(s.sweep_prompts))
    seeds = _ints(s.sweep_seeds)
    accs = {}
    for a in _floats(s.sweep_alphas):
      accs[a] = [runner.run(val, sd, ns=(int(s.sweep_n),),
                            beam_ns=(int(s.sweep_n),), alpha=a, **sw)
                 ["methods"][pav_name]["acc"][0] for sd in seeds]
      log.info("alpha %.2f: %s", a, accs[a])
    res["alpha"] = {"n": int(s.sweep_n), "seeds": seeds,
                    "distinct": sw_distinct,
                    "num_prompts": len(val), "chosen": chosen_alpha(accs),
                    "acc": {str(a): v for a, v in accs.items()},
                    "seconds": time.time() - t0}
    res_path.write_text(json.dumps(res, indent=2))
  if s.use_swept_alpha and "alpha" in res:
    alpha = res["alpha"]["chosen"]

  test = runner.examples(s.split, int(s.num_prompts))
  if "main" in parts:
    t0 = time.time()
    seeds = _ints(s.seeds) or [int(config.seed)]
    runs = []
    for sd in seeds:
      r = runner.run(test, sd, alpha=alpha)
      r["summary"] = report.summarise(r)
      runs.append(r)
      ns = r["ns"]
      (out / f"main_seed{sd}.json").write_text(json.dumps(r, indent=2))
      log.info("seed %d done: %s", sd, r["summary"])
    agg = mean_std(runs)
    res["main"] = {"ns": ns, "seeds": seeds, "alpha": alpha,
                   "num_prompts": len(test), "agg": agg,
                   "summaries": [r["summary"] for r in runs],
                   "seconds": time.time() - t0}
    report.plot_main(agg, ns, out, f"{title}: search (alpha={alpha})")
    res_path.write_text(json.dumps(res, indent=2))

  if "prover" in parts:
    t0 = time.time()
    ns = _ints(s.sweep_prover_ns)
    seeds = _ints(s.sweep_seeds)
    ks = _ints(s.sweep_prover_ks)
    acc = {}
    for k in ks:
      a = np.array([runner.run(test, sd, ns=tuple(ns), beam_ns=tuple(ns),
                               alpha=alpha, prover_k=float(k), **sw)
                    ["methods"][pav_name]["acc"] for sd in seeds])
      acc[str(k)] = {"mean": a.mean(0).tolist(), "std": a.std(0).tolist(),
                     "runs": a.tolist()}
      log.info("prover Bo%d: %s", k, acc[str(k)]["mean"])
    res["prover"] = {"ns": ns, "seeds": seeds, "alpha": alpha, "acc": acc,
                     "distinct": sw_distinct, "num_prompts": len(test),
                     "seconds": time.time() - t0}
    report.plot_lines(ks, {f"N={n}": ([acc[str(k)]["mean"][i] for k in ks],
                                      [acc[str(k)]["std"][i] for k in ks])
                           for i, n in enumerate(ns)},
                      "prover Bo-K(pi): K", out / "prover_sweep.png",
                      f"{title}: PAV beam vs prover (alpha={alpha})")
    res_path.write_text(json.dumps(res, indent=2))

  if "main" in res:  # summaries from the per-seed records (current code)
    res["main"]["summaries"] = [
        report.summarise(json.loads((out / f"main_seed{sd}.json").read_text()))
        for sd in res["main"]["seeds"]]
    res_path.write_text(json.dumps(res, indent=2))
  if "alpha" in res:
    al = res["alpha"]
    keys = list(al["acc"])
    report.plot_lines([float(k) for k in keys],
                      {f"PAV beam N={al['n']}": (
                          [np.mean(al["acc"][k]) for k in keys],
                          [np.std(al["acc"][k]) for k in keys])},
                      "alpha", out / "alpha_sweep.png",
                      f"{title}: alpha sweep (validation)", logx=False)
  tables = report.tables_md(res)
  (out / "tables.md").write_text(tables)
  summary = {"parts": [p for p in ("alpha", "main", "prover") if p in res],
             "alpha": alpha, "out_dir": str(out), "report_md": tables}
  if "main" in res:
    summary["acc"] = {k: v["acc_mean"] for k, v in res["main"]["agg"].items()}
    summary["ns"] = res["main"]["ns"]
  return summary


def _sweep_names(s) -> list[str]:
  names = [x.strip() for x in str(s).split(",") if x.strip()]
  unknown = [x for x in names if x not in ("alpha", "prover")]
  if unknown:
    raise ValueError(f"unknown search sweeps {unknown}; known: alpha, prover")
  return names
