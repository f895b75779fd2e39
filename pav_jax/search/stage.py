"""Stage "search": best-of-N vs beam search with compute accounting.

Reads the SFT policy and the "orm" / "prm_q" verifiers from the workdir, and
the trained provers "q_mu" / "a_direct" where the verifiers stage made them.
Without `c.search.seeds` / `c.search.sweeps`: one comparison on the test
split, written to `<out>/results.json` and two plots. With them: the sweeps'
record (`sweeps.py`). `<out>` is `c.search.out_dir` or `<workdir>/search`.
"""

from __future__ import annotations

from pathlib import Path

from pav_jax import run_lib
from pav_jax.search import comparison
from pav_jax.search import report
from pav_jax.search import sweeps


def run_search(run: run_lib.Run) -> dict:
  """The search stage; returns its summary (with "report_md")."""
  config = run.config
  graphdef, params = run.load_policy()
  verifiers = {name: run.load_verifier(name) for name in ("orm", "prm_q")}
  for name in ("q_mu", "a_direct"):  # trained provers, if the stage made them
    if (run.stage_dir("verifiers") / name / "params").exists():
      verifiers[name] = run.load_verifier(name)
  settings = comparison.settings_from_config(config)
  out_dir = (Path(config.search.out_dir) if config.search.out_dir
             else run.stage_dir("search"))
  if sweeps.is_sweep(config):
    runner = sweeps.Runner(run, graphdef, params, verifiers, settings)
    return sweeps.run_sweeps(runner, config, out_dir)
  examples = run.examples(config.search.split, config.search.num_prompts)
  sampler = comparison.make_search_sampler(run, graphdef, settings, examples)
  results = comparison.compare(
      sampler=sampler, policy_params=params, policy_cfg=run.model_cfg,
      verifiers=verifiers, task=run.task, tok=run.tok, examples=examples,
      settings=settings, rng=run.key("search"))
  return report.write_outputs(results, out_dir, run.workdir,
                              title=f"{config.task.name}: search")
