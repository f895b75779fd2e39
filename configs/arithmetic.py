r"""SFT of an imperfect base policy on arithmetic chains (issue 3), then PAV.

Command:
  python -m pav_jax.main --config=configs/arithmetic.py \
      --workdir=runs/arithmetic
  (add --config.stages=sft,label,verifiers,search for the whole pipeline)
Hardware: 2 CPU cores, no accelerator.
Task:     5 operations on a start value, one-digit operands, + - *,
          values <= 99.
Model:    `tiny` preset (4 layers, D=128, GQA 4q/2kv, window 64): 829,568
          params.
Run time: SFT ~4-5 min on 2 idle cores (400 steps x batch 32, ~0.5 s/step),
          plus ~1 min evaluation (64 test prompts x 16 samples).
Measured: pass@1 0.410, pass@4 0.696, pass@16 0.891 (64 test prompts x 16); see
          experiments/2026-11-26_sft_base_policies/README.md.
"""

from pav_jax import defaults


def get_config(arg=None):
  del arg
  c = defaults.base_config()
  c.stages = "sft"
  c.task.name = "arithmetic"
  c.task.knobs.num_ops = 5
  c.task.knobs.digits = 1
  c.task.knobs.ops = "+-*"
  c.task.knobs.noprogress_frac = 0.0
  c.sft.steps = 400
  c.sft.batch_size = 32
  c.sft.max_len = 96
  c.sft.ckpt_every = 100
  c.eval.num_prompts = 64
  c.eval.samples_per_prompt = 16
  return c
