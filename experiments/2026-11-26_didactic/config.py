"""Config of this record: exactly configs/didactic.py:get_config() (full).

  python -m pav_jax.didactic.run \
      --config=experiments/2026-11-26_didactic/config.py \
      --workdir=runs/didactic
"""

from configs import didactic


def get_config():
  return didactic.get_config()
