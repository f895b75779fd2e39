"""The `rl` stage: online RL of the policy with dense PAV rewards (Sec. 5).

  init      "rft" (paper): SFT of the sft policy on the correct seed
            rollouts of the label stage's train set (their exact tokens,
            deduplicated), a resumable sub-stage in `<workdir>/rl_init/rft`
            shared by every RL arm of the workdir; or "sft": the sft policy.
  verifier  the frozen `prm_q` verifier of the verifiers stage (Q̂^pi of
            every prefix in one pass), prover Best-of-K(pi) in closed form
            (K = c.pav.prover_k); scorer "mc" replaces it by Monte-Carlo
            continuations of the sft policy (verifier-free control) and
            scorer "none" has no dense term (ORM-RL, alpha 0).
  loop      `train_lib.fit` over `train_rl.iteration`: checkpoints of the
            whole RL state (policy, value model, both optimizer states, RNG
            key, iteration = data position) every c.rl.ckpt_every
            iterations, resume after a kill, metrics.jsonl + TensorBoard,
            tqdm; held-out pass@1 every c.rl.eval_every iterations.
  final     pass@N (N = 1, 2, 4, ..., c.rl.passn_max) of the final policy
            vs the init policy on the same prompts and keys; a report
            section (table + accuracy curves vs iterations and vs sampled
            tokens) returned as "report_md".

Outputs in `c.rl.out_dir` (default `<workdir>/rl`): checkpoints/,
metrics.jsonl, tb/, policy_params/, value_params/, eval_init.json,
passn_init.json (the init's evaluations with the settings they were made
from: reused when those are equal, so arms of one experiment may share
them), summary.json, rl_accuracy.png, DONE.json
(by the pipeline).

Randomness: the rollouts draw from the RL state's key (seeded by the `rl`
stream and c.rl.seed), the prompt order from the `rl_prompts` stream and
c.rl.seed, evaluation from the `rl_eval` stream (the same prompts and keys
for every arm, seed and evaluation step, so arms and iterations are
compared on paired samples).
"""

import json
import logging
import os
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from pav_jax import checkpoint as ckpt_lib
from pav_jax import identity
from pav_jax import labelled_set
from pav_jax import metrics as metrics_lib
from pav_jax import report
from pav_jax import rollouts
from pav_jax import run_lib
from pav_jax import sft_lib
from pav_jax import train_lib
from pav_jax import train_rl
from pav_jax import transformer
from pav_jax import verifier as verifier_lib

log = logging.getLogger(__name__)

INITS = ("rft", "sft")
# Keys of c.rl that do not change what the RL loop computes.
_IGNORE = ("stages", "distributed", "mesh", "mesh.*", "*.kill_at_step",
           "*.log_every", "*.ckpt_every", "*.batch_rows", "rl.out_dir",
           "search.*", "label.prompts_per_chunk", "verifier.*")


def rl_config(run: run_lib.Run) -> train_rl.RLConfig:
  """The RLConfig of `c.rl` (prover K from c.pav); checked, naming keys."""
  r = run.config.rl
  if r.init not in INITS:
    raise ValueError(f"unknown rl.init {r.init!r}; known: {INITS}")
  if r.iterations < 1:
    raise ValueError(f"rl.iterations must be >= 1, got {r.iterations}")
  cfg = train_rl.RLConfig(
      alpha=float(r.alpha), prover_k=float(run.pav.prover_k),
      dense=r.dense, scorer=r.scorer, estimator=r.estimator,
      kl_coef=float(r.kl_coef), value_coef=float(r.value_coef),
      prompts_per_iter=int(r.prompts_per_iter),
      samples_per_prompt=int(r.samples_per_prompt),
      max_prompt_len=int(r.max_prompt_len),
      max_new_tokens=int(r.max_new_tokens),
      max_steps=int(r.max_steps), temperature=float(r.temperature),
      policy_lr=float(r.policy_lr), value_lr=float(r.value_lr),
      warmup_steps=int(r.warmup_steps), total_steps=int(r.iterations),
      grad_clip=float(r.grad_clip), weight_decay=0.0,
      mc_samples=int(r.mc_samples))
  train_rl.check_config(cfg)
  return cfg


def out_dir(run: run_lib.Run) -> Path:
  return Path(run.config.rl.out_dir) if run.config.rl.out_dir else (
      run.stage_dir("rl"))


# Init policy ------------------------------------------------------------------


