"""The pipeline's stages, run in order; a finished stage is skipped on rerun.

  sft ──> <workdir>/sft/params ──> label ──> <workdir>/label/{train,eval}
      ──> verifiers ──> <workdir>/verifiers/<kind>/params ──> search
      ──> rl (init from sft/params + label/train, scored by prm_q)

Each stage is a function `run_<stage>(run: run_lib.Run) -> dict` that reads
what earlier stages wrote in the workdir; stages never import one another.
A stage writes `<workdir>/<stage>/DONE.json` (its summary) when it ends, so
rerunning `make demo` resumes at the first unfinished stage, and a stage cut
short resumes from its own checkpoints.
"""

import json
import logging
import time
from pathlib import Path
from typing import Callable

import jax

from pav_jax import defaults
from pav_jax import identity
from pav_jax import labelling
from pav_jax import report
from pav_jax import rl_stage
from pav_jax import run_lib
from pav_jax import train_lib
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
    "rl": rl_stage.run_rl,
}


def done_path(config, workdir: Path, name: str) -> Path:
  """Where stage `name` records that it finished (its summary).

  `<workdir>/<stage>/DONE.json`; a search writing elsewhere
  (`c.search.out_dir`, e.g. an experiment record) marks that directory.
  """
  if name == "search" and config.search.out_dir:
    return Path(config.search.out_dir) / "DONE.json"
  if name == "rl" and config.rl.out_dir:
    return Path(config.rl.out_dir) / "DONE.json"
  return workdir / name / "DONE.json"


# The config sections each stage's outputs depend on, on top of those of the
# stages before it (a stage's identity includes its inputs' identities).
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "sft": ("seed", "task", "tokenizer", "model", "init_checkpoint", "sft",
            "rft"),
    "label": ("label", "sample"),
    "verifiers": ("verifier", "pav"),
    "search": ("search", "eval"),
    "rl": ("rl",),
}
# Order in which identities accumulate (search and rl both build on
# verifiers; neither depends on the other).
_UPSTREAM = {"sft": (), "label": ("sft",), "verifiers": ("sft", "label"),
             "search": ("sft", "label", "verifiers"),
             "rl": ("sft", "label", "verifiers")}
# Outputs later stages read: a DONE.json whose outputs are gone is stale.
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "sft": ("sft/params",),
    "label": ("label/train/manifest.json", "label/eval/manifest.json"),
    "verifiers": ("verifiers/orm/params", "verifiers/prm_q/params"),
}


def tokenizer_file(config, workdir: Path) -> Path:
  return Path(config.tokenizer.path or workdir / "tokenizer.model")


def stage_identity(config, workdir: Path, name: str) -> dict:
  """What stage `name`'s outputs are made from: its config sections and
  those of the stages it reads, plus the tokenizer's content hash."""
  cfg = config.to_dict()
  sections = [s for up in (*_UPSTREAM.get(name, ()), name)
              for s in STAGE_SECTIONS.get(up, ())]
  ident = {s: cfg[s] for s in sections if s in cfg}
  tok = tokenizer_file(config, workdir)
  ident["tokenizer_sha256"] = (identity.file_sha256(tok) if tok.exists()
                               else None)
  return identity.normalize(ident)


def _check_done(config, workdir: Path, name: str, done: Path,
                record: dict) -> None:
  stored = record.get("identity")
  if stored is None:
    log.warning("%s records no identity (made by an older pav_jax): "
                "trusting it", done)
    return
  identity.check(
      stored, stage_identity(config, workdir, name),
      what=f"finished stage {name!r} ({done})",
      how_to_fix=(f"restore the old settings, use a new --workdir, or delete "
                  f"{done.parent} (and the stages after it) to redo it"),
      ignore=train_lib.DEFAULT_IDENTITY_IGNORE,
      defaults=defaults.base_config().to_dict())


def _missing_outputs(workdir: Path, name: str) -> list[str]:
  return [p for p in STAGE_OUTPUTS.get(name, ())
          if not (workdir / p).exists()]


def run(config, workdir: Path, mesh) -> dict:
  """Runs the configured stages in order, skipping finished ones.

  A finished stage is skipped only if its recorded identity (config sections
  and tokenizer hash) equals this run's; otherwise the run stops listing the
  differing keys. A finished stage whose outputs were deleted is redone, and
  once a stage is (re)done, a later stage that finished before it is stale:
  the run stops rather than mixing old and new outputs.
  """
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  names = [s.strip() for s in config.stages.split(",") if s.strip()]
  unknown = [s for s in names if s not in STAGES]
  if unknown:
    raise ValueError(f"unknown stage(s) {unknown}; known: {list(STAGES)}")
  results, shared, redone = {}, None, []
  for name in names:
    done = done_path(config, workdir, name)
    if done.exists():
      missing = _missing_outputs(workdir, name)
      upstream_redone = [r for r in redone if r in _UPSTREAM.get(name, ())]
      if upstream_redone and not missing:
        raise RuntimeError(
            f"stage {name!r} finished ({done}) before stage(s) "
            f"{upstream_redone} it reads were "
            f"redone in this run, so its outputs are stale: delete "
            f"{done.parent} and rerun")
      if missing:
        stale = done.with_name(f"DONE.stale-{time.strftime('%Y%m%d-%H%M%S')}"
                               ".json")
        log.warning("stage %s: outputs %s are missing, so %s is stale: "
                    "moved to %s; redoing the stage", name, missing, done,
                    stale)
        if jax.process_index() == 0:
          done.rename(stale)
      else:
        record = json.loads(done.read_text())
        _check_done(config, workdir, name, done, record)
        log.info("stage %s already done (%s): skipping", name, done)
        results[name] = record
        continue
    log.info("stage %s: starting", name)
    if shared is None:
      shared = run_lib.make_run(config, workdir, mesh)
      run_lib.check_setup(shared, names)
    results[name] = STAGES[name](shared)
    redone.append(name)
    if jax.process_index() == 0:
      done.parent.mkdir(parents=True, exist_ok=True)
      record = dict(results[name],
                    identity=stage_identity(config, workdir, name))
      train_lib.write_json_atomic(done, record)
  if jax.process_index() != 0:
    return results
  try:
    path = report.write(workdir, config, results)
  except OSError as e:  # e.g. a finished, read-only workdir
    log.warning("could not write the report in %s: %s", workdir, e)
    return results
  print(f"\nResults: {path}")
  return results
