"""Choose the SFT length by the initial policy's Pass@256 (no RL is run).

  python -m pav_jax.didactic.calibrate_sft \
      --config=configs/didactic.py:matched --workdir=runs/didactic_calib

Trains the SFT policies of every seed exactly as `run.py` does (same init,
same 3,200 mu_gamma samples, same mini-batch order; `rl.run_sft` is called in
chunks of `cfg.calib.chunk` steps, which is bit-identical to one call), and
at every length in `cfg.calib.grid` measures, per seed, the success count in
`cfg.calib.samples` temperature-1 samples, the unbiased Pass@N (N = 256 and
the other eval Ns) and the NLL on the training data and on fresh mu_gamma
samples. `cfg.sft.iters` of the config is ignored here.

Criterion (stated before any RL run): among the grid lengths whose seed-mean
Pass@256 lies in [lo, hi] = cfg.calib.target (the range the paper's Fig. 3c
shows for the initial SFT policy), the one whose seed-mean Pass@256 is
closest to the middle (lo + hi) / 2.
Writes calib.json, calib.md and calib_pass256.png to the workdir.
"""

import json
import os
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from ml_collections import config_flags

from pav_jax import advantages
from pav_jax.didactic import env as env_lib
from pav_jax.didactic import policy
from pav_jax.didactic import rl

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")


def main(argv):
  del argv
  cfg, workdir = _CONFIG.value, _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  t0 = time.time()
  env = env_lib.Env(tuple(cfg.env.target), cfg.env.length, cfg.env.vocab)
  rng = jax.random.key(cfg.seed)
  # Exactly the per-seed keys of run.py.
  rng_seeds = jax.random.split(jax.random.fold_in(rng, 0), cfg.n_seeds)
  graphdef, _ = policy.init_params(env, tuple(cfg.hidden), rng)
  tx = optax.adam(cfg.sft.learning_rate)
  probs_KV = jnp.asarray(env_lib.prover_probs(env, cfg.sft.gamma))

  def init(rng):
    _, params = policy.init_params(env, tuple(cfg.hidden),
                                   jax.random.fold_in(rng, 0))
    data_NL = env_lib.sample_prover(env, probs_KV, jax.random.fold_in(rng, 1),
                                    cfg.sft.n_samples)
    return rl.init_state(params, tx), data_NL

  state_S, data_S = jax.jit(jax.vmap(init))(rng_seeds)
  chunk = cfg.calib.chunk

  @jax.jit
  def train(state_S, data_S, it0):
    def one(state, data, rng):
      return rl.run_sft(graphdef, state, data, jax.random.fold_in(rng, 2),
                        env=env, tx=tx, batch_size=cfg.sft.batch_size,
                        n_iters=chunk, it0=it0)
    return jax.vmap(one)(state_S, data_S, rng_seeds)

  held_NL = env_lib.sample_prover(env, probs_KV, jax.random.key(12345),
                                  cfg.sft.n_samples)
  n = cfg.calib.samples

  @jax.jit
  def evaluate(params_S, rng):
    def one(params, data_NL, r):
      c = rl.success_counts(graphdef, params, env, r, n)
      return (c, rl.sft_loss(graphdef, params, env, data_NL),
              rl.sft_loss(graphdef, params, env, held_NL))
    rngs = jax.random.split(rng, cfg.n_seeds)
    return jax.vmap(one)(params_S, data_S, rngs)

  grid = sorted(int(g) for g in cfg.calib.grid)
  assert all(g % chunk == 0 for g in grid)
  lo, hi = cfg.calib.target
  rows, it = [], 0
  for g in grid:
    while it < g:
      state_S, _ = train(state_S, data_S, jnp.int32(it))
      it += chunk
    c_S, nll_S, held_S = jax.device_get(
        evaluate(state_S.params, jax.random.fold_in(jax.random.key(777), g)))
    pass_SN = np.stack([advantages.pass_at_k(n, c_S, k)
                        for k in cfg.eval.pass_ns], -1)
    p256 = pass_SN[:, list(cfg.eval.pass_ns).index(256)]
    rows.append({
        "sft_iters": g, "epochs": g * cfg.sft.batch_size / cfg.sft.n_samples,
        "counts": c_S.tolist(), "p": (c_S / n).tolist(),
        "pass256": p256.tolist(), "pass256_mean": float(p256.mean()),
        "pass256_sd": float(p256.std()),
        "pass_at": pass_SN.tolist(),
        "nll_train": float(nll_S.mean()), "nll_heldout": float(held_S.mean()),
        "seconds": time.time() - t0,
    })
    print(f"SFT {g:5d} it: successes {c_S.sum()}/{n * cfg.n_seeds}, "
          f"Pass@256 {p256.mean():.3f} +- {p256.std():.3f}, NLL train "
          f"{nll_S.mean():.3f} held-out {held_S.mean():.3f} "
          f"({time.time() - t0:.0f} s)", flush=True)
    if p256.mean() > cfg.calib.stop_above:
      break
  mid = 0.5 * (lo + hi)
  ok = [r for r in rows if lo <= r["pass256_mean"] <= hi]
  chosen = (min(ok, key=lambda r: abs(r["pass256_mean"] - mid))["sft_iters"]
            if ok else None)
  out = {"criterion": f"grid length with seed-mean Pass@256 in [{lo}, {hi}] "
                      f"closest to {mid:g}", "chosen_sft_iters": chosen,
         "n_seeds": cfg.n_seeds, "samples_per_seed": n, "rows": rows,
         "wall_s": time.time() - t0}
  with open(os.path.join(workdir, "calib.json"), "w") as f:
    json.dump(out, f, indent=1)
  lines = [f"Criterion: {out['criterion']}. Chosen: {chosen} SFT iterations.",
           f"{cfg.n_seeds} seeds x {n} samples per seed; wall "
           f"{out['wall_s']:.0f} s.", "",
           "| SFT iters | epochs | successes | p (pooled) | Pass@256 mean +- "
           "sd (min..max) | NLL train | NLL held-out |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    c = np.asarray(r["counts"])
    lines.append(
        f"| {r['sft_iters']} | {r['epochs']:.0f} | {c.sum()}/"
        f"{n * cfg.n_seeds} | {c.sum() / (n * cfg.n_seeds):.1e} | "
        f"{r['pass256_mean']:.3f} +- {r['pass256_sd']:.3f} "
        f"({min(r['pass256']):.3f}..{max(r['pass256']):.3f}) | "
        f"{r['nll_train']:.3f} | {r['nll_heldout']:.3f} |")
  with open(os.path.join(workdir, "calib.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))

  fig, ax = plt.subplots(figsize=(5, 3.6))
  x = [r["sft_iters"] for r in rows]
  ax.plot(x, np.asarray([r["pass256"] for r in rows]), ".", color="k",
          alpha=0.4)
  ax.plot(x, [r["pass256_mean"] for r in rows], "o-", color="C3",
          label="seed mean")
  ax.axhspan(lo, hi, color="C2", alpha=0.2, label="paper Fig. 3c init range")
  if chosen is not None:
    ax.axvline(chosen, color="C2", ls="--", label=f"chosen: {chosen}")
  ax.set_xscale("log")
  ax.set(xlabel="SFT iterations (batch 64, 3,200 mu_5 samples)",
         ylabel="Pass@256 of the SFT policy", title="SFT length calibration")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "calib_pass256.png"), dpi=120)
  plt.close(fig)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