def _rft_identity(run: run_lib.Run) -> dict:
  c = run.config
  return {"seed": c.seed, "task": c.task.to_dict(), "model": c.model.to_dict(),
          "tokenizer": c.tokenizer.to_dict(), "sft": c.sft.to_dict(),
          "rl": {"init": c.rl.init, "rft_steps": c.rl.rft_steps,
                 "rft_learning_rate": c.rl.rft_learning_rate}}


def rft_data(run: run_lib.Run) -> tuple[dict, dict]:
  """SFT arrays of the correct, finished seed rollouts of `label/train`."""
  path = run.stage_dir("label") / "train"
  try:
    ls = labelled_set.load_labelled(
        path, expect=labelled_set.tokenizer_identity(run.tok))
  except labelled_set.LabelledSetError as e:
    raise ValueError(f"rl.init 'rft' needs the label stage's train set: {e}"
                     " (run the label stage, or set rl.init='sft')") from e
  keep = (ls["outcome_N"] > 0.5) & ls["finished_N"].astype(bool)
  if not keep.any():
    raise ValueError(f"rl.init 'rft': no correct seed rollout in {path}")
  data = sft_lib.token_sft_data(
      ls["tokens_NT"][keep], ls["prompt_len_N"][keep],
      ls["response_len_N"][keep], run.config.sft.max_len, run.tok.pad_id)
  info = {"rft_rows": int(len(data["tokens"])),
          "correct_seed_rollouts": int(keep.sum()),
          "seed_rollouts": int(len(keep))}
  return data, info


def init_policy(run: run_lib.Run):
  """(graphdef, params, info) of the initial RL iterate (c.rl.init)."""
  graphdef, params = run.load_policy("sft")
  if run.config.rl.init == "sft":
    return graphdef, params, {"init": "sft"}
  d = run.stage_dir("rl_init") / "rft"
  done = d / "rft.json"
  ident = _rft_identity(run)
  if done.exists():
    info = json.loads(done.read_text())
    if info["identity"] != json.loads(json.dumps(ident)):
      raise ValueError(
          f"{d} holds an RFT init made with other settings (rl.init, "
          "rl.rft_steps, rl.rft_learning_rate, sft.*, model.*): delete it "
          "or use a new --workdir")
    _, params = run.load_params_dir(
        d / "params", lambda: transformer.create(run.model_cfg))
    return graphdef, params, info["info"]
  data, info = rft_data(run)
  t0 = time.time()
  graphdef, params = sft_lib.train(
      run, stage="rl_init/rft", data=data, steps=int(run.config.rl.rft_steps),
      learning_rate=float(run.config.rl.rft_learning_rate),
      init_params=params, config_dict=ident)
  ckpt_lib.save_params(d / "params", params)
  info = dict(info, init="rft", rft_seconds=time.time() - t0)
  if jax.process_index() == 0:
    train_lib.write_json_atomic(done, {"identity": ident, "info": info})
  return graphdef, params, info


# Prompts and evaluation -------------------------------------------------------


def prompt_fn(run: run_lib.Run):
  """iteration -> its prompts_per_iter train examples (per-epoch shuffle)."""
  r = run.config.rl
  pool = run.examples("train", int(r.num_prompts), "rl_prompts")
  p = int(r.prompts_per_iter)
  if p > len(pool):
    raise ValueError(f"rl.prompts_per_iter {p} exceeds rl.num_prompts "
                     f"{len(pool)}")
  per_epoch = len(pool) // p
  seed = run_lib.stream(run.seed, "rl_prompts")

  def fn(step: int):
    epoch, i = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, int(r.seed), epoch]).permutation(
        len(pool))
    return [pool[j] for j in perm[i * p:(i + 1) * p]]

  return fn


def make_eval_fn(run: run_lib.Run, sampler, split: str = "",
                 num: int = 0):
  """`fn(step, policy_params) -> metrics`: pass@1 at temperature 1 on
  c.rl.eval_prompts prompts of c.rl.eval_split.

  The sampling keys are the same at every evaluation and in every arm
  (common random numbers), so a curve point minus the init's is a paired
  difference: with keys folded with the step, the *init* policy alone
  scored 0.358-0.407 across four steps' keys (256 prompts x 4), as large
  as the RL effect being measured.
  """
  r = run.config.rl
  exs = run.examples(split or r.eval_split, num or int(r.eval_prompts))

  def fn(step, policy_params):
    del step  # same keys at every evaluation (see above)
    ev = rollouts.evaluate_policy(
        sampler, policy_params, run.task, run.tok, exs,
        k=int(r.eval_samples), max_new_tokens=int(r.max_new_tokens),
        rng=run.key("rl_eval"),
        batch_rows=int(run.config.eval.batch_rows))
    return {"pass@1": ev.metrics["pass@1"],
            "mean_steps": ev.metrics["mean_steps"],
            "truncated_frac": ev.metrics["truncated_frac"]}

  return fn


