"""The pipeline's stages, run in order; a finished stage is skipped on rerun.

A stage writes `<workdir>/<stage>/DONE.json` (its summary) when it ends, so
rerunning `make demo` resumes at the first unfinished stage, and a stage cut
short resumes from its own checkpoints.
"""

import importlib
import json
import logging
from pathlib import Path

import jax

from pav_jax import report

log = logging.getLogger(__name__)

# stage name -> "module:function(config, workdir, mesh) -> summary dict".
# A summary may carry "report_md" (Markdown for the run report).
STAGES = {
    "sft": "pav_jax.train_policy:run_sft",
    "label": "pav_jax.labelling:run_label",
    "verifiers": "pav_jax.train_verifier:run_verifiers",
    "search": "pav_jax.search:run_search",
}


def _resolve(name: str):
  module, fn = STAGES[name].split(":")
  return getattr(importlib.import_module(module), fn)


def run(config, workdir: Path, mesh) -> dict:
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  names = [s.strip() for s in config.stages.split(",") if s.strip()]
  unknown = [s for s in names if s not in STAGES]
  if unknown:
    raise ValueError(f"unknown stage(s) {unknown}; known: {list(STAGES)}")
  results = {}
  for name in names:
    done = workdir / name / "DONE.json"
    if done.exists():
      log.info("stage %s already done (%s): skipping", name, done)
      results[name] = json.loads(done.read_text())
      continue
    log.info("stage %s: starting", name)
    results[name] = _resolve(name)(config, workdir, mesh)
    if jax.process_index() == 0:
      done.parent.mkdir(parents=True, exist_ok=True)
      done.write_text(json.dumps(results[name], indent=2, default=float))
  if jax.process_index() != 0:
    return results
  path = report.write(workdir, config, results)
  print(f"\nResults: {path}")
  return results
