r"""Labelling strategies against exact values: first pit, adaptive MC, Fig. 6b.

Command (from the repository root, one CPU core):
  taskset -c 0 .venv/bin/python \
      experiments/2026-11-26_label_first_pit/run.py [pit] [adaptive] [fig6b]
Writes results.json (merged per part) and PNG plots next to this file.

Task: the didactic planted-subsequence automaton as a token LM
(`pav_jax.didactic.automaton_lm`), y* = (1, 2, 0, 1), 10 symbols, 5 tokens
(4 symbols + EOS), pi = mu_6 (V(s_1) = 0.321). Every prefix's Q^pi is exact
(dynamic programming), so label quality is measured against the truth:

  label MSE      mean (Q̂ - Q)^2 over the kept MC-labelled prefixes;
  false zeros    kept prefixes with Q̂ = 0 but Q > 0;
  pooled proxy   a "verifier" that pools perfectly: the mean label of each
                 (automaton state, step) cell of the kept prefixes, scored
                 by its MSE against Q on 4,000 fresh on-policy trajectories'
                 live prefixes (an unseen cell falls back to the step's mean
                 label, then to the mean label); "_to_pit": only the test
                 prefixes up to each trajectory's first pit (dead states
                 after it excluded: what a search must rank);
  rollouts       seed rollouts + MC rollouts (pit probes included).
"""

import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from pav_jax import labelling
from pav_jax import plots
from pav_jax import sampler as sampler_lib
from pav_jax.didactic import automaton_lm as automaton
from pav_jax.didactic import env as env_lib

HERE = Path(__file__).parent
ENV = env_lib.Env(target=(1, 2, 0, 1), length=10, vocab=5)
GAMMA = 6.0
PROMPTS = 16


def make_sampler():
  gd, params, cfg = automaton.automaton_lm(ENV, GAMMA)
  s = sampler_lib.Sampler(gd, cfg, cache_size=64, eos_id=automaton.EOS,
                          step_id=automaton.STEP, pad_id=automaton.PAD)
  return s, params


SAMPLER, PARAMS = make_sampler()
GRADE = automaton.grade_env(ENV)
DELTA = env_lib.transition_table(ENV)
V_KR = env_lib.prover_values(ENV, GAMMA).v_KR


def label(n_cov: int, n_mc: int, seed: int, **kw):
  lc = labelling.LabelConfig(
      n_cov=n_cov, n_mc=n_mc, max_new_tokens=2 * ENV.length,
      max_step_tokens=2, max_steps=ENV.length, prompts_per_chunk=PROMPTS,
      row_buckets=2, **kw)
  t0 = time.time()
  arr, b = labelling.label_chunk(SAMPLER, PARAMS,
                                 [[automaton.BOS, automaton.STEP]] * PROMPTS,
                                 GRADE, jax.random.key(seed), lc)
  return arr, b, time.time() - t0


def cells(arr):
  """(automaton state, step) of every prefix (-1 where not real)."""
  k_NP = np.full(arr["q_NP"].shape, -1)
  mask = arr.get("seed_mask_NP", arr["mask_NP"])
  for r in range(len(k_NP)):
    plen = int(arr["prompt_len_N"][r])
    resp = arr["tokens_NT"][r, plen:plen + arr["response_len_N"][r]].tolist()
    syms, k = automaton.env_symbols(ENV, resp), 0
    for h in range(int(mask[r].sum())):
      if h > 0 and h - 1 < len(syms):
        k = DELTA[k, syms[h - 1]]
      k_NP[r, h] = k
  return k_NP


def test_prefixes(n=4000, seed=123):
  """(k, h, exact Q, before-or-at the first pit) of the live prefixes of
  fresh on-policy trajectories."""
  rng = np.random.default_rng(seed)
  probs = env_lib.prover_probs(ENV, GAMMA)
  out = []
  for _ in range(n):
    k, dead = 0, False
    for h in range(ENV.length):
      q = V_KR[k, ENV.length - h]
      out.append((k, h, q, not dead))
      dead |= q == 0
      a = rng.choice(ENV.vocab, p=probs[k])
      if a == ENV.eos:
        break
      k = DELTA[k, a]
  return np.array(out)


TEST = test_prefixes()


