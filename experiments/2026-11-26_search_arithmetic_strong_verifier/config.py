"""The search record with the issue-11 verifier (strong LM, log-prob features).

Command (from the repository root; the workdir holds the demo's sft policy,
labels and verifiers, see README.md):

  REC=experiments/2026-11-26_search_arithmetic_strong_verifier
  python -m pav_jax.main --config=$REC/config.py \\
      --workdir=runs/search_strong --config.stages=search

Builds on configs/demo.py (-> configs/arithmetic.py -> defaults.base_config):
the same policy, labels and verifier settings; only `c.search` differs.
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
  s.ns = "2,4,8,16"
  s.seeds = "0"
  s.sweeps = "alpha,prover"
  s.sweep_alphas = "0,0.25,0.5,1.0"
  s.sweep_n = 8
  s.sweep_prompts = 64  # validation problems of the alpha sweep
  s.sweep_seeds = "0"
  s.sweep_prover_ks = "1,2,4,8,16,32"
  s.sweep_prover_ns = "8"
  s.mc_rollouts = 0
  return c
