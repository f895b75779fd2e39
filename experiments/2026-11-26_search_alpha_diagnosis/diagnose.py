"""Why PAV beam == PRM-Q beam: logs every beam selection of a PAV beam run.

For each selection (problem, step) it records the candidates' Q^pi(s,a),
their parents' Q^pi(s), the BoK advantage, and whether the top-B set by the
PAV score differs from the top-B set by Q^pi alone (same candidates).

  python experiments/2026-11-26_search_alpha_diagnosis/diagnose.py \
      --workdir=runs/search_strong --n=8 --num=64 --split=validation \
      --alpha=0.5 --k=4 --out=/tmp/diag.npz
"""

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from pav_jax import advantages
from pav_jax import defaults
from pav_jax import run_lib
from pav_jax import sharding
from pav_jax.search import beam as beam_lib
from pav_jax.search import comparison
from pav_jax.search.verifier_cache import CachedVerifier

LOG = []
_orig_select = beam_lib.select_top
_orig_scores = beam_lib.beam_scores
_last = {}


def _scores(q_new_M, q_parent_M, **kw):
  _last["q_new"] = np.asarray(q_new_M)
  _last["q_par"] = np.asarray(q_parent_M)
  _last["kw"] = kw
  return _orig_scores(q_new_M, q_parent_M, **kw)


def _select(score_EM, ok_EM, num_keep_E, width):
  idx, keep = _orig_select(score_EM, ok_EM, num_keep_E, width)
  p, bc = score_EM.shape
  qn = _last["q_new"].reshape(p, bc)
  qp = _last["q_par"].reshape(p, bc)
  ok = np.asarray(ok_EM)
  idx_q, keep_q = _orig_select(jnp.asarray(qn), ok_EM, num_keep_E, width)
  idx, keep, idx_q, keep_q = map(np.asarray, (idx, keep, idx_q, keep_q))
  for e in range(p):
    if not ok[e].any():
      continue
    a = set(idx[e][keep[e]].tolist())
    b = set(idx_q[e][keep_q[e]].tolist())
    LOG.append(dict(q_new=qn[e][ok[e]], q_par=qp[e][ok[e]],
                    differ=a != b, nkeep=int(keep[e].sum()),
                    ncand=int(ok[e].sum())))
    LOG[-1]["all"] = (qn[e], qp[e], ok[e], int(np.asarray(num_keep_E)[e]))
  return jnp.asarray(idx), jnp.asarray(keep)


def counterfactual(log, width):
  """Fraction of the q-beam's selections whose top-B set a PAV score with
  (alpha, K) would change, on the same candidates."""
  out = {}
  for k in (1.0, 2.0, 4.0, 16.0):
    for al in (0.25, 0.5, 1.0, 2.0, 5.0):
      n = 0
      for d in log:
        qn, qp, ok, nk = d["all"]
        s = np.asarray(beam_lib.beam_scores(jnp.asarray(qn), jnp.asarray(qp),
                                           mode="pav", alpha=al, prover_k=k))
        i1, k1 = _orig_select(jnp.asarray(s)[None], jnp.asarray(ok)[None],
                              jnp.asarray([nk]), width)
        i0, k0 = _orig_select(jnp.asarray(qn)[None], jnp.asarray(ok)[None],
                              jnp.asarray([nk]), width)
        i1, k1, i0, k0 = map(np.asarray, (i1, k1, i0, k0))
        n += set(i1[0][k1[0]].tolist()) != set(i0[0][k0[0]].tolist())
      out[f"K={k:g},alpha={al:g}"] = n / max(len(log), 1)
  return out


