"""The embedded CPU default run by `make demo`: the whole PAV pipeline.

Command:  python -m pav_jax.main --config=configs/demo.py --workdir=runs/demo
Hardware: 2 CPU cores, no accelerator.
Stages:   sft (base policy on arithmetic chains) -> label (MC Q-hat under pi,
          BoK provers) -> verifiers (ORM, PRM-Q, PAV) -> search (best-of-N vs
          beam search, with compute accounting).
Run time: 7 min 19 s measured on 2 idle CPU cores (SFT 2 min, labels 2 min,
          verifiers 1.5 min, search 1.6 min); the target is <= 20 minutes.
Result:   runs/demo/report.md with tables and PNG plots; rerunning resumes.
"""

from pav_jax import defaults

_ARITHMETIC = defaults.config_file_module("arithmetic")


def get_config(arg=None):
  del arg
  c = _ARITHMETIC.get_config()
  c.stages = "sft,label,verifiers,search"
  return c
