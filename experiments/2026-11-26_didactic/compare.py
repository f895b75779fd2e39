"""Side-by-side figure of the two arms from their results.json files.

  python experiments/2026-11-26_didactic/compare.py

Reads results.json (literal recipe, 50 SFT it.) and matched/results.json
(paper-matched init, 1600 SFT it.) next to this file and writes
fig_compare.png: (a) accuracy vs RL iteration (Q only vs gamma = 10, every
seed thin, mean thick), (b) accuracy averaged over the first T RL iterations
vs gamma (T = the shorter run, so both arms are averaged over the same
window), (c) Pass@N at iteration 100.
"""

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))


def _load(path):
  with open(path) as f:
    r = json.load(f)
  r["curve"] = np.asarray(r["acc_curve_every10"])  # [T/10, P, E]
  return r


def main():
  arms = [("literal (50 SFT it.)", _load(os.path.join(_HERE, "results.json")),
           "--"),
          ("matched (1600 SFT it.)",
           _load(os.path.join(_HERE, "matched", "results.json")), "-")]
  t_common = min(r["curve"].shape[0] for _, r, _ in arms)
  fig, axs = plt.subplots(1, 3, figsize=(15, 4))
  for name, r, ls in arms:
    c = r["curve"]
    t = 10 * np.arange(1, c.shape[0] + 1)
    for run, col in (("Q only", "C0"), ("gamma=10", "C3")):
      p = r["runs"].index(run)
      axs[0].plot(t, c[:, p].mean(-1), ls, color=col, lw=2,
                  label=f"{run}, {name}, {c.shape[-1]} seeds")
      axs[0].plot(t, c[:, p], ls, color=col, lw=0.5, alpha=0.35)
    g = np.asarray(r["gammas"])
    avg_PE = c[:t_common].mean(0)
    col = "k" if ls == "-" else "gray"
    axs[1].errorbar(g, avg_PE[1:].mean(-1), yerr=avg_PE[1:].std(-1), fmt="o",
                    ls=ls, color=col, capsize=3,
                    label=f"effective reward, {name}")
    q = avg_PE[0]
    axs[1].axhline(q.mean(), ls=ls, color="C0",
                   label=f"Q only, {name}: {q.mean():.2f} +- {q.std():.2f}")
    ns = np.asarray(r["pass_ns"])
    for (k, v), cc in zip(r["pass_at"].items(), ("gray", "C0", "C3")):
      v = np.asarray(v)
      axs[2].plot(ns, v.mean(0), "o", ls=ls, color=cc, label=f"{k}, {name}")
  axs[0].set(xlabel="RL iteration", ylabel="accuracy (10-it bins)",
             ylim=(0, 1.02), title="(a) gamma = 10 vs Q only")
  axs[0].set_xscale("log")
  axs[1].set_xscale("log")
  axs[1].set(xlabel="prover gamma",
             ylabel=f"accuracy averaged over RL it. 1..{10 * t_common}",
             title="(b) gamma sweep (mean +- sd over seeds)", ylim=(0, 1.02))
  axs[2].set_xscale("log", base=2)
  axs[2].set(xlabel="N", ylabel="Pass@N", title="(c) Pass@N at RL it. 100",
             ylim=(0, 1.02))
  for ax in axs:
    ax.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(os.path.join(_HERE, "fig_compare.png"), dpi=120)
  print("wrote", os.path.join(_HERE, "fig_compare.png"))


if __name__ == "__main__":
  main()
