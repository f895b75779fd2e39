"""Didactic experiment: effective reward vs outcome-only RL (paper Fig. 3).

  python -m pav_jax.didactic.run --config=configs/didactic.py \
      --workdir=runs/didactic

Phases: SFT (vmapped over seeds) -> RL for every (prover, seed) run at once
(vmap over runs, scan over iterations) -> Pass@N and Theorem 3.1 terms ->
optional MC-Q^pi side check -> JSONL metrics, results.json, table.md, PNGs.
"""

import functools
import json
import os
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from ml_collections import config_flags
from tqdm import tqdm

from pav_jax import advantages
from pav_jax.didactic import env as env_lib
from pav_jax.didactic import policy
from pav_jax.didactic import rl

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")


def _smooth(x_T: np.ndarray, w: int) -> np.ndarray:
  """Trailing moving average along the first axis."""
  c = np.cumsum(np.concatenate([np.zeros_like(x_T[:1]), x_T]), axis=0)
  idx = np.arange(1, x_T.shape[0] + 1)
  lo = np.maximum(idx - w, 0)
  n = (idx - lo).reshape((-1,) + (1,) * (x_T.ndim - 1))
  return (c[idx] - c[lo]) / n


def _sft_all(cfg, env, graphdef, tx, rng_seeds):
  """Init + SFT on mu_gamma samples, one vmapped program over seeds."""
  probs_KV = jnp.asarray(env_lib.prover_probs(env, cfg.sft.gamma))

  def one(rng):
    _, params = policy.init_params(env, tuple(cfg.hidden),
                                   jax.random.fold_in(rng, 0))
    data_NL = env_lib.sample_prover(env, probs_KV, jax.random.fold_in(rng, 1),
                                    cfg.sft.n_samples)
    state = rl.init_state(params, tx)
    state, nll_T = rl.run_sft(
        graphdef, state, data_NL, jax.random.fold_in(rng, 2), env=env, tx=tx,
        batch_size=cfg.sft.batch_size, n_iters=cfg.sft.iters)
    data_acc = jnp.mean(env_lib.reward(env, data_NL))
    return state.params, nll_T, data_acc

  return jax.jit(jax.vmap(one))(rng_seeds)


def _rl_runs(cfg, env, graphdef, params_S, batch_S, rng_S, rl_cfg, n_iters,
             snap_iter, log_file, labels, desc):
  """Runs all S runs for n_iters; returns metrics (T x S) and a snapshot."""
  tx = optax.adam(rl_cfg.learning_rate)
  state_S = jax.vmap(functools.partial(rl.init_state, tx=tx))(params_S)
  chunk = min(cfg.rl.log_every, n_iters)
  assert n_iters % chunk == 0 and snap_iter % chunk == 0
  run_chunk = jax.jit(
      functools.partial(rl.rl_chunk, graphdef, n_iters=chunk, env=env, tx=tx,
                        cfg=rl_cfg))
  metrics, snap = [], None
  for it0 in tqdm(range(0, n_iters, chunk), desc=desc, unit="chunk"):
    state_S, m_TS = run_chunk(state_S, batch_S, rng_S, jnp.int32(it0))
    m_TS = jax.device_get(m_TS)
    if not np.all(np.isfinite(m_TS["loss"])):
      raise FloatingPointError(f"non-finite loss at iteration {it0}")
    metrics.append(m_TS)
    if log_file is not None:
      with open(log_file, "a") as f:
        for t in range(chunk):
          row = {"phase": desc, "iter": it0 + t + 1, "runs": labels}
          row.update({k: np.round(v[t], 5).tolist() for k, v in m_TS.items()})
          f.write(json.dumps(row) + "\n")
    if it0 + chunk == snap_iter:
      snap = state_S.params
  out = {k: np.concatenate([m[k] for m in metrics]) for k in metrics[0]}
  return out, snap


