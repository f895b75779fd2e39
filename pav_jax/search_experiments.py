"""Search experiments: Fig. 4/5a, the Fig. 5b prover sweep and the alpha sweep.

Needs a workdir where the sft, label and verifiers stages have run:

  python -m pav_jax.search_experiments --config=configs/arithmetic.py \\
      --workdir=runs/arithmetic \\
      --out=experiments/2026-11-26_search_arithmetic \\
      --seeds=0,1,2 --ns=2,4,8,16,32,64,128 --num_prompts=64

Parts (--parts, run in this order):
  alpha:  PAV beam at N = --sweep_n on the *validation* split for every alpha
          in --alphas (alpha = 0 is the PRM-Q beam); the best mean accuracy
          picks the alpha used by the other parts (ties: the smaller alpha).
  main:   every method of `search.compare` at every N on the test split, once
          per seed (seeds change the samples, not the problems).
  prover: PAV beam with Bo-K(pi) provers, K in --prover_ks, at --prover_ns.
Writes results.json, tables.md and PNG plots into --out.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import jax
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from pav_jax import search
from pav_jax import sharding

log = logging.getLogger(__name__)

_CONFIG = config_flags.DEFINE_config_file("config", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None,
                                "Pipeline workdir (sft, verifiers).")
_OUT = flags.DEFINE_string("out", None, "Experiment directory for the records.")
_PARTS = flags.DEFINE_string("parts", "alpha,main,prover",
                              "Which parts to run.")
_SEEDS = flags.DEFINE_string("seeds", "0,1,2", "Sampling seeds.")
_NS = flags.DEFINE_string("ns", "2,4,8,16,32,64,128", "N values (main part).")
_NUM_PROMPTS = flags.DEFINE_integer("num_prompts", 64, "Test problems.")
_ALPHAS = flags.DEFINE_string("alphas", "0,0.1,0.2,0.3,0.5,0.7,1.0",
                              "Alpha grid (validation).")
_SWEEP_N = flags.DEFINE_integer("sweep_n", 16, "Beam size of the alpha sweep.")
_SWEEP_PROMPTS = flags.DEFINE_integer("sweep_prompts", 64,
                                      "Validation problems of the alpha sweep.")
_SWEEP_SEEDS = flags.DEFINE_string("sweep_seeds", "0,1", "Seeds of the sweeps.")
_PROVER_KS = flags.DEFINE_string("prover_ks", "1,2,4,8,16,32", "Bo-K provers.")
_PROVER_NS = flags.DEFINE_string("prover_ns", "4,16",
                                  "Beam sizes of the prover sweep.")
_ALPHA = flags.DEFINE_float("alpha", -1.0,
                            "Use this alpha (skips the choice); < 0: sweep's.")

flags.mark_flags_as_required(["config", "workdir", "out"])


def _ints(s: str) -> list[int]:
  return [int(x) for x in s.split(",") if x.strip()]


def _floats(s: str) -> list[float]:
  return [float(x) for x in s.split(",") if x.strip()]


def mean_std(runs: list[dict]) -> dict:
  """Per method: mean and std over seeds of accuracy and FLOPs per N."""
  out = {}
  for name in runs[0]["methods"]:
    acc = np.array([r["methods"][name]["acc"] for r in runs])
    fl = np.array([r["methods"][name]["flops"] for r in runs])
    out[name] = {"acc_mean": acc.mean(0).tolist(),
                 "acc_std": acc.std(0).tolist(),
                 "flops_mean": fl.mean(0).tolist()}
  return out


def chosen_alpha(sweep: dict[float, list[float]]) -> float:
  """The alpha with the best mean accuracy (ties: the smaller alpha)."""
  return max(sorted(sweep), key=lambda a: (np.mean(sweep[a]), -a))


class Runner:
  """Loads the policy and verifiers once; runs `search.compare` variants."""

  def __init__(self, config, workdir: Path, mesh):
    from pav_jax import train_policy
    from pav_jax import train_verifier
    self.config = config
    self.setup = train_policy.make_setup(config, workdir, mesh)
    self.graphdef, self.params = train_policy.load_policy(workdir, self.setup)
    self.verifiers = {n: train_verifier.load_verifier(workdir, self.setup, n)
                      for n in ("orm", "prm_q")}
    self.beam_verifier = search.CachedVerifier(*self.verifiers["prm_q"])
    self.base = search.settings_from_config(config)
    self._samplers = {}

  def examples(self, split: str, num: int):
    return self.setup.task.examples(split, num, seed=self.config.seed)

  def run(self, examples, seed: int, **overrides) -> dict:
    settings = dataclasses.replace(self.base, **overrides)
    key = id(examples)
    if key not in self._samplers:
      self._samplers[key] = search.make_search_sampler(
          self.setup, self.graphdef, self.config, settings, examples)
    return search.compare(
        sampler=self._samplers[key], policy_params=self.params,
        policy_cfg=self.setup.model_cfg, verifiers=self.verifiers,
        task=self.setup.task, tok=self.setup.tok, examples=examples,
        settings=settings, rng=jax.random.key(1000 * seed + 7),
        beam_verifier=self.beam_verifier)


def plot_main(agg: dict, ns: list[int], out: Path, title: str) -> list[str]:
  """Mean ± std over seeds of accuracy vs N and vs compute."""
  curves = {name: {"acc": d["acc_mean"], "std": d["acc_std"],
                   "flops": d["flops_mean"]} for name, d in agg.items()}
  names = ["acc_vs_n.png", "acc_vs_compute.png"]
  search.plot_accuracy(curves, ns, out / names[0], out / names[1], title,
                       ylabel="test accuracy (mean ± std over seeds)")
  return names


def plot_lines(xs, curves: dict[str, tuple[list, list]], xlabel: str,
               path: Path, title: str, logx: bool = True) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for name, (m, s) in curves.items():
    m, s = np.array(m), np.array(s)
    ax.errorbar(xs, m, yerr=s, marker="o", capsize=3, label=name)
  if logx:
    ax.set_xscale("log", base=2)
  ax.set_xlabel(xlabel)
  ax.set_ylabel("accuracy (mean ± std over seeds)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def tables_md(res: dict) -> str:
  """Markdown tables of every part that ran."""
  lines = []
  if "alpha" in res:
    a = res["alpha"]
    lines += [f"### alpha sweep (validation, PAV beam N={a['n']}, "
              f"{a['num_prompts']} problems, seeds {a['seeds']})", "",
              "| alpha | acc mean | acc std |", "|---|---|---|"]
    for al, accs in a["acc"].items():
      lines.append(f"| {al} | {np.mean(accs):.3f} | {np.std(accs):.3f} |")
    lines += ["", f"Chosen alpha: **{a['chosen']}**", ""]
  if "main" in res:
    mres = res["main"]
    ns = mres["ns"]
    lines += [f"### Accuracy vs N (test, {mres['num_prompts']} problems, "
              f"seeds {mres['seeds']}; mean ± std)", "",
              "| method | " + " | ".join(f"N={n}" for n in ns) + " |",
              "|---" * (len(ns) + 1) + "|"]
    for name, d in mres["agg"].items():
      lines.append(f"| {name} | " + " | ".join(
          f"{m:.3f}±{s:.3f}" for m, s in zip(d["acc_mean"], d["acc_std"]))
                   + " |")
    lines += ["", "### FLOPs per problem (mean over seeds)", "",
              "| method | " + " | ".join(f"N={n}" for n in ns) + " |",
              "|---" * (len(ns) + 1) + "|"]
    for name, d in mres["agg"].items():
      lines.append(f"| {name} | " + " | ".join(
          f"{f:.2e}" for f in d["flops_mean"]) + " |")
    lines += ["", "### Summary per seed", "",
              "| seed | " + " | ".join(mres["summaries"][0]) + " |",
              "|---" * (len(mres["summaries"][0]) + 1) + "|"]
    for seed, s in zip(mres["seeds"], mres["summaries"]):
      cells = []
      for v in s.values():
        if isinstance(v, list):
          cells.append(", ".join(search._fmt(x) for x in v))
        else:
          cells.append(search._fmt(v))
      lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    lines.append("")
  if "prover" in res:
    p = res["prover"]
    lines += [f"### Prover sweep (test, PAV beam, alpha={p['alpha']}, "
              f"seeds {p['seeds']}; mean ± std)", "",
              "| prover | " + " | ".join(f"N={n}" for n in p["ns"]) + " |",
              "|---" * (len(p["ns"]) + 1) + "|"]
    for k, d in p["acc"].items():
      lines.append(f"| Bo{k}(pi) | " + " | ".join(
          f"{m:.3f}±{s:.3f}" for m, s in zip(d["mean"], d["std"])) + " |")
    lines.append("")
  return "\n".join(lines)


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO,
                      format="%(asctime)s %(name)s: %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  config = _CONFIG.value
  out = Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  parts = [p.strip() for p in _PARTS.value.split(",") if p.strip()]
  res_path = out / "results.json"
  res = json.loads(res_path.read_text()) if res_path.exists() else {}
  mesh = sharding.make_mesh(dict(config.mesh))
  title = config.task.name
  with jax.set_mesh(mesh):
    runner = Runner(config, Path(_WORKDIR.value), mesh)
    alpha = runner.base.alpha

    if "alpha" in parts:
      t0 = time.time()
      val = runner.examples("validation", _SWEEP_PROMPTS.value)
      seeds = _ints(_SWEEP_SEEDS.value)
      accs = {}
      for a in _floats(_ALPHAS.value):
        accs[a] = [runner.run(val, s, ns=(_SWEEP_N.value,), alpha=a,
                              bon_methods=False, beam_modes=("pav",))
                   ["methods"]["pav_beam"]["acc"][0] for s in seeds]
        log.info("alpha %.2f: %s", a, accs[a])
      res["alpha"] = {"n": _SWEEP_N.value, "seeds": seeds,
                      "num_prompts": len(val), "chosen": chosen_alpha(accs),
                      "acc": {str(a): v for a, v in accs.items()},
                      "seconds": time.time() - t0}
      res_path.write_text(json.dumps(res, indent=2))
    if _ALPHA.value >= 0:
      alpha = _ALPHA.value
    elif "alpha" in res:
      alpha = res["alpha"]["chosen"]

    test = runner.examples(config.search.split, _NUM_PROMPTS.value)
    if "main" in parts:
      t0 = time.time()
      ns = _ints(_NS.value)
      seeds = _ints(_SEEDS.value)
      runs = []
      for s in seeds:
        r = runner.run(test, s, ns=tuple(ns), alpha=alpha)
        r["summary"] = search.summarise(r)
        runs.append(r)
        (out / f"main_seed{s}.json").write_text(json.dumps(r, indent=2))
        log.info("seed %d done: %s", s, r["summary"])
      agg = mean_std(runs)
      res["main"] = {"ns": ns, "seeds": seeds, "alpha": alpha,
                     "num_prompts": len(test), "agg": agg,
                     "summaries": [r["summary"] for r in runs],
                     "seconds": time.time() - t0}
      plot_main(agg, ns, out, f"{title}: search (alpha={alpha})")
      res_path.write_text(json.dumps(res, indent=2))

    if "prover" in parts:
      t0 = time.time()
      ns = _ints(_PROVER_NS.value)
      seeds = _ints(_SWEEP_SEEDS.value)
      acc = {}
      for k in _ints(_PROVER_KS.value):
        a = np.array([runner.run(test, s, ns=tuple(ns), alpha=alpha,
                                 prover_k=float(k), bon_methods=False,
                                 beam_modes=("pav",))
                      ["methods"]["pav_beam"]["acc"] for s in seeds])
        acc[str(k)] = {"mean": a.mean(0).tolist(), "std": a.std(0).tolist(),
                       "runs": a.tolist()}
        log.info("prover Bo%d: %s", k, acc[str(k)]["mean"])
      res["prover"] = {"ns": ns, "seeds": seeds, "alpha": alpha, "acc": acc,
                       "seconds": time.time() - t0}
      ks = _ints(_PROVER_KS.value)
      plot_lines(ks, {f"N={n}": ([acc[str(k)]["mean"][i] for k in ks],
                                 [acc[str(k)]["std"][i] for k in ks])
                      for i, n in enumerate(ns)},
                 "prover Bo-K(pi): K", out / "prover_sweep.png",
                 f"{title}: PAV beam vs prover (alpha={alpha})")
      res_path.write_text(json.dumps(res, indent=2))

    if "main" in res:  # summaries from the per-seed records (current code)
      res["main"]["summaries"] = [
          search.summarise(json.loads((out / f"main_seed{s}.json").read_text()))
          for s in res["main"]["seeds"]]
      res_path.write_text(json.dumps(res, indent=2))
    if "alpha" in res:
      al = res["alpha"]
      keys = list(al["acc"])
      plot_lines([float(k) for k in keys],
                 {f"PAV beam N={al['n']}": (
                     [np.mean(al["acc"][k]) for k in keys],
                     [np.std(al["acc"][k]) for k in keys])},
                 "alpha", out / "alpha_sweep.png",
                 f"{title}: alpha sweep (validation)", logx=False)
  (out / "tables.md").write_text(tables_md(res))
  print(tables_md(res))


if __name__ == "__main__":
  app.run(main)
