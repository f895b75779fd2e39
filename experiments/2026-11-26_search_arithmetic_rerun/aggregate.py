"""Tables and plots from the main_seed*.json records that exist here.

The search stage writes results.json / tables.md only after its last seed;
this rebuilds them from the per-seed records when a run was stopped early,
and adds the MC-scorer beam records of `mc_beam.py` (mc_<tag>_seed*.json,
a test subset: results.json "mc", a table and mc_acc_vs_*.png):

  python experiments/2026-11-26_search_arithmetic_rerun/aggregate.py
"""

import collections
import json
import pathlib

import numpy as np

from pav_jax.search import report
from pav_jax.search import sweeps

HERE = pathlib.Path(__file__).resolve().parent


def main():
  paths = sorted(HERE.glob("main_seed*.json"))
  runs = [json.loads(p.read_text()) for p in paths]
  seeds = [int(p.stem[len("main_seed"):]) for p in paths]
  res_path = HERE / "results.json"
  res = json.loads(res_path.read_text()) if res_path.exists() else {}
  agg = sweeps.mean_std(runs)
  ns = runs[0]["ns"]
  res["main"] = {"ns": ns, "seeds": seeds,
                 "alpha": runs[0]["settings"]["alpha"],
                 "num_prompts": runs[0]["num_prompts"], "agg": agg,
                 "summaries": [report.summarise(r) for r in runs],
                 "seconds": sum(r["seconds"] for r in runs)}
  report.plot_main(agg, ns, HERE, "arithmetic: search rerun "
                   f"({runs[0]['num_prompts']} problems, seeds {seeds})")
  mc_lines = _mc_part(res)
  res_path.write_text(json.dumps(res, indent=2))
  text = report.tables_md(res) + "\n" + "\n".join(mc_lines)
  (HERE / "tables.md").write_text(text)
  print(text)


def _mc_part(res: dict) -> list[str]:
  """res["mc"] from mc_<tag>_seed<s>.json; its Markdown and plots."""
  groups = collections.defaultdict(list)
  for p in sorted(HERE.glob("mc_*_seed*.json")):
    groups[p.stem.rsplit("_seed", 1)[0][len("mc_"):]].append(p)
  lines, res["mc"] = [], {}
  for tag, paths in sorted(groups.items()):
    runs = [json.loads(p.read_text()) for p in paths]
    seeds = [r["seed"] for r in runs]
    agg = sweeps.mean_std(runs)
    for name, d in agg.items():
      for key in ("pool_pass", "seconds"):
        d[key + "_mean"] = np.mean(
            [r["methods"][name][key] for r in runs], 0).tolist()
    res["mc"][tag] = {
        "seeds": seeds, "num_prompts": runs[0]["num_prompts"],
        "rollouts": runs[0]["settings"]["mc_rollouts"], "agg": agg,
        "wall_seconds": [r["wall_seconds"] for r in runs],
        "cpu_seconds": [r["cpu_seconds_process"] for r in runs]}
    ns = sorted({n for d in agg.values() for n in d["ns"]})
    lines += [f"### MC-scorer beams ({tag}: first {runs[0]['num_prompts']} "
              f"test problems, {res['mc'][tag]['rollouts']} rollouts per "
              f"candidate, seeds {seeds}; mean ± std)", "",
              "| method | " + " | ".join(
                  f"N={n} acc | N={n} FLOPs | N={n} pool pass | N={n} s"
                  for n in ns) + " |",
              "|---" * (4 * len(ns) + 1) + "|"]
    for name, d in agg.items():
      by_n = {n: i for i, n in enumerate(d["ns"])}
      cells = []
      for n in ns:
        i = by_n.get(n)
        cells += (["", "", "", ""] if i is None else [
            f"{d['acc_mean'][i]:.3f}±{d['acc_std'][i]:.3f}",
            f"{d['flops_mean'][i]:.2e}", f"{d['pool_pass_mean'][i]:.3f}",
            f"{d['seconds_mean'][i]:.0f}"])
      lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Wall per seed "
              f"{[round(x) for x in res['mc'][tag]['wall_seconds']]} s, CPU "
              f"{[round(x) for x in res['mc'][tag]['cpu_seconds']]} s "
              "(shared 2 cores).", ""]
    curves = {name: {"acc": d["acc_mean"], "std": d["acc_std"],
                     "flops": d["flops_mean"], "ns": d["ns"]}
              for name, d in agg.items()}
    report.plot_accuracy(
        curves, ns, HERE / f"mc_{tag}_acc_vs_n.png",
        HERE / f"mc_{tag}_acc_vs_compute.png",
        f"MC-scorer vs learned beams ({runs[0]['num_prompts']} problems)",
        ylabel="test accuracy (mean ± std over seeds)")
  return lines


if __name__ == "__main__":
  main()
