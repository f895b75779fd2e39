"""Driver of the provers record (paper Fig. 5c): everything but labelling.

Subcommands (from the repository root; W = runs/provers_<name>):

  E=experiments/2026-11-26_search_provers
  python $E/run.py export SRC_STATE DST_PARAMS   # an SFT checkpoint's params
  python $E/run.py passk --out=$E/passk.json NAME=PARAMS_DIR ...
  python $E/run.py qmu --workdir=W                # q_mu on W's labels
  python $E/run.py search --seed=S --provers=weak,same,strong \\
      --out=$E/search_seed<S>.json
  # or in parts (same problems, samples and beam keys; aggregate.py merges
  # search_seed<S>*.json): --provers=weak ... then --provers=same,strong
  # --bok= --no_ref

`qmu` trains the `q_mu` verifier exactly as the verifiers stage does
(`train_verifier.train`, same config keys, the strong backbone) but only
that kind: ORM and PRM-Q are the issue-11 verifiers of runs/search_rerun
for every prover, so that provers differ in Q^mu only (the Q̂^pi labels of
every prover workdir equal runs/search_rerun's; `qmu` checks it).

`search` runs, on the same test problems, samples and beam keys, best-of-N
(ORM, PRM-Q min, PAV-min with BoK and with every trained prover) and beams
(PRM-Q; PAV with Bo1 / Bo4 / Bo16; PAV with each trained prover's Q^mu),
and logs for every PAV beam the fraction of selections whose top-B set
differs from the top-B set by Q^pi alone (the method of
experiments/2026-11-26_search_alpha_diagnosis/diagnose.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import pathlib
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np

from pav_jax import checkpoint as ckpt_lib
from pav_jax import labelled_set
from pav_jax import metrics
from pav_jax import rollouts
from pav_jax import run_lib
from pav_jax import sharding
from pav_jax import train_verifier
from pav_jax import transformer
from pav_jax.search import beam as beam_lib
from pav_jax.search import bon
from pav_jax.search import comparison
from pav_jax.search.verifier_cache import CachedVerifier

HERE = pathlib.Path(__file__).resolve().parent
BASE = pathlib.Path("runs/search_rerun")  # policy, ORM, PRM-Q, strong


def _config():
  spec = importlib.util.spec_from_file_location("provers_cfg",
                                                HERE / "config.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def _run(workdir) -> run_lib.Run:
  config = _config()
  return run_lib.make_run(config, workdir, _MESH[0])


_MESH = []


def export(src: str, dst: str) -> None:
  """Params of an SFT train-state checkpoint (`<sft>/checkpoints/<n>/state`)."""
  state = ckpt_lib.ocp.StandardCheckpointer().restore(
      pathlib.Path(src).absolute())
  ckpt_lib.save_params(dst, state["params"])
  print(f"exported {src} params -> {dst}")


def passk(named: list[str], out: str, num: int, k: int) -> None:
  """pass@1 / pass@4 of every NAME=PARAMS on the same test prompts, keys."""
  run = _run(BASE)
  examples = run.examples("test", num)
  res = {}
  for item in named:
    name, path = item.split("=", 1)
    graphdef, params = run.load_params_dir(
        path, lambda: transformer.create(run.model_cfg))
    t0 = time.time()
    ev = rollouts.evaluate_policy(
        run.sampler(graphdef), params, run.task, run.tok, examples, k=k,
        max_new_tokens=run.config.sample.max_new_tokens,
        rng=run.key("policy_eval"), batch_rows=512)
    res[name] = dict(ev.metrics, params=path, prompts=num, samples=k,
                     seconds=time.time() - t0)
    print(name, json.dumps(res[name]))
  pathlib.Path(out).write_text(json.dumps(res, indent=2))


def qmu(workdir: str) -> None:
  """Trains verifiers/q_mu of `workdir` (its label/ has Q̂^mu)."""
  run = _run(workdir)
  config, tok = run.config, run.tok
  wd = pathlib.Path(workdir)
  expect = labelled_set.tokenizer_identity(tok)
  train = labelled_set.load_labelled(wd / "label" / "train", expect)
  ev = labelled_set.load_labelled(wd / "label" / "eval", expect)
  base = labelled_set.load_labelled(BASE / "label" / "train", expect)
  same_pi = {key: bool(np.array_equal(train[key], base[key]))
             for key in ("tokens_NT", "q_NP", "mask_NP")}
  print("labels equal to runs/search_rerun's:", same_pi)
  strong = wd / "verifiers" / "strong"
  if not strong.exists():
    shutil.copytree(BASE / "verifiers" / "strong", strong)
  _, backbone = run.load_params_dir(
      strong / "params", lambda: transformer.create(run.model_cfg))
  vc = config.verifier
  t0 = time.time()
  arrays = train_verifier.training_arrays(
      train, "q_mu", run.pav.prover_k,
      config.label.get("first_pit_high", 0.0))
  out = wd / "verifiers" / "q_mu"
  graphdef, params = train_verifier.train(
      stage_dir=out, kind="q_mu", arrays=arrays, model_cfg=run.model_cfg,
      mesh=run.mesh, policy_params=backbone, steps=vc.steps,
      batch_size=vc.batch_size, learning_rate=vc.learning_rate,
      step_id=tok.step_ids, eos_id=tok.eos_id, seed=config.seed,
      ckpt_every=vc.ckpt_every,
      config_dict=train_verifier._identity_sections(config),  # noqa: SLF001
      design=vc.design, rank_weight=vc.rank_weight,
      rank_margin=vc.rank_margin, backbone_lr_scale=vc.backbone_lr_scale,
      group_batches=vc.group_batches)
  ckpt_lib.save_params(out / "params", params)
  t_train = time.time() - t0
  ev_arrays = train_verifier.training_arrays(ev, "q_mu", run.pav.prover_k)
  pred = train_verifier.predict(graphdef, params, ev_arrays, kind="q_mu",
                                step_id=tok.step_ids, eos_id=tok.eos_id)
  m = ev["mask_NP"].astype(bool)
  p = pred[:, : m.shape[1]]
  last = ev["num_prefixes_N"] - 1
  p_last = p[np.arange(len(last)), last]
  summary = {
      "train_seconds": t_train, "same_pi_labels": same_pi,
      "train_mean_q_mu": float(train["q_mu_NP"][train["mask_NP"]].mean()),
      "train_mean_q_pi": float(train["q_NP"][train["mask_NP"]].mean()),
      "train_mean_v1_mu": float(train["q_mu_NP"][:, 0].mean()),
      "train_corr_mu_pi": float(np.corrcoef(
          train["q_mu_NP"][train["mask_NP"]],
          train["q_NP"][train["mask_NP"]])[0, 1]),
      "train_mean_abs_mu_minus_pi": float(np.abs(
          train["q_mu_NP"] - train["q_NP"])[train["mask_NP"]].mean()),
      "train_frac_adv_mu_pos": _frac_pos(train["q_mu_NP"], train["mask_NP"]),
      "train_frac_adv_pi_pos": _frac_pos(train["q_NP"], train["mask_NP"]),
      "train_mean_v1_pi": float(train["q_NP"][:, 0].mean()),
      "eval_mse_q_mu": float(((p - ev["q_mu_NP"]) ** 2)[m].mean()),
      "eval_corr_q_mu": float(np.corrcoef(p[m], ev["q_mu_NP"][m])[0, 1]),
      "eval_auroc_outcome": float(metrics.auroc(p_last, ev["outcome_N"])),
  }
  (out / "summary.json").write_text(json.dumps(summary, indent=2))
  print(json.dumps(summary, indent=2))


def _frac_pos(q_NP: np.ndarray, mask_NP: np.ndarray) -> float:
  """Fraction of steps (h >= 1) whose MC value rises: Q(s_h+1) > Q(s_h)."""
  m = mask_NP[:, 1:].astype(bool)
  return float((q_NP[:, 1:] > q_NP[:, :-1])[m].mean())


# The diagnosis of every PAV beam selection (alpha-diagnosis method). -------

_LOG: list[bool] = []
_LAST: dict = {}
_orig_scores = beam_lib.beam_scores
_orig_select = beam_lib.select_top


def _scores(q_new_M, q_parent_M, **kw):
  _LAST["q_new"] = np.asarray(q_new_M)
  _LAST["mode"] = kw.get("mode")
  return _orig_scores(q_new_M, q_parent_M, **kw)


def _select(score_EM, ok_EM, num_keep_E, width):
  idx, keep = _orig_select(score_EM, ok_EM, num_keep_E, width)
  if _LAST.get("mode") != "pav":
    return idx, keep
  p, bc = score_EM.shape
  q_EM = jnp.asarray(_LAST["q_new"].reshape(p, bc))
  idx_q, keep_q = _orig_select(q_EM, ok_EM, num_keep_E, width)
  ok = np.asarray(ok_EM)
  idx, keep, idx_q, keep_q = map(np.asarray, (idx, keep, idx_q, keep_q))
  for e in range(p):
    if ok[e].any():
      _LOG.append(set(idx[e][keep[e]].tolist())
                  != set(idx_q[e][keep_q[e]].tolist()))
  return jnp.asarray(idx), jnp.asarray(keep)


beam_lib.beam_scores = _scores
beam_lib.select_top = _select


def search(seed: int, provers: list[str], out: str, num: int,
           bok_ks: list[float], do_bon: bool, ref: bool = True,
           beam_bok: list[float] | None = None) -> None:
  """Best-of-N and beams with every prover on the same problems and keys."""
  run = _run(BASE)
  config, tok, task = run.config, run.tok, run.task
  settings = comparison.settings_from_config(config)
  graphdef, params = run.load_policy()
  vers = {name: run.load_verifier(name) for name in ("orm", "prm_q")}
  mus = {}
  for name in provers:
    path = pathlib.Path(f"runs/provers_{name}/verifiers/q_mu/params")
    mus[name] = run.load_params_dir(
        path, lambda: train_verifier.verifier.create(
            run.model_cfg, design=config.verifier.design))
  examples = run.examples(config.search.split, num)
  prompts = run.encode_prompts(examples)
  sampler = comparison.make_search_sampler(run, graphdef, settings, examples)
  rng = jax.random.fold_in(run.key("search"), seed)
  ns = sorted(settings.ns)
  res = {"seed": seed, "num_prompts": num, "ns": ns, "alpha": settings.alpha,
         "bon": {}, "beam": {}, "seconds": {}}
  if do_bon:
    t0 = time.time()
    smp = bon.draw_samples(sampler, params, task, tok, examples, prompts,
                           ns[-1], jax.random.fold_in(rng, 0),
                           settings.max_new_tokens, settings.batch_rows)
    kw = dict(pad_id=tok.pad_id, step_id=tok.step_ids, eos_id=tok.eos_id)
    v, msk = bon.score_samples(*vers["orm"], smp, prompts, **kw)
    p_, k_ = smp.correct.shape
    flat = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731
    scores = {"orm": bon.aggregate_steps(flat(v), flat(msk), "last")}
    v, msk = bon.score_samples(*vers["prm_q"], smp, prompts, **kw)
    v2, m2 = flat(v), flat(msk)
    scores["prm_q_min"] = bon.aggregate_steps(v2, m2, "min")
    for k in bok_ks:
      scores[f"pav_min_bo{k:g}"] = bon.pav_min_scores(
          v2, m2, settings.alpha, k)
    for name, gp in mus.items():
      mu, _ = bon.score_samples(*gp, smp, prompts, **kw)
      scores[f"pav_min_{name}"] = bon.pav_min_scores(
          v2, m2, settings.alpha, settings.prover_k, mu_BP=flat(mu),
          prover="q_mu")
    res["bon"]["pass@N"] = [metrics.pass_at_n(smp.correct, n) for n in ns]
    for name, s in scores.items():
      s = np.asarray(s).reshape(p_, k_)
      res["bon"][name] = [metrics.best_of_n(s, smp.correct, n) for n in ns]
    res["seconds"]["bon"] = time.time() - t0
    print("bon", json.dumps(res["bon"]), flush=True)
  cv = CachedVerifier(*vers["prm_q"])
  beams = [("prm_q", "q", "bok", settings.prover_k, None)] if ref else []
  beams += [(f"pav_bo{k:g}", "pav", "bok", k, None)
            for k in (bok_ks if beam_bok is None else beam_bok)]
  beams += [(f"pav_{name}", "pav", "q_mu", settings.prover_k,
             CachedVerifier(*gp)) for name, gp in mus.items()]
  for name, mode, prover, k, pv in beams:
    row = res["beam"].setdefault(name, {"acc": [], "changed": [],
                                        "selections": [], "pool_pass": [],
                                        "seconds": []})
    for n in ns:
      bcfg = beam_lib.BeamConfig(
          beam_size=n, expansions=settings.expansions,
          max_steps=settings.max_steps,
          max_step_tokens=settings.max_step_tokens, mode=mode,
          alpha=settings.alpha, prover_k=k, batch_rows=settings.batch_rows,
          start=settings.beam_start, distinct=False, prover=prover)
      _LOG.clear()
      r = beam_lib.beam_search(sampler, params, cv, prompts, bcfg,
                               jax.random.fold_in(rng, 1000 + n),
                               prover_verifier=pv)
      corr = np.array([task.grade(ex, tok.decode(t))
                       for ex, t in zip(examples, r.responses)], np.float64)
      pool = np.mean([any(task.grade(ex, tok.decode(t)) for t in pl)
                      for ex, pl in zip(examples, r.pools)])
      row["acc"].append(float(corr.mean()))
      row["changed"].append(float(np.mean(_LOG)) if _LOG else None)
      row["selections"].append(len(_LOG))
      row["pool_pass"].append(float(pool))
      row["seconds"].append(float(r.seconds))
      print(f"beam {name} N={n}: acc {corr.mean():.3f} changed "
            f"{row['changed'][-1]} ({len(_LOG)} sel) {r.seconds:.0f} s",
            flush=True)
      pathlib.Path(out).write_text(json.dumps(res, indent=2))
  pathlib.Path(out).write_text(json.dumps(res, indent=2))


def main():
  logging.basicConfig(level=logging.WARNING)
  ap = argparse.ArgumentParser()
  sub = ap.add_subparsers(dest="cmd", required=True)
  a = sub.add_parser("export")
  a.add_argument("src")
  a.add_argument("dst")
  a = sub.add_parser("passk")
  a.add_argument("named", nargs="+")
  a.add_argument("--out", required=True)
  a.add_argument("--num", type=int, default=128)
  a.add_argument("--k", type=int, default=8)
  a = sub.add_parser("qmu")
  a.add_argument("--workdir", required=True)
  a = sub.add_parser("search")
  a.add_argument("--seed", type=int, default=0)
  a.add_argument("--provers", default="weak,same,strong")
  a.add_argument("--out", required=True)
  a.add_argument("--num", type=int, default=100)
  a.add_argument("--bok", default="1,4,16",
                 help="K of the BoK provers (best-of-N; beams unless "
                 "--beam_bok)")
  a.add_argument("--no_bon", action="store_true")
  a.add_argument("--no_ref", action="store_true", help="no PRM-Q beam")
  a.add_argument("--beam_bok", default=None, help="K of the BoK beams "
                 "(default: --bok)")
  args = ap.parse_args()
  _MESH.append(sharding.make_mesh(dict(_config().mesh)))
  with jax.set_mesh(_MESH[0]):
    _dispatch(args)


def _dispatch(args) -> None:
  if args.cmd == "export":
    export(args.src, args.dst)
  elif args.cmd == "passk":
    passk(args.named, args.out, args.num, args.k)
  elif args.cmd == "qmu":
    qmu(args.workdir)
  else:
    search(args.seed, [x for x in args.provers.split(",") if x], args.out,
           args.num, [float(x) for x in args.bok.split(",") if x],
           not args.no_bon, not args.no_ref,
           None if args.beam_bok is None else
           [float(x) for x in args.beam_bok.split(",") if x])


if __name__ == "__main__":
  main()