def pass_at_n(run: run_lib.Run, sampler, policy_params) -> dict[str, float]:
  """pass@N, N = 1, 2, 4, ..., c.rl.passn_max (unbiased estimator)."""
  r = run.config.rl
  k = int(r.passn_max)
  exs = run.examples(r.eval_split, int(r.passn_prompts))
  ev = rollouts.evaluate_policy(
      sampler, policy_params, run.task, run.tok, exs, k=k,
      max_new_tokens=int(r.max_new_tokens),
      rng=jax.random.fold_in(run.key("rl_eval"), 1_000_003),
      batch_rows=int(run.config.eval.batch_rows))
  c = ev.correct.sum(1)
  out, n = {}, 1
  while n <= k:
    out[str(n)] = float(metrics_lib.pass_at_k(np.full_like(c, k), c, n).mean())
    n *= 2
  return out


# The stage --------------------------------------------------------------------


def _context(run: run_lib.Run, cfg: train_rl.RLConfig, graphdef, params):
  seed = run_lib.stream(run.seed, "rl") + 1000 * int(run.config.rl.seed)
  sampler = run.sampler(graphdef, cache_size=max(
      int(run.config.sample.cache_size), cfg.seq_len))
  kw = {}
  if cfg.scorer == "pav":
    path = run.stage_dir("verifiers") / "prm_q" / "params"
    if not path.exists():
      raise ValueError(
          f"rl.scorer 'pav' needs the frozen prm_q verifier at {path}: run "
          "the verifiers stage first (--config.stages=...,verifiers,rl), or "
          "set rl.scorer='none' with rl.alpha=0 (ORM-RL)")
    kw["verifier_graphdef"], kw["verifier_params"] = load_prm_q(run)
  elif cfg.scorer == "mc":
    kw["mc_sampler"] = run.sampler(graphdef, cache_size=max(
        int(run.config.sample.cache_size), cfg.seq_len + cfg.max_new_tokens))
    kw["prover_params"] = run.load_policy("sft")[1]
  return train_rl.make_context(cfg=cfg, sampler=sampler, policy_params=params,
                               task=run.task, tok=run.tok, mesh=run.mesh,
                               seed=seed, **kw)


def load_prm_q(run: run_lib.Run):
  """(graphdef, params) of the frozen prm_q, whichever verifier design
  (verifier.DESIGNS) it was trained with."""
  try:
    return run.load_verifier("prm_q")
  except ckpt_lib.CheckpointError:
    designs = getattr(verifier_lib, "DESIGNS", ())
    path = run.stage_dir("verifiers") / "prm_q" / "params"
    for d in designs:
      try:
        return run.load_params_dir(
            path, lambda d=d: verifier_lib.create(run.model_cfg, design=d))
      except ckpt_lib.CheckpointError:
        continue
    raise


def read_history(directory: Path) -> list[dict]:
  """metrics.jsonl rows, in step order (one per step and kind)."""
  path = directory / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines()
          if line.strip()]


def curves(history: list[dict], eval_init: dict) -> dict:
  """{'iteration', 'sampled_tokens', 'pass@1'} at each evaluation (0 first).

  sampled_tokens counts every token the policy sampled in rollouts, plus the
  MC control's continuation tokens (its scoring cost), up to that iteration.
  """
  tokens_at, total = {0: 0.0}, 0.0
  for row in history:
    if "sampled_tokens" in row:
      total += row["sampled_tokens"] + row.get("score_sampled_tokens", 0.0)
      tokens_at[row["step"]] = total
  out = {"iteration": [0], "sampled_tokens": [0.0],
         "pass@1": [eval_init["pass@1"]]}
  for row in history:
    if "eval/pass@1" in row:
      out["iteration"].append(row["step"])
      out["sampled_tokens"].append(tokens_at.get(row["step"], total))
      out["pass@1"].append(row["eval/pass@1"])
  return out


