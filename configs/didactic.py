"""Didactic planted-subsequence experiment (Setlur et al. 2024, Sec. 3.3).

Record: experiments/2026-11-26_didactic/README.md. Hardware: 2-core CPU, no
accelerator. Two arms, identical except for the SFT length:

Literal recipe (50 SFT iterations, 3 seeds, 1000 RL iterations), 494 s
measured at load average 3.5-5 (342 s of it the MC-Q^pi side check):

  python -m pav_jax.didactic.run --config=configs/didactic.py \
      --workdir=runs/didactic

  Expected: SFT success rate ~2e-5 (Pass@256 ~0); every run is bimodal
  (solves to ~0.98 or stays at exactly 0); 1/3 seeds solve with gamma = 10,
  2/3 with Q only; no gamma dependence beyond seed noise.

Paper-matched init ('matched': 1600 SFT iterations on the same 3,200 mu_5
samples, 12 seeds, 500 RL iterations, gammas 1..100). The SFT length comes
from calibrate_sft.py (criterion: seed-mean Pass@256 of the SFT policy in
the paper's Fig. 3c range [0.05, 0.25], closest to 0.15), 327 s; the run
587 s. Both measured at load average 12-15 from other jobs on the 2 cores;
estimated 1.5-2.5 and 2.5-4 min on 2 idle cores:

  python -m pav_jax.didactic.calibrate_sft \
      --config=configs/didactic.py:matched --workdir=runs/didactic_calib
  python -m pav_jax.didactic.run --config=configs/didactic.py:matched \
      --workdir=runs/didactic_matched

  Expected: SFT Pass@256 ~0.13-0.15 (p ~5e-4); effective reward gamma = 10
  reaches 90% batch accuracy in 52-62 iterations on 12/12 seeds (final
  ~0.97); Q only in ~127 (median; 11/12 seeds by 500); RL-averaged accuracy
  increases monotonically with gamma (0.86 at gamma = 1 to 0.915 at 50, Q
  only 0.71 +- 0.19): no [8, 15] band.

Quick variant (< 1 min, smoke test of the whole pipeline):

  python -m pav_jax.didactic.run --config=configs/didactic.py:quick \
      --workdir=runs/didactic_quick
"""

import ml_collections

# Set from calibrate_sft.py's output (see the record), before any RL run.
SFT_ITERS_MATCHED = 1600


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Full config; `arg='quick'` gives the < 1 min smoke variant."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.n_seeds = 3

  c.env = ml_collections.ConfigDict()
  c.env.target = (3, 6, 0, 3, 5)
  c.env.length = 10
  c.env.vocab = 15  # Tokens 0..14; 14 is EOS.

  c.hidden = (128, 128, 128)

  c.sft = ml_collections.ConfigDict()
  c.sft.gamma = 5.0  # Data prover mu_5.
  c.sft.n_samples = 3200
  c.sft.iters = 50
  c.sft.batch_size = 64
  c.sft.learning_rate = 1e-3

  c.rl = ml_collections.ConfigDict()
  c.rl.iters = 1000
  c.rl.batch_size = 64
  c.rl.learning_rate = 1e-3
  c.rl.alpha = 1.0
  c.rl.q_estimator = "return"  # Sampled return: unbiased one-rollout MC.
  # Paper sweep 1..17, plus three stronger provers to probe "too strong".
  c.rl.gammas = tuple(float(g) for g in range(1, 18)) + (25.0, 50.0, 100.0)
  c.rl.log_every = 50  # Iterations per jitted chunk.

  c.eval = ml_collections.ConfigDict()
  c.eval.gamma = 10.0  # Prover of panels (a) and (c).
  c.eval.pass_iter = 100  # Pass@N snapshot (paper: iteration 100).
  c.eval.pass_samples = 16384
  c.eval.pass_ns = (2, 4, 8, 16, 32, 64, 128, 256)
  c.eval.theory_samples = 65536

  # Side check: the same (a) runs with Q^pi from n_mc fresh rollouts.
  c.mc_check = ml_collections.ConfigDict()
  c.mc_check.iters = 100
  c.mc_check.n_mc = 100
  c.mc_check.batch_size = 64

  # SFT-length calibration (pav_jax/didactic/calibrate_sft.py).
  c.calib = ml_collections.ConfigDict()
  c.calib.grid = (50, 100, 200, 400, 600, 800, 1000, 1200, 1600, 2000, 2400,
                  3200)
  c.calib.chunk = 50
  c.calib.samples = 16384  # Per seed, per grid length.
  c.calib.target = (0.05, 0.25)  # Paper Fig. 3c: Pass@256 of the SFT init.
  c.calib.stop_above = 0.5

  if arg == "matched":
    # Paper-matched init: SFT_ITERS_MATCHED steps on the same 3,200 mu_5
    # samples, chosen by calibrate_sft.py's Pass@256 criterion alone.
    c.n_seeds = 12
    c.sft.iters = SFT_ITERS_MATCHED
    c.rl.iters = 500
    c.rl.gammas = (1.0, 3.0, 5.0, 8.0, 10.0, 12.0, 15.0, 17.0, 25.0, 50.0,
                   100.0)
    c.mc_check.iters = 0  # Side check only in the literal arm (342 s).
  elif arg == "quick":
    c.n_seeds = 2
    c.rl.iters = 100
    c.rl.gammas = (5.0, 10.0, 15.0)
    c.rl.log_every = 25
    c.eval.pass_iter = 50
    c.eval.pass_samples = 2048
    c.eval.theory_samples = 4096
    c.mc_check.iters = 4
    c.mc_check.n_mc = 8
  elif arg:
    raise ValueError(f"unknown config arg {arg!r}")
  return c
