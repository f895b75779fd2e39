"""Config of the paper-matched arm: configs/didactic.py:get_config('matched').

  python -m pav_jax.didactic.calibrate_sft \
      --config=experiments/2026-11-26_didactic/matched/config.py \
      --workdir=runs/didactic_calib
  python -m pav_jax.didactic.run \
      --config=experiments/2026-11-26_didactic/matched/config.py \
      --workdir=runs/didactic_matched
"""

from configs import didactic


def get_config():
  return didactic.get_config("matched")
