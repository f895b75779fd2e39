"""Search summaries, tables and plots (of one comparison and of the sweeps).

matplotlib is imported on first plot (`_pyplot`), not at the top: it costs
~1 s, and the pipeline imports every stage at start-up.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from pav_jax import plots

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
  for name in ("mc_pav_beam", "wmaj_orm", "logprob_bon", "majority"):
    if name in m and "pav_beam" in m:
      out[f"pav_beam_minus_{name}_at_max_n"] = (
          m["pav_beam"]["acc"][-1] - m[name]["acc"][-1])
  if "orm_bon" in m and "prm_last_bon" in m:
    out["prm_last_vs_orm_at_max_n"] = (
        m["prm_last_bon"]["acc"][-1] - m["orm_bon"]["acc"][-1])
  return out


PLOT_METHODS = ("pass@N", "majority", "logprob_bon", "wmaj_orm", "orm_bon",
                "prm_last_bon", "prm_q_beam", "pav_beam", "mc_q_beam",
                "mc_pav_beam")


_pyplot = plots.pyplot
_save = plots.save_axes


def plot_accuracy(curves: dict[str, dict], ns, path_n: Path, path_c: Path,
                  title: str = "", ylabel: str = "accuracy") -> None:
  """Accuracy vs N and vs FLOPs per problem (PNG), one line per method.

  curves: method -> {"acc": [...], "flops": [...], optional "std": [...]}
  (drawn as a band); methods are taken in PLOT_METHODS order.
  """
  plt = _pyplot()
  for path, xkey in ((path_n, "N"), (path_c, "flops")):
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name in PLOT_METHODS:
      d = curves.get(name)
      if d is None:
        continue
      x = np.asarray((d.get("ns") or ns) if xkey == "N" else d["flops"],
                     float)
      m = np.asarray(d["acc"], float)
      ax.plot(x, m, marker="o", label=name,
              linestyle="--" if name == "pass@N" else "-")
      if d.get("std") is not None:
        sd = np.asarray(d["std"], float)
        ax.fill_between(x, m - sd, m + sd, alpha=0.15)
    ax.set_xscale("log", base=2 if xkey == "N" else 10)
    _save(plt, fig, ax, path,
          "N (samples / beam size)" if xkey == "N"
          else "FLOPs per problem (policy + verifier)", ylabel, title)


def plot(results: dict, path_n: Path, path_c: Path, title: str = "") -> None:
  """Accuracy vs N and accuracy vs FLOPs per problem of one comparison."""
  plot_accuracy(results["methods"], results["ns"], path_n, path_c, title)


def fmt(x) -> str:
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
    lines.append(f"| {name} | " + _cells(ns, d, d["acc"],
                                         lambda a: f"{a:.3f}") + " |")
  lines += ["", "FLOPs per problem (2 x params x tokens, policy + verifier):",
            "", "| method | " + " | ".join(f"N={n}" for n in ns) + " |",
            "|---" * (len(ns) + 1) + "|"]
  for name, d in m.items():
    lines.append(f"| {name} | " + _cells(ns, d, d["flops"],
                                         lambda f: f"{f:.2e}") + " |")
  lines += ["", f"Search time: {results['seconds']:.0f} s wall, "
            f"{results['cpu_seconds']:.0f} s CPU (all threads).", "",
            "| summary | value |", "|---|---|"]
  for key, val in summary.items():
    if isinstance(val, list):
      val = ", ".join(fmt(v) for v in val)
    lines.append(f"| {key} | {fmt(val)} |")
  lines.append("")
  lines += [f"![{Path(p).stem}]({p})" for p in plots]
  return "\n".join(lines)




def write_outputs(results: dict, out_dir: Path, rel_to: Path,
                  title: str = "") -> dict:
  """results.json, the two plots and the summary (with "report_md")."""
  out_dir.mkdir(parents=True, exist_ok=True)
  summary = summarise(results)
  results = dict(results, summary=summary)
  (out_dir / "results.json").write_text(json.dumps(results, indent=2))
  pn, pc = out_dir / "acc_vs_n.png", out_dir / "acc_vs_compute.png"
  plot(results, pn, pc, title)
  rel = [os.path.relpath(x, rel_to) for x in (pn, pc)]
  return {"summary": summary, "seconds": results["seconds"],
          "cpu_seconds": results["cpu_seconds"],
          "acc": {k: v["acc"] for k, v in results["methods"].items()},
          "ns": results["ns"], "report_md": report_md(results, summary, rel)}


# The sweeps' record (search/sweeps.py) ----------------------------------------


def plot_main(agg: dict, ns: list[int], out: Path, title: str) -> list[str]:
  """Mean ± std over seeds of accuracy vs N and vs compute."""
  curves = {name: {"acc": d["acc_mean"], "std": d["acc_std"],
                   "flops": d["flops_mean"], "ns": d.get("ns")}
            for name, d in agg.items()}
  names = ["acc_vs_n.png", "acc_vs_compute.png"]
  plot_accuracy(curves, ns, out / names[0], out / names[1], title,
                ylabel="test accuracy (mean ± std over seeds)")
  return names


def plot_lines(xs, curves: dict[str, tuple[list, list]], xlabel: str,
               path: Path, title: str, logx: bool = True) -> None:
  """Mean ± std lines (error bars) over a swept knob."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for name, (m, s) in curves.items():
    m, s = np.array(m), np.array(s)
    ax.errorbar(xs, m, yerr=s, marker="o", capsize=3, label=name)
  if logx:
    ax.set_xscale("log", base=2)
  _save(plt, fig, ax, path, xlabel, "accuracy (mean ± std over seeds)", title)


def _cells(ns, d: dict, values: list, fmt_one) -> str:
  """One table row's cells over the columns `ns` (a method may lack some)."""
  by_n = dict(zip(d.get("ns") or ns, values))
  return " | ".join(fmt_one(by_n[n]) if n in by_n else "" for n in ns)


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
      lines.append(f"| {name} | " + _cells(
          ns, d, list(zip(d["acc_mean"], d["acc_std"])),
          lambda ms: f"{ms[0]:.3f}±{ms[1]:.3f}") + " |")
    lines += ["", "### FLOPs per problem (mean over seeds)", "",
              "| method | " + " | ".join(f"N={n}" for n in ns) + " |",
              "|---" * (len(ns) + 1) + "|"]
    for name, d in mres["agg"].items():
      lines.append(f"| {name} | " + _cells(
          ns, d, d["flops_mean"], lambda f: f"{f:.2e}") + " |")
    lines += ["", "### Summary per seed", "",
              "| seed | " + " | ".join(mres["summaries"][0]) + " |",
              "|---" * (len(mres["summaries"][0]) + 1) + "|"]
    for seed, s in zip(mres["seeds"], mres["summaries"]):
      cells = []
      for v in s.values():
        if isinstance(v, list):
          cells.append(", ".join(fmt(x) for x in v))
        else:
          cells.append(fmt(v))
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
