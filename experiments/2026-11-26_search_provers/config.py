"""Provers of different strength in search (paper Fig. 5c), issue 13.

The labelling stage of every prover workdir (runs/provers_<name>, a copy of
runs/search_rerun's tokenizer and sft/ with the prover's params):

  E=experiments/2026-11-26_search_provers
  python -m pav_jax.main --config=$E/config.py \\
      --workdir=runs/provers_<name> \\
      --config.label.prover_checkpoint=runs/provers_<name>/prover/params

Everything else (prover pass@1, q_mu training, the searches) is `run.py`
here. Builds on the search rerun's config (configs/demo.py + c.search
keys): the label settings are the demo's (96 train / 32 eval prompts,
n_cov 4, n_mc 8), the ones runs/search_rerun's labels were made with.
"""

import importlib.util
import pathlib

_HERE = pathlib.Path(__file__).resolve().parent


def _load(path: pathlib.Path):
  spec = importlib.util.spec_from_file_location("pav_rerun_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


_RERUN = _load(_HERE.parent / "2026-11-26_search_arithmetic_rerun"
               / "config.py")


def get_config(arg=None):
  del arg
  c = _RERUN.get_config()
  c.stages = "label"
  s = c.search
  s.out_dir = str(_HERE)
  s.num_prompts = 100  # test problems
  s.ns = "4,8"
  # 100 problems x N x C = 3 expansions: 1200 rows hold all of them at
  # N = 4 and half at N = 8 (768 padded the last chunk by 28 problems).
  s.batch_rows = 1200
  s.seeds = ""
  s.sweeps = ""
  with c.unlocked():
    s.beam_ns = "4,8"
    s.beam_distinct = "0"
  return c
