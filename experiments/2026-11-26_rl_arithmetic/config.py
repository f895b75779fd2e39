"""RL arms on arithmetic (experiment 2026-11-26_rl_arithmetic).

  --config=experiments/2026-11-26_rl_arithmetic/config.py:ARM,SEED

ARM: "orm" (alpha 0, no dense term), "pav<alpha>" (PAV-RL, A^mu),
"q<alpha>" (the Q^mu-instead-of-A^mu ablation, App. G), "mc<alpha>"
(verifier-free control: Q^pi from MC continuations of the sft policy),
"vine<alpha>" (VinePPO-style: the same MC values with mu = pi, i.e. the
prover Best-of-1: A^pi instead of A^{Bo4}).
Everything else is the demo pipeline's (configs/demo.py); the workdir must
hold sft/params and verifiers/prm_q/params (runs/rl_strong: the strong
backbone + lp_features verifier, see README.md). run.py gives each arm
--config.rl.out_dir=<workdir>/rl_exp/<ARM>_s<SEED>, so arms share the
workdir and a finished arm is skipped on rerun.

The setting (policy lr 5e-5, 30 iterations) is the one found by the
probes of README.md "Finding a setting where ORM-RL improves".
"""

from pav_jax import defaults

_DEMO = defaults.config_file_module("demo")
ITERATIONS = 30


def arm_settings(arm: str) -> dict:
  if arm == "orm":
    return {"scorer": "none", "alpha": 0.0}
  for prefix, extra in (("pav", {"scorer": "pav", "dense": "advantage"}),
                        ("q", {"scorer": "pav", "dense": "q"}),
                        ("mc", {"scorer": "mc", "dense": "advantage"}),
                        ("vine", {"scorer": "mc", "dense": "advantage"})):
    if arm.startswith(prefix) and arm[len(prefix):]:
      return dict(extra, alpha=float(arm[len(prefix):]))
  raise ValueError(f"unknown arm {arm!r}: orm, pav<alpha>, q<alpha>, "
                   "mc<alpha>, vine<alpha>")


def get_config(arg=None):
  arm, seed = (arg or "orm,0").split(",")
  c = _DEMO.get_config()
  c.stages = "rl"
  r = c.rl
  r.init = "sft"  # RFT on 121 correct seeds overfits here (README)
  r.iterations = ITERATIONS
  r.eval_every = 10
  r.eval_prompts = 256
  r.eval_samples = 4
  r.passn_max = 16
  r.passn_prompts = 64
  # validation only where alpha is chosen (PAV-RL, seed 0)
  r.val_prompts = 256 if arm.startswith("pav") and seed == "0" else 0
  r.ckpt_every = 15
  r.policy_lr = 5e-5  # 1e-4 and up lower pass@1; 2e-5 barely moves it
  r.value_lr = 1e-3
  r.mc_samples = 4
  r.seed = int(seed)
  for k, v in arm_settings(arm).items():
    setattr(r, k, v)
  if arm.startswith("vine"):
    c.pav.prover_k = 1  # mu = pi: MC advantages of the policy itself
  r.out_dir = f"runs/rl_strong/rl_exp/{arm}_s{seed}"
  return c