def main(argv):
  del argv
  cfg, workdir = _CONFIG.value, _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  logging.info("devices: %s", jax.devices())
  t_start = time.time()
  env = env_lib.Env(tuple(cfg.env.target), cfg.env.length, cfg.env.vocab)
  rng = jax.random.key(cfg.seed)
  n_seeds = cfg.n_seeds
  rng_seeds = jax.random.split(jax.random.fold_in(rng, 0), n_seeds)
  log_file = os.path.join(workdir, "metrics.jsonl")
  open(log_file, "w").close()

  # --- SFT -------------------------------------------------------------------
  graphdef, _ = policy.init_params(env, tuple(cfg.hidden), rng)
  sft_tx = optax.adam(cfg.sft.learning_rate)
  sft_params, sft_nll, data_acc = _sft_all(cfg, env, graphdef, sft_tx,
                                           rng_seeds)
  logging.info("SFT nll %s, data acc %s", sft_nll[:, -1], data_acc)

  # --- RL sweep: runs = (prover spec) x seed ----------------------------------
  gammas = [float(g) for g in cfg.rl.gammas]
  specs = [("Q only", 0.0, None)] + [
      (f"gamma={g:g}", cfg.rl.alpha, g) for g in gammas]
  zero_KRV = np.zeros((env.n_states, env.length + 1, env.vocab), np.float32)
  tables = {g: env_lib.prover_values(env, g).a_KRV.astype(np.float32)
            for g in set(gammas + [cfg.eval.gamma])}
  labels, alpha_S, adv_S, seed_S = [], [], [], []
  for name, alpha, g in specs:
    for s in range(n_seeds):
      labels.append(f"{name}/seed{s}")
      alpha_S.append(alpha)
      adv_S.append(zero_KRV if g is None else tables[g])
      seed_S.append(s)
  seed_S = np.asarray(seed_S)
  batch_S = {"alpha": jnp.asarray(alpha_S, jnp.float32),
             "adv_KRV": jnp.asarray(np.stack(adv_S))}
  params_S = jax.tree.map(lambda x: x[seed_S], sft_params)
  rng_S = jax.random.split(jax.random.fold_in(rng, 1), len(labels))
  rl_cfg = rl.RLConfig(cfg.rl.batch_size, cfg.rl.learning_rate,
                       cfg.rl.q_estimator)
  t_rl = time.time()
  m_TS, snap_S = _rl_runs(cfg, env, graphdef, params_S, batch_S, rng_S,
                          rl_cfg, cfg.rl.iters, cfg.eval.pass_iter, log_file,
                          labels, "rl")
  t_rl = time.time() - t_rl
  acc_TS = m_TS["accuracy"]
  n_specs = len(specs)
  acc_TPE = acc_TS.reshape(acc_TS.shape[0], n_specs, n_seeds)

  # --- Pass@N at the snapshot iteration and for SFT -------------------------
  ev_name = f"gamma={cfg.eval.gamma:g}"
  assert ev_name in [s[0] for s in specs], "eval gamma must be in the sweep"
  i_q, i_e = 0, [s[0] for s in specs].index(ev_name)
  count = jax.jit(jax.vmap(
      functools.partial(success_counts_fn, graphdef, env,
                        cfg.eval.pass_samples)))

  def pick(p, i):
    return jax.tree.map(lambda x: x[i * n_seeds:(i + 1) * n_seeds], p)

  rng_pass = jax.random.split(jax.random.fold_in(rng, 2), n_seeds)
  n_pass = cfg.eval.pass_samples
  counts = {
      "SFT": np.asarray(count(sft_params, rng_pass)),
      f"Q only @{cfg.eval.pass_iter}": np.asarray(
          count(pick(snap_S, i_q), rng_pass)),
      f"Effective ({ev_name}) @{cfg.eval.pass_iter}": np.asarray(
          count(pick(snap_S, i_e), rng_pass)),
  }
  pass_at = {k: np.stack([advantages.pass_at_k(n_pass, c, n)
                          for n in cfg.eval.pass_ns], -1)
             for k, c in counts.items()}  # [seeds, Ns]

  # --- Theorem 3.1 terms on the SFT policy ----------------------------------
  adv_GKRV = jnp.asarray(np.stack([tables[g] for g in gammas]))
  theo = []
  for s in range(n_seeds):
    p_s = jax.tree.map(lambda x: x[s], sft_params)
    theo.append(jax.device_get(jax.jit(
        functools.partial(rl.theorem_terms, graphdef, env=env,
                          n=cfg.eval.theory_samples))(
                              p_s, rng=jax.random.fold_in(rng, 3 + s),
                              adv_GKRV=adv_GKRV)))
  theo = {k: np.stack([t[k] for t in theo]) for k in theo[0]}  # [seeds, G]

  # --- Side check: Q^pi from n_mc rollouts ----------------------------------
  mc = None
  if cfg.mc_check.iters > 0:
    mc_cfg = rl.RLConfig(cfg.mc_check.batch_size, cfg.rl.learning_rate, "mc",
                         cfg.mc_check.n_mc)
    mc_batch = {"alpha": jnp.asarray([cfg.rl.alpha, 0.0], jnp.float32),
                "adv_KRV": jnp.asarray(np.stack([tables[cfg.eval.gamma]] * 2))}
    mc_params = jax.tree.map(lambda x: jnp.stack([x[0], x[0]]), sft_params)
    t_mc = time.time()
    mc_m, _ = _rl_runs(cfg, env, graphdef, mc_params, mc_batch,
                       rng_S[:2], mc_cfg, cfg.mc_check.iters, 0, log_file,
                       [f"MC eff {ev_name}/seed0", "MC Q only/seed0"],
                       "mc_check")
    mc = {"accuracy": mc_m["accuracy"], "seconds": time.time() - t_mc}

  total_s = time.time() - t_start
  results = _summarise(cfg, env, specs, gammas, acc_TPE, m_TS, sft_nll,
                       data_acc, counts, pass_at, theo, mc, total_s, t_rl)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  with open(os.path.join(workdir, "table.md"), "w") as f:
    f.write(results["table_md"])
  _plot(cfg, workdir, specs, gammas, acc_TPE, pass_at, theo, mc, results)
  print(results["table_md"])
  print(f"total wall time {total_s:.1f} s (RL sweep {t_rl:.1f} s)")


