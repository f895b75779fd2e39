"""The embedded CPU default: `make demo`.

Command:  python -m pav_jax.main --config=configs/demo.py --workdir=runs/demo
Hardware: 2 CPU cores (no accelerator).
Run time: see README (measured).
Result:   runs/demo/report.md.
"""

from pav_jax import defaults


def get_config(arg=None):
  del arg
  c = defaults.base_config()
  c.task.knobs.num_ops = 4
  c.task.knobs.digits = 1
  c.task.knobs.ops = "+-*"
  c.task.knobs.noprogress_frac = 0.0
  return c