def evaluate(arr, b, secs):
  q_true = automaton.exact_q(ENV, arr, GAMMA)
  keep = arr["mask_NP"] & (arr["count_NP"] > 0)
  err = (arr["q_NP"] - q_true)[keep]
  k_NP = cells(arr)
  h_NP = np.broadcast_to(np.arange(k_NP.shape[1]), k_NP.shape)
  table, by_h = {}, {}
  for k, h, q in zip(k_NP[keep], h_NP[keep], arr["q_NP"][keep]):
    table.setdefault((int(k), int(h)), []).append(q)
    by_h.setdefault(int(h), []).append(q)
  glob = float(arr["q_NP"][keep].mean())
  pred = [np.mean(table[(int(k), int(h))]) if (int(k), int(h)) in table
          else np.mean(by_h[int(h)]) if int(h) in by_h else glob
          for k, h, _, _ in TEST]
  sq = (np.array(pred) - TEST[:, 2]) ** 2
  out = {
      "rollouts": int(b.seed_rollouts + b.mc_rollouts),
      "mc_rollouts": int(b.mc_rollouts), "pit_rollouts": int(b.pit_rollouts),
      "seeds": int(b.seed_rollouts), "kept_prefixes": int(keep.sum()),
      "label_mse": float(np.mean(err ** 2)),
      "false_zeros": float(np.mean((arr["q_NP"][keep] == 0)
                                   & (q_true[keep] > 0))),
      "pooled_proxy_mse": float(np.mean(sq)),
      "pooled_proxy_mse_to_pit": float(np.mean(sq[TEST[:, 3] > 0])),
      "seconds": secs,
  }
  if "pit_N" in arr:
    fail = arr["outcome_N"] == 0
    seed_mask = arr["seed_mask_NP"]
    true_pit = np.array([np.flatnonzero(q_true[r, :seed_mask[r].sum()] == 0)[0]
                         if fail[r] else -1 for r in range(len(fail))])
    out["pit_exact"] = float(np.mean(arr["pit_N"][fail] == true_pit[fail]))
    out["pit_early"] = float(np.mean(arr["pit_N"][fail] < true_pit[fail]))
    out["true_pit_before_last"] = float(np.mean(
        true_pit[fail] < seed_mask[fail].sum(1) - 1))
  return out


def part_pit():
  """Fig. 11-style: all prefixes vs first-pit filter vs bisection."""
  rows = []
  for n_cov in (2, 4, 8):
    for seed in (0, 1):
      for arm, kw in (("all", {}), ("filter", {"first_pit": "filter"}),
                      ("bisect", {"first_pit": "bisect", "n_pit": 16}),
                      ("bisect_notopup", {"first_pit": "bisect",
                                          "n_pit": 16, "pit_topup": False})):
        res = evaluate(*label(n_cov, 4, seed, **kw))
        res.update(arm=arm, n_cov=n_cov, n_mc=4, seed=seed)
        print(json.dumps(res), flush=True)
        rows.append(res)
  return rows


def part_adaptive():
  """Fixed n_mc vs adaptive rounds, same seeds (n_cov 4)."""
  rows = []
  for seed in (0, 1):
    for n_mc in (2, 4, 8, 16, 32):
      res = evaluate(*label(4, n_mc, seed))
      res.update(arm="fixed", n_mc=n_mc, n_mc_min=0, seed=seed)
      print(json.dumps(res), flush=True)
      rows.append(res)
    for arm, m, n_mc, kw in (
        ("stop m=2", 2, 8, {}), ("stop m=2", 2, 16, {}),
        ("stop m=2", 2, 32, {}), ("stop m=4", 4, 16, {}),
        ("stop m=4", 4, 32, {}), ("stop m=4", 4, 64, {}),
        ("CI 0.15 m=4", 4, 64, {"mc_tol": 0.15}),
        ("CI 0.1 m=4", 4, 128, {"mc_tol": 0.1}),
        ("neyman m=2", 2, 4, {"mc_alloc": "neyman"}),
        ("neyman m=2", 2, 8, {"mc_alloc": "neyman"}),
        ("neyman m=4", 4, 8, {"mc_alloc": "neyman"}),
        ("neyman m=4", 4, 16, {"mc_alloc": "neyman"}),
        ("neyman m=8", 8, 32, {"mc_alloc": "neyman"})):
      res = evaluate(*label(4, n_mc, seed, n_mc_min=m, **kw))
      res.update(arm=arm, n_mc=n_mc, n_mc_min=m, seed=seed)
      print(json.dumps(res), flush=True)
      rows.append(res)
  return rows