def init_metrics(path: Path, made_from: dict,
                 compute: Callable[[], dict]) -> dict:
  """The init policy's evaluation, cached at `path` with what it was made
  from: reused (on rerun, or copied in from another arm of an experiment)
  only when `made_from` is equal, recomputed otherwise."""
  made_from = identity.normalize(made_from)
  if path.exists():
    stored = json.loads(path.read_text())
    if isinstance(stored, dict) and stored.get("made_from") == made_from:
      return stored["metrics"]
    log.info("%s was made with other settings: recomputing", path)
  metrics = compute()
  if jax.process_index() == 0:
    train_lib.write_json_atomic(path, {"made_from": made_from,
                                       "metrics": metrics})
  return metrics


def run_rl(run: run_lib.Run) -> dict:
  """RFT/SFT init -> RL iterations (resumable) -> evaluation and report."""
  c, r = run.config, run.config.rl
  cfg = rl_config(run)
  odir = out_dir(run)
  t0 = time.time()
  graphdef, init_params, init_info = init_policy(run)
  ctx, state = _context(run, cfg, graphdef, init_params)
  eval_fn = make_eval_fn(run, ctx.sampler)
  odir.mkdir(parents=True, exist_ok=True)
  made_from = {"init": init_info, "eval_split": r.eval_split,
               "max_new_tokens": int(r.max_new_tokens),
               "batch_rows": int(c.eval.batch_rows)}
  eval_init = init_metrics(
      odir / "eval_init.json",
      dict(made_from, prompts=int(r.eval_prompts), k=int(r.eval_samples)),
      lambda: eval_fn(0, ctx.ref_params))
  prompts = prompt_fn(run)
  t_loop = time.time()
  state = train_lib.fit(
      stage_dir=odir, state=state, state_shardings=ctx.state_shardings,
      train_step=lambda s, exs: train_rl.iteration(ctx, s, exs),
      batch_fn=prompts,
      loop=train_lib.LoopConfig(
          num_steps=int(r.iterations), ckpt_every=int(r.ckpt_every),
          log_every=int(r.log_every), eval_every=int(r.eval_every),
          kill_at_step=int(r.kill_at_step), dead_check_steps=0),
      eval_fn=lambda step, params: eval_fn(step, params["policy"]),
      config_dict=c.to_dict(), desc="rl", identity_ignore=_IGNORE)
  loop_s = time.time() - t_loop
  history = read_history(odir)
  if not any(row.get("step") == int(r.iterations) and "eval/pass@1" in row
             for row in history):  # the last iteration is always evaluated
    final = eval_fn(int(r.iterations), state["params"]["policy"])
    writer = train_lib.MetricWriter(odir)
    writer.write(int(r.iterations), {f"eval/{k}": v for k, v in final.items()})
    writer.close()
    history = read_history(odir)
  ckpt_lib.save_params(odir / "policy_params", state["params"]["policy"])
  ckpt_lib.save_params(odir / "value_params", state["params"]["value"])
  curve = curves(history, eval_init)
  passn = {}
  if int(r.passn_max) > 0:
    passn_init = init_metrics(
        odir / "passn_init.json",
        dict(made_from, prompts=int(r.passn_prompts), k=int(r.passn_max)),
        lambda: pass_at_n(run, ctx.sampler, ctx.ref_params))
    passn = {"init": passn_init,
             "final": pass_at_n(run, ctx.sampler, state["params"]["policy"])}
  val_acc = None
  if int(r.val_prompts) > 0:  # for choosing alpha on validation
    val_fn = make_eval_fn(run, ctx.sampler, split="validation",
                          num=int(r.val_prompts))
    val_acc = val_fn(
        int(r.iterations), state["params"]["policy"])["pass@1"]
  train_rows = [row for row in history if "accuracy" in row]
  timing = {k: float(np.mean([row[k] for row in train_rows]))
            for k in ("rollout_s", "score_s", "update_s") if train_rows}
  result = {
      "arm": {"alpha": cfg.alpha, "dense": cfg.dense, "scorer": cfg.scorer,
              "estimator": cfg.estimator, "init": r.init, "seed": int(r.seed),
              "prover_k": cfg.prover_k},
      "init": init_info, "eval_init": eval_init,
      "final_pass@1": curve["pass@1"][-1], "curve": curve, "pass@n": passn,
      "final_validation_pass@1": val_acc,
      "train_accuracy_last10": float(np.mean(
          [row["accuracy"] for row in train_rows[-10:]])) if train_rows
      else 0.0,
      "mean_iteration_s": timing, "loop_seconds": loop_s,
      "seconds": time.time() - t0,
  }
  if jax.process_index() == 0:
    train_lib.write_json_atomic(odir / "summary.json", result)
  result["report_md"] = report.rl_section(
      result, odir, os.path.relpath(odir.absolute(), run.workdir.absolute()))
  return result
