"""The pipeline's stages, run in order; a finished stage is skipped on rerun.

  sft ──> <workdir>/sft/params ──> label ──> <workdir>/label/{train,eval}
      ──> verifiers ──> <workdir>/verifiers/<kind>/params ──> search

Each stage is a function `run_<stage>(run: run_lib.Run) -> dict` that reads
what earlier stages wrote in the workdir; stages never import one another.
A stage writes `<workdir>/<stage>/DONE.json` (its summary) when it ends, so
rerunning `make demo` resumes at the first unfinished stage, and a stage cut
short resumes from its own checkpoints.
"""

import json
import logging
from pathlib import Path
from typing import Callable

import jax

from pav_jax import labelling
from pav_jax import report
from pav_jax import run_lib
from pav_jax import train_policy
from pav_jax import train_verifier
from pav_jax.search import stage as search_stage

log = logging.getLogger(__name__)

# stage name -> run_<stage>(run) -> summary dict. A summary may carry
# "report_md" (Markdown for the run report).
STAGES: dict[str, Callable[[run_lib.Run], dict]] = {
    "sft": train_policy.run_sft,
    "label": labelling.run_label,
    "verifiers": train_verifier.run_verifiers,
    "search": search_stage.run_search,
}


def done_path(config, workdir: Path, name: str) -> Path:
  """Where stage `name` records that it finished (its summary).

  `<workdir>/<stage>/DONE.json`; a search writing elsewhere
  (`c.search.out_dir`, e.g. an experiment record) marks that directory.
  """
  if name == "search" and config.search.out_dir:
    return Path(config.search.out_dir) / "DONE.json"
  return workdir / name / "DONE.json"


def run(config, workdir: Path, mesh) -> dict:
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  names = [s.strip() for s in config.stages.split(",") if s.strip()]
  unknown = [s for s in names if s not in STAGES]
  if unknown:
    raise ValueError(f"unknown stage(s) {unknown}; known: {list(STAGES)}")
  results, shared = {}, None
  for name in names:
    done = done_path(config, workdir, name)
    if done.exists():
      log.info("stage %s already done (%s): skipping", name, done)
      results[name] = json.loads(done.read_text())
      continue
    log.info("stage %s: starting", name)
    shared = shared or run_lib.make_run(config, workdir, mesh)
    results[name] = STAGES[name](shared)
    if jax.process_index() == 0:
      done.parent.mkdir(parents=True, exist_ok=True)
      done.write_text(json.dumps(results[name], indent=2, default=float))
  if jax.process_index() != 0:
    return results
  path = report.write(workdir, config, results)
  print(f"\nResults: {path}")
  return results