def success_counts_fn(graphdef, env, n, params, rng):
  return rl.success_counts(graphdef, params, env, rng, n)


def _first_reach(acc_T: np.ndarray, thr: float, w: int) -> float:
  sm = _smooth(acc_T, w)
  hit = np.nonzero(sm >= thr)[0]
  return float(hit[0] + 1) if hit.size else float("nan")


def _summarise(cfg, env, specs, gammas, acc_TPE, m_TS, sft_nll, data_acc,
               counts, pass_at, theo, mc, total_s, t_rl):
  """results.json content plus a markdown table."""
  n_seeds = acc_TPE.shape[-1]
  avg_PE = acc_TPE.mean(0)
  final_PE = acc_TPE[-50:].mean(0)
  reach_PE = np.array([[_first_reach(acc_TPE[:, p, e], 0.9, 20)
                        for e in range(n_seeds)] for p in range(len(specs))])
  advabs_PE = m_TS["adv_mu_abs"].reshape(acc_TPE.shape)[:20].mean(0)
  ev = {g: prover_v0 for g, prover_v0 in
        ((g, env_lib.prover_values(env, g).v_KR[0, env.length])
         for g in gammas)}
  p_sft = counts["SFT"] / cfg.eval.pass_samples
  lines = [
      f"SFT policy accuracy (exact-sample estimate, {cfg.eval.pass_samples} "
      f"samples/seed): {p_sft.mean():.4f} +- {p_sft.std():.4f}; "
      f"mu_5 data accuracy {np.mean(data_acc):.4f}",
      "",
      "| run | V^mu(s_1) | avg acc over RL (mean +- sd) | final acc "
      "(last 50) | iters to 90% | E|A^mu| (first 20 it) | distinguish. "
      "(SFT) | alignment (SFT) |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for p, (name, _, g) in enumerate(specs):
    vmu = f"{ev[g]:.3f}" if g is not None else "-"
    reach = reach_PE[p]
    reach_s = ("never" if np.all(np.isnan(reach)) else
               f"{np.nanmean(reach):.0f} ({np.sum(~np.isnan(reach))}/"
               f"{n_seeds} seeds)")
    if g is not None:
      gi = gammas.index(g)
      th = (f"{theo['disting'][:, gi].mean():.2e} | "
            f"{theo['align'][:, gi].mean():+.2e} +- "
            f"{theo['align_se'][:, gi].mean():.1e}")
    else:
      th = "- | -"
    lines.append(
        f"| {name} | {vmu} | {avg_PE[p].mean():.3f} +- {avg_PE[p].std():.3f}"
        f" | {final_PE[p].mean():.3f} +- {final_PE[p].std():.3f} | {reach_s}"
        f" | {advabs_PE[p].mean():.4f} | {th} |")
  lines += ["", "| Pass@N | " + " | ".join(str(n) for n in cfg.eval.pass_ns)
            + " |", "|---|" + "---|" * len(cfg.eval.pass_ns)]
  for k, v in pass_at.items():
    lines.append(f"| {k} | " + " | ".join(
        f"{m:.3f}+-{s:.3f}" for m, s in zip(v.mean(0), v.std(0))) + " |")
  p_at = {k: (c / cfg.eval.pass_samples).tolist() for k, c in counts.items()}
  lines += ["", "Single-sample accuracy (Pass@1) per seed: " + json.dumps(
      {k: [round(x, 4) for x in v] for k, v in p_at.items()})]
  if mc is not None:
    a = mc["accuracy"]
    lines.append(
        f"MC-Q^pi side check ({cfg.mc_check.n_mc} rollouts, seed 0, "
        f"{cfg.mc_check.iters} it, {mc['seconds']:.0f} s): avg acc effective "
        f"{a[:, 0].mean():.3f}, Q only {a[:, 1].mean():.3f}; last-50 "
        f"{a[-50:, 0].mean():.3f} vs {a[-50:, 1].mean():.3f}")
  lines.append(f"Total wall time {total_s:.0f} s (RL sweep {t_rl:.0f} s).")
  return {
      "runs": [s[0] for s in specs],
      "gammas": gammas,
      "prover_v0": [ev[g] for g in gammas],
      "avg_acc": avg_PE.tolist(),
      "final_acc": final_PE.tolist(),
      "iters_to_90": np.where(np.isnan(reach_PE), -1, reach_PE).tolist(),
      "acc_curve_every10": np.round(_smooth(acc_TPE, 10)[9::10], 4).tolist(),
      "sft_nll_last": np.asarray(sft_nll)[:, -1].tolist(),
      "sft_accuracy": p_sft.tolist(),
      "pass_ns": list(cfg.eval.pass_ns),
      "pass_at": {k: v.tolist() for k, v in pass_at.items()},
      "pass1": p_at,
      "theory": {k: v.tolist() for k, v in theo.items()},
      "mc_check": None if mc is None else {
          "acc_eff": mc["accuracy"][:, 0].tolist(),
          "acc_q": mc["accuracy"][:, 1].tolist(), "seconds": mc["seconds"]},
      "wall_s": total_s,
      "rl_wall_s": t_rl,
      "table_md": "\n".join(lines) + "\n",
  }


def _plot(cfg, workdir, specs, gammas, acc_TPE, pass_at, theo, mc, results):
  """Three PNGs: (a) curves, (b) gamma sweep + theorem terms, (c) Pass@N."""
  names = [s[0] for s in specs]
  ev_name = f"gamma={cfg.eval.gamma:g}"
  t = np.arange(1, acc_TPE.shape[0] + 1)
  sm = _smooth(acc_TPE, 20)

  fig, ax = plt.subplots(figsize=(5.5, 4))
  for name, label, c in (("Q only", "Only Q (alpha=0)", "C0"),
                         (ev_name, f"Effective reward ({ev_name})", "C3")):
    p = names.index(name)
    # Runs are bimodal (solve or stay at 0), so show every seed.
    ax.plot(t, sm[:, p].mean(-1), color=c, lw=2.5, label=label + " (mean)")
    ax.plot(t, sm[:, p], color=c, lw=0.8, alpha=0.6)
  if mc is not None and len(mc["accuracy"]) >= 20:
    tm = np.arange(1, len(mc["accuracy"]) + 1)
    sm_mc = _smooth(mc["accuracy"], 20)
    ax.plot(tm, sm_mc[:, 0], "--", color="C3",
            label=f"Effective, MC Q^pi ({cfg.mc_check.n_mc} rollouts)")
    ax.plot(tm, sm_mc[:, 1], "--", color="C0",
            label=f"Only Q, MC Q^pi ({cfg.mc_check.n_mc} rollouts)")
  ax.set(xlabel="RL iteration", ylabel="accuracy (batch, 20-it avg)",
         ylim=(0, 1.02), title="(a) accuracy vs RL iterations")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "fig_a_accuracy.png"), dpi=120)
  plt.close(fig)

  fig, axs = plt.subplots(1, 3, figsize=(13, 3.8))
  avg = np.asarray(results["avg_acc"])  # [P, E]
  g = np.asarray(gammas)
  axs[0].errorbar(g, avg[1:].mean(-1), yerr=avg[1:].std(-1), fmt="o-",
                  color="C3", capsize=3, label="Effective reward (alpha=1)")
  for e in range(avg.shape[1]):
    jit = 1.0 + 0.012 * (e - (avg.shape[1] - 1) / 2)  # Log-axis jitter.
    axs[0].scatter(g * jit, avg[1:, e], s=8, color="k",
                   alpha=0.5, label="single seeds" if e == 0 else None)
  axs[0].set_xscale("log")
  q = avg[0]
  axs[0].axhline(q.mean(), color="C0", label="Only Q (no prover)")
  axs[0].axhspan(q.min(), q.max(), color="C0", alpha=0.15)
  axs[0].axhline(np.mean(results["sft_accuracy"]), color="gray", ls=":",
                 label="SFT init")
  axs[0].set(xlabel="prover gamma", ylabel="accuracy averaged over RL run",
             title=f"(b) {cfg.rl.iters} RL it., {cfg.sft.iters} SFT it., "
             f"{avg.shape[1]} seeds")
  axs[0].legend(fontsize=7)
  for ax, key, title in ((axs[1], "disting", "distinguishability\n"
                          "E_s Var_pi[A^mu] (SFT policy)"),
                         (axs[2], "align", "alignment\n"
                          "E_s E_pi[A^mu A^pi] (SFT policy)")):
    v = theo[key]
    ax.errorbar(g, v.mean(0), yerr=(theo["align_se"].mean(0) if key == "align"
                                    else v.std(0)), fmt="o-", capsize=3)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xscale("log")
    ax.set(xlabel="prover gamma", title=title)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "fig_b_gamma.png"), dpi=120)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(5.5, 4))
  ns = np.asarray(cfg.eval.pass_ns)
  for (k, v), c in zip(pass_at.items(), ("gray", "C0", "C3")):
    ax.plot(ns, v.mean(0), "o-", color=c, label=k)
    ax.fill_between(ns, v.min(0), v.max(0), color=c, alpha=0.2)
  ax.set_xscale("log", base=2)
  ax.set(xlabel="N", ylabel="Pass@N", title="(c) Pass@N")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "fig_c_passn.png"), dpi=120)
  plt.close(fig)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
