"""Driver of the RL record: the arms in sequence, then tables and plots.

  python experiments/2026-11-26_rl_arithmetic/run.py [--workdir=runs/rl_strong]
      [--alphas=1,3,5] [--seeds=0,1,2] [--mc_seeds=0] [--aggregate_only]

1. alpha on validation: PAV-RL seed 0 for each alpha of --alphas; the
   alpha with the best final validation pass@1 is chosen;
2. main arms on the same prompts, keys and budgets: PAV-RL (chosen alpha),
   ORM-RL (alpha 0), the Q^mu ablation (chosen alpha), each for --seeds;
   the MC control (chosen alpha) for --mc_seeds;
3. results.json, tables.md, acc_vs_iter.png, acc_vs_tokens.png,
   passn.png in this directory.

Each arm is one `python -m pav_jax.main` call (printed); a finished arm
(DONE.json in its out_dir) is skipped, so rerunning after a better verifier
(delete <workdir>/rl_exp) redoes all arms with it.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from pav_jax import report  # noqa: E402


def run_arm(workdir: str, arm: str, seed: int) -> dict:
  out = Path(workdir) / "rl_exp" / f"{arm}_s{seed}"
  cmd = [sys.executable, "-m", "pav_jax.main",
         f"--config={HERE.relative_to(ROOT)}/config.py:{arm},{seed}",
         f"--workdir={workdir}", f"--config.rl.out_dir={out}"]
  if not (out / "DONE.json").exists():
    # The init's evaluations (same policy, prompts and keys in every arm)
    # are computed once and copied into the other arms' out_dirs.
    for name in ("eval_init.json", "passn_init.json"):
      done = sorted((Path(workdir) / "rl_exp").glob(f"*/{name}"))
      if done and not (out / name).exists():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(done[0], out / name)
    print("$", " ".join(cmd[1:]), flush=True)
    t0 = time.time()
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(
        Path(workdir).absolute() / "jax_cache"))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
      raise RuntimeError(f"arm {arm} seed {seed} failed:\n"
                         + proc.stderr[-3000:])
    print(f"  {arm} s{seed}: {time.time() - t0:.0f} s", flush=True)
  return json.loads((out / "DONE.json").read_text())


def iters_to_reach(curve: dict, target: float) -> float | None:
  """First iteration (linear interpolation) where pass@1 >= target."""
  xs, ys = curve["iteration"], curve["pass@1"]
  for i, y in enumerate(ys):
    if y >= target:
      if i == 0:
        return float(xs[0])
      x0, y0 = xs[i - 1], ys[i - 1]
      return float(x0 + (target - y0) / (y - y0) * (xs[i] - x0))
  return None


def mean_curve(runs: list[dict]) -> dict:
  n = min(len(r["curve"]["pass@1"]) for r in runs)
  return {"iteration": runs[0]["curve"]["iteration"][:n],
          "pass@1": list(np.mean([r["curve"]["pass@1"][:n] for r in runs],
                                 axis=0))}


def aggregate(results: dict, chosen: float, alpha_val: dict) -> str:
  names = {"ORM-RL (alpha 0)": "orm", f"PAV-RL (alpha {chosen:g})":
           f"pav{chosen:g}", f"Q^mu ablation (alpha {chosen:g})":
           f"q{chosen:g}", f"MC control (alpha {chosen:g})": f"mc{chosen:g}",
           f"VinePPO-style mu = pi MC (alpha {chosen:g})": f"vine{chosen:g}"}
  for key in sorted(results):  # other alphas of the validation grid
    if key.startswith("pav") and key != f"pav{chosen:g}":
      names[f"PAV-RL (alpha {key[3:]})"] = key
  arms = {label: results[key] for label, key in names.items()
          if results.get(key)}
  full = max(r["curve"]["iteration"][-1] for v in arms.values() for r in v)
  arms = {(label if v[0]["curve"]["iteration"][-1] == full else
           f"{label}, {v[0]['curve']['iteration'][-1]} it."): v
          for label, v in arms.items()}
  report.plot_rl_curves({k: [r["curve"] for r in v] for k, v in arms.items()},
                        HERE / "acc_vs_iter.png", HERE / "acc_vs_tokens.png",
                        title="arithmetic: held-out pass@1 during RL")
  lines = ["### alpha on validation (PAV-RL seed 0, final pass@1, "
           "256 validation prompts x 4 samples)", "",
           "| alpha | validation pass@1 |", "|---|---|"]
  lines += [f"| {a:g} | {v:.3f} |" for a, v in alpha_val.items()]
  lines += ["", f"Chosen alpha: **{chosen:g}**", "",
            "### Final held-out (test) pass@1, mean ± std over seeds", "",
            "| arm | seeds | init | final | final - init | train acc "
            "(last 10 it.) |", "|---|---|---|---|---|---|"]
  for label, runs in arms.items():
    f = [r["final_pass@1"] for r in runs]
    i = runs[0]["eval_init"]["pass@1"]
    tr = [r["train_accuracy_last10"] for r in runs]
    lines.append(f"| {label} | {len(runs)} | {i:.3f} | {np.mean(f):.3f} ± "
                 f"{np.std(f):.3f} | {np.mean(f) - i:+.3f} | "
                 f"{np.mean(tr):.3f} |")
  orm = arms.get("ORM-RL (alpha 0)")
  pav = arms.get(f"PAV-RL (alpha {chosen:g})")
  summary = {}
  if orm and pav:
    target = float(np.mean([r["final_pass@1"] for r in orm]))
    init = orm[0]["eval_init"]["pass@1"]
    total = orm[0]["curve"]["iteration"][-1]
    gap = float(np.mean([r["final_pass@1"] for r in pav]) - target)
    if target <= init:  # ORM-RL ended below its start: no ratio to take
      reach, ratio, why = None, None, (
          f"undefined: ORM-RL's final accuracy is not above the init's "
          f"({init:.3f})")
    else:
      reach = iters_to_reach(mean_curve(pav), target)
      ratio = total / reach if reach else None
      why = (f"PAV-RL reaches it at iteration {reach:.1f} of {total}: "
             f"{ratio:.2f}x" if reach else
             f"PAV-RL never reaches it within {total} iterations (ratio "
             "< 1, not measurable)")
    # The other direction: when does ORM-RL reach PAV-RL's final accuracy?
    pav_final = target + gap
    back = iters_to_reach(mean_curve(orm), pav_final)
    why += (f"; ORM-RL reaches PAV-RL's final {pav_final:.3f} at iteration "
            f"{back:.1f}" if back is not None else
            f"; ORM-RL never reaches PAV-RL's final {pav_final:.3f}")
    summary = {"orm_final": target, "pav_iters_to_orm_final": reach,
               "sample_efficiency": ratio, "final_gap": gap,
               "orm_iters_to_pav_final": back}
    lines += ["", f"ORM-RL final (mean) {target:.3f}. Sample-efficiency "
              f"ratio {why}. Final gap PAV - ORM {gap:+.3f} (paper: 5-6x, "
              "+7 points)."]
  ns = list(next(iter(arms.values()))[0]["pass@n"]["init"])
  lines += ["", "### Pass@N of the final policies (test, 64 prompts x 16 "
            "samples; mean over seeds)", "",
            "| policy | " + " | ".join(f"N={n}" for n in ns) + " |",
            "|---" * (len(ns) + 1) + "|"]
  first = next(iter(arms.values()))[0]
  lines.append("| init (SFT) | " + " | ".join(
      f"{first['pass@n']['init'][n]:.3f}" for n in ns) + " |")
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5.5, 4))
  ax.plot([int(n) for n in ns], [first["pass@n"]["init"][n] for n in ns],
          marker="o", label="init (SFT)", color="gray")
  for label, runs in arms.items():
    m = [np.mean([r["pass@n"]["final"][n] for r in runs]) for n in ns]
    s = [np.std([r["pass@n"]["final"][n] for r in runs]) for n in ns]
    lines.append(f"| {label} | " + " | ".join(
        f"{a:.3f}±{b:.3f}" for a, b in zip(m, s)) + " |")
    ax.errorbar([int(n) for n in ns], m, yerr=s, marker="o", capsize=3,
                label=label)
  ax.set_xscale("log", base=2)
  ax.set_xlabel("N")
  ax.set_ylabel("pass@N (test)")
  ax.set_title("Pass@N of the final RL policies (Fig. 8a analogue)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(HERE / "passn.png", dpi=110)
  plt.close(fig)
  t = [r["mean_iteration_s"] for runs in arms.values() for r in runs]
  lines += ["", "Mean seconds per iteration (all runs): " + ", ".join(
      f"{k[:-2]} {np.mean([x[k] for x in t]):.2f}" for k in t[0])]
  (HERE / "results.json").write_text(json.dumps(
      {"chosen_alpha": chosen, "alpha_validation": alpha_val,
       "summary": summary,
       "arms": {k: [{kk: vv for kk, vv in r.items() if kk != "report_md"}
                    for r in v] for k, v in arms.items()}},
      indent=1, default=float))
  text = "\n".join(lines) + "\n"
  (HERE / "tables.md").write_text(text)
  return text


def aggregate_finished(workdir: str, alphas, seeds) -> None:
  """Tables and plots from the arms whose DONE.json exists."""
  root = Path(workdir) / "rl_exp"
  def load(arm, s):
    return json.loads((root / f"{arm}_s{s}" / "DONE.json").read_text())

  def done(arm, s):
    return (root / f"{arm}_s{s}" / "DONE.json").exists()

  alpha_val = {a: load(f"pav{a:g}", seeds[0])["final_validation_pass@1"]
               for a in alphas if done(f"pav{a:g}", seeds[0])}
  chosen = max(alpha_val, key=lambda a: (alpha_val[a], -a))
  results = {}
  keys = [f"pav{chosen:g}", "orm", f"q{chosen:g}", f"mc{chosen:g}",
          f"vine{chosen:g}"]
  keys += [f"pav{a:g}" for a in alphas if a != chosen]
  for key in keys:
    for s in seeds:
      if done(key, s):
        results.setdefault(key, []).append(load(key, s))
  print(aggregate(results, chosen, alpha_val))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", default="runs/rl_strong")
  ap.add_argument("--alphas", default="1,3,5")
  ap.add_argument("--seeds", default="0,1,2")
  ap.add_argument("--mc_seeds", default="")
  ap.add_argument("--vine_seeds", default="",
                  help="seeds of the VinePPO-style mu = pi MC arm")
  ap.add_argument("--arms", default="pav,orm,q", help="main arms to run")
  ap.add_argument("--aggregate_only", action="store_true",
                  help="tables/plots from the finished arms; run nothing")
  args = ap.parse_args()
  alphas = [float(a) for a in args.alphas.split(",")]
  seeds = [int(s) for s in args.seeds.split(",")]
  results, alpha_val = {}, {}
  if args.aggregate_only:
    return aggregate_finished(args.workdir, alphas, seeds)
  for a in alphas:
    r = run_arm(args.workdir, f"pav{a:g}", seeds[0])
    results.setdefault(f"pav{a:g}", []).append(r)
    alpha_val[a] = r["final_validation_pass@1"]
  chosen = max(alpha_val, key=lambda a: (alpha_val[a], -a))
  print(f"alpha on validation: {alpha_val} -> {chosen:g}", flush=True)
  results = {f"pav{chosen:g}": results[f"pav{chosen:g}"]}
  plan = []
  for s in seeds:
    for arm in args.arms.split(","):
      key = {"pav": f"pav{chosen:g}", "orm": "orm",
             "q": f"q{chosen:g}"}[arm]
      if not (arm == "pav" and s == seeds[0]):
        plan.append((key, s))
  plan += [(f"mc{chosen:g}", int(s)) for s in args.mc_seeds.split(",") if s]
  plan += [(f"vine{chosen:g}", int(s))
           for s in args.vine_seeds.split(",") if s]
  for key, s in plan:
    results.setdefault(key, []).append(run_arm(args.workdir, key, s))
    print(aggregate(results, chosen, alpha_val), flush=True)
  print(aggregate(results, chosen, alpha_val))


if __name__ == "__main__":
  main()
