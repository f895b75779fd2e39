"""SFT of an imperfect base policy on Countdown (issue 3), then PAV.

Command:
  python -m pav_jax.main --config=configs/countdown.py --workdir=runs/countdown
  (add --config.stages=sft,label,verifiers,search for the whole pipeline)
Hardware: 2 CPU cores, no accelerator.
Task:     reach a target from 3 numbers <= 10 with + - *, one
          combination per line; a locally valid step can lead to a dead end.
Model:    `tiny` preset (829,568 params).
Run time: SFT ~4-5 min on 2 idle cores (400 steps x batch 32), ~1 min
          evaluation.
Measured: pass@1 0.204, pass@4 0.514, pass@16 0.828 (64 test prompts x 16); see
          experiments/2026-11-26_sft_base_policies/README.md.
"""

import ml_collections

from pav_jax import defaults


def get_config(arg=None):
  del arg
  c = defaults.base_config()
  c.stages = "sft"
  c.task.name = "countdown"
  c.task.knobs = ml_collections.ConfigDict(
      {"num_numbers": 3, "max_number": 10, "ops": "+-*", "use_all": True})
  c.sft.steps = 400
  c.sft.batch_size = 32
  c.sft.max_len = 96
  c.sft.ckpt_every = 100
  c.eval.num_prompts = 64
  c.eval.samples_per_prompt = 16
  return c
