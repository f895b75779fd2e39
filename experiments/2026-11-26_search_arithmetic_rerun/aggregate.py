"""Tables and plots from the main_seed*.json records that exist here.

The search stage writes results.json / tables.md only after its last seed;
this rebuilds them from the per-seed records when a run was stopped early:

  python experiments/2026-11-26_search_arithmetic_rerun/aggregate.py
"""

import json
import pathlib

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
  res_path.write_text(json.dumps(res, indent=2))
  (HERE / "tables.md").write_text(report.tables_md(res))
  print(report.tables_md(res))


if __name__ == "__main__":
  main()
