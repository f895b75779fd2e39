"""Search record rerun (issue 11): 200 problems, 3 seeds, distinct beams.

Command (from the repository root; runs/search_rerun is a copy of
runs/search_strong's tokenizer, sft, label and verifiers):

  REC=experiments/2026-11-26_search_arithmetic_rerun
  python -m pav_jax.main --config=$REC/config.py \\
      --workdir=runs/search_rerun --config.stages=search

Builds on configs/demo.py; only `c.search` differs. Keys that are not in
defaults.py yet (read with c.search.get by the search code) are added here.
"""

import pathlib

from pav_jax import defaults

_DEMO = defaults.config_file_module("demo")
_HERE = pathlib.Path(__file__).resolve().parent


def get_config(arg=None):
  del arg
  c = _DEMO.get_config()
  c.stages = "search"
  s = c.search
  s.out_dir = str(_HERE)
  s.num_prompts = 200  # test problems of the main part
  s.ns = "2,4,8,16,32,64"  # best-of-N: 64 samples, disjoint subsets
  s.seeds = "0,1,2"
  s.sweeps = "alpha,prover"
  s.sweep_alphas = "0,0.5,1,2,5"
  s.sweep_n = 8
  s.sweep_prompts = 64  # validation problems of the alpha sweep
  s.sweep_seeds = "0"
  s.sweep_prover_ks = "1,2,4,8,16,32"
  s.sweep_prover_ns = "8"
  s.mc_rollouts = 0
  with c.unlocked():
    s.beam_ns = "2,4,8"  # beam sizes of the main part
    s.beam_distinct = "0,1"  # plain beams and distinct-prefix beams
    s.sweep_distinct = True  # the alpha / prover sweeps use distinct beams
    s.mc_ns = "2,4"
    s.mc_bon = False
  return c