def part_fig6b():
  """Fixed n_cov * n_mc (total budget), ratio n_mc / n_cov swept."""
  rows = []
  for total in (16, 64):
    for n_cov in (1, 2, 4, 8, 16, 32, 64):
      n_mc = total // n_cov
      if n_mc < 1 or n_cov > total:
        continue
      for seed in (0, 1):
        res = evaluate(*label(n_cov, n_mc, seed))
        res.update(total=total, n_cov=n_cov, n_mc=n_mc, seed=seed,
                   ratio=n_mc / n_cov)
        print(json.dumps(res), flush=True)
        rows.append(res)
  return rows


def mean_by(rows, keys, fields):
  groups = {}
  for r in rows:
    groups.setdefault(tuple(r[k] for k in keys), []).append(r)
  return {g: {f: float(np.mean([r[f] for r in rs])) for f in fields}
          for g, rs in groups.items()}


FIELDS = ("rollouts", "pit_rollouts", "kept_prefixes", "label_mse",
          "false_zeros", "pooled_proxy_mse", "pooled_proxy_mse_to_pit",
          "seconds")


def plot(results):
  plt = plots.pyplot()
  if "pit" in results:
    m = mean_by(results["pit"], ("arm", "n_cov"), FIELDS)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for arm in ("all", "filter", "bisect", "bisect_notopup"):
      pts = sorted((v["rollouts"], v["label_mse"],
                    v["pooled_proxy_mse_to_pit"])
                   for (a, _), v in m.items() if a == arm)
      x = [p[0] for p in pts]
      axes[0].plot(x, [p[1] for p in pts], "o-", label=arm)
      axes[1].plot(x, [p[2] for p in pts], "o-", label=arm)
    for ax in axes:
      ax.set_xscale("log")
    axes[0].set_xlabel("total rollouts (n_cov 2, 4, 8; n_mc 4)")
    axes[0].set_ylabel("label MSE vs exact Q (kept prefixes)")
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    plots.save_axes(plt, fig, axes[1], HERE / "fig11_strategies.png",
                    "total rollouts (n_cov 2, 4, 8; n_mc 4)",
                    "pooled-verifier MSE, test prefixes up to the pit",
                    "Label strategies (automaton, exact Q)")
  if "adaptive" in results:
    m = mean_by(results["adaptive"], ("arm", "n_mc"), FIELDS)
    fig, ax = plt.subplots(figsize=(6, 4))
    for arm in sorted({a for a, _ in m}):
      pts = sorted((v["rollouts"], v["label_mse"])
                   for (a, _), v in m.items() if a == arm)
      ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=arm)
    ax.set_xscale("log")
    ax.set_yscale("log")
    plots.save_axes(plt, fig, ax, HERE / "adaptive_mc.png",
                    "total rollouts (n_cov 4, 16 prompts)",
                    "label MSE vs exact Q", "Fixed vs adaptive n_mc")
  if "fig6b" in results:
    m = mean_by(results["fig6b"], ("total", "n_cov"), FIELDS + ("ratio",))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for total in sorted({t for t, _ in m}):
      pts = sorted((v["ratio"], v["label_mse"], v["pooled_proxy_mse"])
                   for (t, _), v in m.items() if t == total)
      x = [p[0] for p in pts]
      axes[0].plot(x, [p[1] for p in pts], "o-",
                   label=f"n_cov*n_mc={total}")
      axes[1].plot(x, [p[2] for p in pts], "o-",
                   label=f"n_cov*n_mc={total}")
    for ax in axes:
      ax.set_xscale("log", base=2)
      ax.set_yscale("log")
    axes[0].set_xlabel("n_mc / n_cov")
    axes[0].set_ylabel("label MSE vs exact Q")
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    plots.save_axes(plt, fig, axes[1], HERE / "fig6b_ratio.png",
                    "n_mc / n_cov", "pooled-verifier proxy MSE",
                    "Fixed budget, ratio swept")


def main(parts):
  path = HERE / "results.json"
  results = json.loads(path.read_text()) if path.exists() else {}
  for part in parts:
    results[part] = {"pit": part_pit, "adaptive": part_adaptive,
                     "fig6b": part_fig6b}[part]()
    path.write_text(json.dumps(results, indent=1))
  plot(results)


if __name__ == "__main__":
  main(sys.argv[1:] or ["pit", "adaptive", "fig6b"])