def spreads(log, width, alpha, k):
  """Per selection: spread of the parents' Q, the Q gap at the cut-off
  (B-th vs (B+1)-th candidate) and the spread of alpha * A^mu."""
  par, gap, adv, flat = [], [], [], 0
  for d in log:
    qn, qp, ok, nk = d["all"]
    qn, qp = qn[ok], qp[ok]
    par.append(np.ptp(qp))
    flat += np.ptp(qp) < 1e-6
    if len(qn) > nk:
      srt = np.sort(qn)[::-1]
      gap.append(srt[nk - 1] - srt[nk])
    adv.append(alpha * np.ptp(np.asarray(
        advantages.bok_step_advantage(qn, qp, k))))

  def pct(x):
    return np.percentile(x, [10, 50, 90]).tolist()

  return {"parent_q_spread_p10_50_90": pct(par),
          "frac_parents_identical": flat / len(log),
          "cutoff_gap_p10_50_90": pct(gap),
          "alpha_adv_spread_p10_50_90": pct(adv)}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", default="runs/search_strong")
  ap.add_argument("--n", type=int, default=8)
  ap.add_argument("--num", type=int, default=64)
  ap.add_argument("--split", default="validation")
  ap.add_argument("--alpha", type=float, default=0.5)
  ap.add_argument("--k", type=float, default=4.0)
  ap.add_argument("--out", default="/tmp/diag.json")
  ap.add_argument("--distinct", type=int, default=0)
  a = ap.parse_args()
  beam_lib.select_top = _select
  beam_lib.beam_scores = _scores
  config = defaults.config_file_module("demo").get_config()
  mesh = sharding.make_mesh(dict(config.mesh))
  with jax.set_mesh(mesh):
    run = run_lib.make_run(config, a.workdir, mesh)
    graphdef, params = run.load_policy()
    ver = CachedVerifier(*run.load_verifier("prm_q"))
    ex = run.examples(a.split, a.num)
    settings = comparison.SearchSettings(ns=(a.n,))
    smp = comparison.make_search_sampler(run, graphdef, settings, ex)
    prompts = run.encode_prompts(ex)
    res = {}
    for mode in ("q", "pav"):
      LOG.clear()
      cfg = beam_lib.BeamConfig(beam_size=a.n, mode=mode, alpha=a.alpha,
                                prover_k=a.k, distinct=bool(a.distinct))
      r = beam_lib.beam_search(smp, params, ver, prompts, cfg,
                               jax.random.PRNGKey(1))
      acc = np.mean([run.task.grade(e, run.tok.decode(t))
                     for e, t in zip(ex, r.responses)])
      res[mode] = acc
      if mode == "pav":
        qn = np.concatenate([d["q_new"] for d in LOG])
        qp = np.concatenate([d["q_par"] for d in LOG])
        adv = np.asarray(advantages.bok_step_advantage(qn, qp, a.k))
        diff = np.mean([d["differ"] for d in LOG])
        trivial = np.mean([d["ncand"] <= d["nkeep"] for d in LOG])
        res.update(
            selections=len(LOG), frac_selection_differs=float(diff),
            frac_trivial=float(trivial),
            q_new_pct=np.percentile(qn, [1, 10, 25, 50, 75, 90, 99]).tolist(),
            q_par_pct=np.percentile(qp, [1, 10, 25, 50, 75, 90, 99]).tolist(),
            adv_pct=np.percentile(adv, [1, 10, 25, 50, 75, 90, 99]).tolist(),
            frac_q_new_gt_099=float(np.mean(qn > 0.99)),
            frac_adv_pos=float(np.mean(adv > 0)),
            frac_qnew_le_qpar=float(np.mean(qn <= qp + 1e-7)),
            abs_adv_over_q_spread=float(
                np.mean([np.abs(np.asarray(advantages.bok_step_advantage(
                    d["q_new"], d["q_par"], a.k))).max()
                         / max(np.ptp(d["q_new"]), 1e-9) for d in LOG])))
        np.savez(a.out.replace(".json", ".npz"), q_new=qn, q_par=qp)
      if mode == "q":
        res["counterfactual"] = counterfactual(LOG, width=a.n)
        res["spread"] = spreads(LOG, a.n, a.alpha, a.k)
    print(json.dumps(res, indent=1))
    with open(a.out, "w") as f:
      json.dump(res, f, indent=1)


if __name__ == "__main__":
  main()
