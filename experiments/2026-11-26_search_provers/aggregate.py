"""Tables, plot and results.json of the provers record from its JSON files.

  python experiments/2026-11-26_search_provers/aggregate.py
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
PROVERS = ("weak", "same", "strong")
BOK = ("bo1", "bo4", "bo16")


def _mean_std(xs):
  xs = [x for x in xs if x is not None]
  if not xs:
    return None, None
  return float(np.mean(xs)), float(np.std(xs))


def _fmt(m, s, n_seeds):
  if m is None:
    return ""
  return f"{m:.3f}" + (f"±{s:.3f}" if n_seeds > 1 else "")


def _pct(x):
  return "" if x is None else f"{100 * x:.1f}%"


def main() -> None:
  by_seed = {}
  for p in sorted(HERE.glob("search_seed*.json")):  # parts of a seed merge
    r = json.loads(p.read_text())
    m = by_seed.setdefault(r["seed"], dict(r, bon={}, beam={}, seconds={}))
    m["bon"].update(r["bon"])
    m["beam"].update(r["beam"])
    m["seconds"][p.name] = r["seconds"]
  runs = [by_seed[s] for s in sorted(by_seed)]
  passk = json.loads((HERE / "passk.json").read_text())
  qmu = {}
  for name in PROVERS:
    p = pathlib.Path(f"runs/provers_{name}/verifiers/q_mu/summary.json")
    if p.exists():
      qmu[name] = json.loads(p.read_text())
  ns = runs[0]["ns"]
  # A Bo-K(pi) prover solves a problem when one of K samples of pi does:
  # its pass@1 is pi's pass@K (the sft stage's 128 test prompts x 16).
  sft = json.loads(pathlib.Path("runs/search_rerun/sft/eval.json")
                   .read_text())["sft"]
  bok_pass = {b: sft[f"pass@{b[2:]}"] for b in BOK}
  seeds = [r["seed"] for r in runs]
  rows = []
  pass1 = {"weak": passk["ckpt300"]["pass@1"], "same": passk["pi"]["pass@1"],
           "strong": passk["strong"]["pass@1"]}
  order = [("prm_q", "PRM-Q beam (no prover)", None)]
  order += [(f"pav_{b}", f"PAV, Bo{b[2:]}(π) closed form", None) for b in BOK]
  order += [(f"pav_{p}", f"PAV, checkpoint μ = {p}", p) for p in PROVERS]
  table = {}
  for key, label, prover in order:
    bon_key = {"prm_q": "prm_q_min"}.get(key, key.replace("pav_", "pav_min_"))
    bon = [r["bon"].get(bon_key) for r in runs if r.get("bon")]
    beam = [r["beam"].get(key) for r in runs]
    if any(b is None for b in beam):
      if not any(bon):
        continue
      beam = [{"acc": [None] * len(ns), "changed": [None] * len(ns),
               "pool_pass": [None] * len(ns)}]  # best-of-N only
    entry = {"label": label, "beam_acc": [], "changed": [], "bon_acc": [],
             "pool_pass": []}
    for i, _ in enumerate(ns):
      entry["beam_acc"].append(_mean_std([b["acc"][i] for b in beam]))
      entry["changed"].append(_mean_std([b["changed"][i] for b in beam]))
      entry["pool_pass"].append(_mean_std([b["pool_pass"][i] for b in beam]))
      entry["bon_acc"].append(_mean_std([b[i] for b in bon if b])
                              if bon else (None, None))
    if prover:
      entry["prover_pass@1"] = pass1[prover]
    table[key] = entry
  k = len(runs)
  head = ("| verifier / prover | prover pass@1 | "
          + " | ".join(f"beam N={n}" for n in ns) + " | "
          + " | ".join(f"changed top-B N={n}" for n in ns) + " | "
          + " | ".join(f"BoN (min) N={n}" for n in ns) + " |")
  rows.append(head)
  rows.append("|" + "---|" * (2 + 3 * len(ns)))
  for key, e in table.items():
    pp = e.get("prover_pass@1")
    if key.startswith("pav_bo"):
      pp_s = f"{bok_pass[key[4:]]:.3f}"
    else:
      pp_s = f"{pp:.3f}" if pp is not None else "—"
    rows.append(
        f"| {e['label']} | {pp_s} | "
        + " | ".join(_fmt(*a, k) for a in e["beam_acc"]) + " | "
        + " | ".join(_pct(a[0]) for a in e["changed"]) + " | "
        + " | ".join(_fmt(*a, k) for a in e["bon_acc"]) + " |")
  extra = []
  for r in runs:
    if r.get("bon"):
      extra.append(f"seed {r['seed']}: Pass@N "
                   + ", ".join(f"N={n} {a:.3f}"
                               for n, a in zip(ns, r["bon"]["pass@N"]))
                   + "; ORM BoN "
                   + ", ".join(f"N={n} {a:.3f}"
                               for n, a in zip(ns, r["bon"]["orm"])))
  q_rows = ["| prover | pass@1 (128 test × 8) | "
            "mean Q̂^μ (train prefixes) | "
            "mean Q̂^π | corr(Q̂^μ, Q̂^π) | steps with Q̂^μ rising | "
            "q_mu eval corr / MSE vs MC Q̂^μ | outcome AUROC |",
            "|---|---|---|---|---|---|---|---|"]
  for name, s in qmu.items():
    q_rows.append(
        f"| {name} | {pass1[name]:.3f} | {s['train_mean_q_mu']:.3f} | "
        f"{s['train_mean_q_pi']:.3f} | {s['train_corr_mu_pi']:.3f} | "
        f"{s['train_frac_adv_mu_pos']:.3f} (π: "
        f"{s['train_frac_adv_pi_pos']:.3f}) | {s['eval_corr_q_mu']:.3f} / "
        f"{s['eval_mse_q_mu']:.4f} | {s['eval_auroc_outcome']:.3f} |")
  md = ("## Search with provers (test, %d problems, seeds %s; mean%s)\n\n"
        % (runs[0]["num_prompts"], ",".join(map(str, seeds)),
           " ± std" if k > 1 else "")
        + "\n".join(rows) + "\n\n" + "\n".join(extra)
        + "\n\n## Provers and their labels\n\n" + "\n".join(q_rows) + "\n")
  (HERE / "tables.md").write_text(md)
  print(md)
  out = {"ns": ns, "seeds": seeds, "table": table, "passk": passk,
         "q_mu": qmu, "runs": runs}
  (HERE / "results.json").write_text(json.dumps(out, indent=2))
  orm = [_mean_std([r["bon"]["orm"][i] for r in runs if r.get("bon")])[0]
         for i, _ in enumerate(ns)]
  _plot(table, ns, pass1, bok_pass, passk["pi"]["pass@1"], orm,
        runs[0]["num_prompts"])


def _plot(table, ns, pass1, bok_pass, q_pi, orm, num) -> None:
  """Beam accuracy vs prover pass@1; bars: seed std, or with one seed the
  binomial s.e. over the `num` problems."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, len(ns), figsize=(5 * len(ns), 4),
                           squeeze=False)
  for ax, (i, n) in zip(axes[0], enumerate(ns)):
    for keys, strength, style, lab in (
        ([f"pav_{p}" for p in PROVERS], [pass1[p] for p in PROVERS], "o-",
         "PAV beam, checkpoint μ"),
        ([f"pav_{b}" for b in BOK],
         [bok_pass[b] for b in BOK], "s--",
         "PAV beam, Bo-K(π) μ"),
    ):
      pts = [(x, table[key]["beam_acc"][i]) for key, x in zip(keys, strength)
             if key in table]
      pts = [p for p in pts if p[1][0] is not None]
      if pts:
        ax.errorbar([p[0] for p in pts], [p[1][0] for p in pts],
                    yerr=[p[1][1] or np.sqrt(p[1][0] * (1 - p[1][0]) / num)
                          for p in pts], fmt=style, label=lab,
                    capsize=3)
    if "prm_q" in table:
      ax.axhline(table["prm_q"]["beam_acc"][i][0], color="gray", ls=":",
                 label="PRM-Q beam (no prover)")
    if orm[i] is not None:
      ax.axhline(orm[i], color="r", ls="-.", label="ORM best-of-N")
    ax.axvline(q_pi, color="k", lw=0.5)
    ax.set_xlabel("prover strength: pass@1 of μ (Bo-K(π): π's pass@K)")
    ax.set_ylabel("beam accuracy")
    ax.set_title(f"N = {n}")
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(HERE / "acc_vs_prover.png", dpi=120)


if __name__ == "__main__":
  main()
