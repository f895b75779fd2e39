"""Verifiers from MC labels: ORM, PRM-Q (Q^π), Q^μ, direct A^μ; evaluation.

One trainer for every verifier (big_vision style: data, model, step, loop,
export, eval). A verifier is `verifier.Verifier` (an LM backbone + scalar
head; `c.verifier.design` "lp_features" adds the LM's response log-probs as
features), scored at every step boundary in one teacher-forced pass. The
backbone is a STRONG model (`c.verifier.strong_sft_steps` > 0): the SFT
policy trained further on the reference solutions, inside this stage, into
`<workdir>/verifiers/strong/` (resumable, the SFT trainer core of
`sft_lib`); 0 starts from the policy. Batches hold whole questions (all
their labelled rollouts) so that a Bradley-Terry ranking term
(`c.verifier.rank_weight`) can order prefixes of one question. Kinds:

  orm       BCE of the logit at the last boundary vs the outcome.
  prm_q     BCE with soft targets Q̂^π at every boundary, class-balanced
            (prefixes with Q̂ < 0.5 and Q̂ >= 0.5 weigh equally).
  q_mu      as prm_q with Q̂^μ targets (a checkpoint prover).
  a_direct  beyond the paper: tanh(logit) regresses A^{BoK(π)} (MSE).

PAV = prm_q + the closed-form BoK advantage (or q_mu for a checkpoint
prover): score Q̂^π + α·Â^μ. Writes `<workdir>/verifiers/<name>/` (checkpoints,
metrics.jsonl, tb/, params/) and plots + eval.json under `<workdir>/verifiers/`.
"""

import json
import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pav_jax import advantages
from pav_jax import checkpoint as ckpt_lib
from pav_jax import labelled_set
from pav_jax import losses
from pav_jax import metrics as metrics_lib
from pav_jax import rollouts
from pav_jax import run_lib
from pav_jax import sft_lib
from pav_jax import sharding as sharding_lib
from pav_jax import train_lib
from pav_jax import transformer
from pav_jax import verifier

log = logging.getLogger(__name__)

KINDS = ("orm", "prm_q", "q_mu", "a_direct")


# Data ------------------------------------------------------------------------


def valid_mask(data: dict) -> np.ndarray:
  """Real tokens of each stored trajectory (prompt + response)."""
  t = data["tokens_NT"].shape[1]
  end_N = np.minimum(data["prompt_len_N"] + data["response_len_N"], t)
  return np.arange(t)[None, :] < end_N[:, None]


def training_arrays(data: dict, kind: str, prover_k: float = 4.0,
                    first_pit_high: float = 0.0) -> dict:
  """Per-row model inputs and per-prefix targets/masks/weights of a kind.

  first_pit_high > 0 keeps, for the step-level kinds, only the "first pit"
  prefixes of failing seeds (`advantages.first_pit_selection`); a failing
  seed without a pit keeps all its prefixes, as the labeller's
  `c.label.first_pit` does (the paper drops only post-pit prefixes).
  """
  mask_NP = data["mask_NP"].astype(bool)
  if first_pit_high > 0 and kind != "orm":
    mask_NP = np.asarray(advantages.first_pit_selection(
        jnp.asarray(data["q_NP"]), jnp.asarray(mask_NP),
        jnp.asarray(data["outcome_N"]), first_pit_high, keep_no_pit=True))
  p = mask_NP.shape[1]
  if kind == "orm":
    last_N = data["num_prefixes_N"] - 1
    mask_NP = np.arange(p)[None, :] == last_N[:, None]
    target_NP = np.broadcast_to(data["outcome_N"][:, None], mask_NP.shape)
    weight_NP = np.asarray(advantages.class_balance_weights(
        jnp.asarray(target_NP), jnp.asarray(mask_NP)))
  elif kind in ("prm_q", "q_mu"):
    key = "q_NP" if kind == "prm_q" else "q_mu_NP"
    if key not in data:
      raise ValueError(
          f"verifier {kind} needs {key}: label with a prover checkpoint")
    target_NP = data[key]
    weight_NP = np.asarray(advantages.class_balance_weights(
        jnp.asarray(target_NP), jnp.asarray(mask_NP)))
  elif kind == "a_direct":
    target_NP = np.asarray(advantages.prover_advantages(
        jnp.asarray(data["q_NP"]), jnp.asarray(mask_NP), prover_k))
    mask_NP = mask_NP & (np.arange(p)[None, :] >= 1)
    weight_NP = np.ones_like(target_NP)
  else:
    raise ValueError(f"unknown verifier kind {kind!r}; known: {KINDS}")
  valid_NT = valid_mask(data)
  # Drop all-pad columns (rounded up to a multiple of 8): cheaper steps.
  t = min(valid_NT.shape[1], -(-int(valid_NT.sum(1).max()) // 8) * 8)
  return {
      "tokens": data["tokens_NT"][:, :t].astype(np.int32),
      "valid": valid_NT[:, :t],
      "prompt_len": data["prompt_len_N"].astype(np.int32),
      "target": np.asarray(target_NP, np.float32),
      "mask": np.asarray(mask_NP, bool),
      "weight": np.asarray(weight_NP, np.float32),
      "prompt_index": np.asarray(data["prompt_index_N"], np.int32),
  }


def grouped_batch_fn(arrays: dict, batch_size: int, seed: int):
  """Deterministic batches of whole questions: step -> batch dict.

  Each batch holds batch_size // W questions (W = most rows of a question)
  with all their rows; a question with fewer rows repeats them with
  `real` False (no loss). `group` numbers the questions of a batch (the
  ranking loss pairs prefixes of one group only).
  """
  pidx_N = arrays["prompt_index"]
  uniq = np.unique(pidx_N)
  rows = {int(q): np.flatnonzero(pidx_N == q) for q in uniq}
  width = max(len(x) for x in rows.values())
  per_batch = max(1, min(batch_size // width, len(uniq)))
  per_epoch = len(uniq) // per_batch
  keys = [k for k in arrays if k != "prompt_index"]

  def fn(step: int) -> dict[str, np.ndarray]:
    epoch, i = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(uniq)
    qs = perm[i * per_batch:(i + 1) * per_batch]
    idx = np.concatenate([np.resize(rows[int(q)], width) for q in qs])
    out = {k: arrays[k][idx] for k in keys}
    out["real"] = np.concatenate(
        [np.arange(width) < len(rows[int(q)]) for q in qs])
    out["group"] = np.repeat(np.arange(len(qs), dtype=np.int32), width)
    return out

  return fn


# Model and loss -------------------------------------------------------------


def boundary_logits(graphdef, params, tokens_BT, valid_BT, prompt_len_B, *,
                    step_id: int, eos_id: int, num_prefixes: int):
  """Value logits at every prefix boundary, one pass: (logit_BP, mask_BP)."""
  return verifier.boundary_logits(
      graphdef, params, tokens_BT, valid_BT, prompt_len_B, step_id=step_id,
      eos_id=eos_id, num_prefixes=num_prefixes)


def make_loss(kind: str, *, step_id: int, eos_id: int, num_prefixes: int,
              rank_weight: float = 0.0, rank_margin: float = 0.25):
  """loss_fn(graphdef, params, batch, rng) -> (loss, metrics) for train_lib.

  Class-balanced soft BCE (MSE on tanh for a_direct), plus rank_weight *
  the pairwise ranking loss among prefixes of one question (batch "group";
  batches without one are one group per row).
  """

  def loss_fn(graphdef, params, batch, rng):
    del rng
    logit_BP, seen_BP = boundary_logits(
        graphdef, params, batch["tokens"], batch["valid"], batch["prompt_len"],
        step_id=step_id, eos_id=eos_id, num_prefixes=num_prefixes)
    mask_BP = batch["mask"] & seen_BP
    if "real" in batch:
      mask_BP = mask_BP & batch["real"][:, None]
    if kind == "a_direct":
      pred_BP = jnp.tanh(logit_BP)
      loss = losses.masked_mean(
          batch["weight"] * jnp.square(pred_BP - batch["target"]), mask_BP)
    else:
      pred_BP = jax.nn.sigmoid(logit_BP)
      loss = losses.sigmoid_bce(logit_BP, batch["target"], mask_BP,
                                batch["weight"])
    metrics = {"mae": losses.masked_mean(jnp.abs(pred_BP - batch["target"]),
                                         mask_BP),
               "prefixes": jnp.sum(mask_BP.astype(jnp.float32)),
               "value_loss": loss}
    if rank_weight:
      group_B = batch.get("group", jnp.arange(logit_BP.shape[0]))
      rank = losses.pairwise_ranking(logit_BP, batch["target"], mask_BP,
                                     group_B, rank_margin)
      loss = loss + rank_weight * rank
      metrics["rank_loss"] = rank
    if "lp_w" in params:
      metrics["lp_w_sum"] = params["lp_w"][0]
      metrics["lp_w_min"] = params["lp_w"][1]
    return loss, metrics

  return loss_fn


def scale_backbone_updates(scale: float) -> optax.GradientTransformation:
  """Multiplies the updates of params["backbone"] by `scale` (the head and
  lp_w keep the full learning rate)."""

  def update(updates, state, params=None):
    del params
    if scale == 1.0 or "backbone" not in updates:
      return updates, state
    return dict(updates, backbone=jax.tree.map(lambda u: u * scale,
                                               updates["backbone"])), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def train(*, stage_dir: Path, kind: str, arrays: dict, model_cfg, mesh,
          policy_params, steps: int, batch_size: int, learning_rate: float,
          step_id: int, eos_id: int, seed: int = 0, ckpt_every: int = 100,
          log_every: int = 25, config_dict: dict | None = None,
          design: str = verifier.DEFAULT_DESIGN, rank_weight: float = 0.0,
          rank_margin: float = 0.25, backbone_lr_scale: float = 1.0,
          group_batches: bool = True):
  """Trains one verifier (resuming from stage_dir); returns (graphdef, params).

  `policy_params` initialise the backbone (the policy or the strong model);
  None keeps a random init. With group_batches, batches hold whole
  questions (`grouped_batch_fn`, batch_size rows at most).
  """
  tx = optax.chain(
      train_lib.make_optimizer(train_lib.OptimConfig(
          learning_rate=learning_rate, warmup_steps=max(steps // 10, 1),
          total_steps=steps)),
      scale_backbone_updates(backbone_lr_scale))
  state, shardings, graphdef = train_lib.init_state(
      lambda: verifier.create(model_cfg, seed=seed, design=design), tx, mesh,
      seed)
  if policy_params is not None:
    init = verifier.params_from_policy(policy_params, model_cfg, design)
    state["params"] = jax.device_put(init, shardings["params"])
  loss_fn = make_loss(kind, step_id=step_id, eos_id=eos_id,
                      num_prefixes=arrays["mask"].shape[1],
                      rank_weight=rank_weight, rank_margin=rank_margin)
  step_fn = train_lib.make_train_step(graphdef, loss_fn, tx, shardings, mesh)
  if group_batches and "prompt_index" in arrays:
    batches = grouped_batch_fn(arrays, batch_size, seed)
  else:
    batches = run_lib.batch_fn(
        {k: v for k, v in arrays.items() if k != "prompt_index"}, batch_size,
        seed)
  state = train_lib.fit(
      stage_dir=stage_dir, state=state, state_shardings=shardings,
      train_step=step_fn, batch_fn=batches,
      loop=train_lib.LoopConfig(num_steps=steps, ckpt_every=ckpt_every,
                                log_every=log_every),
      config_dict=config_dict, desc=f"verifier/{kind}",
      batch_sharding=sharding_lib.batch_sharding(mesh))
  return graphdef, state["params"]


def predict(graphdef, params, arrays: dict, *, kind: str, step_id: int,
            eos_id: int, batch_size: int = 64) -> np.ndarray:
  """Per-prefix predictions: probability (sigmoid) or advantage (tanh)."""
  p = arrays["mask"].shape[1]
  fn = jax.jit(lambda prm, t, v, pl: boundary_logits(
      graphdef, prm, t, v, pl, step_id=step_id, eos_id=eos_id,
      num_prefixes=p)[0])
  n = len(arrays["tokens"])
  out = []
  for lo in range(0, n, batch_size):
    idx = np.arange(lo, lo + batch_size) % n  # static batch shape
    out.append(np.asarray(fn(params, arrays["tokens"][idx],
                             arrays["valid"][idx], arrays["prompt_len"][idx]))
               [: min(batch_size, n - lo)])
  logit_NP = np.concatenate(out)
  if kind == "a_direct":
    return np.tanh(logit_NP)
  return 1 / (1 + np.exp(-logit_NP))


# Ranking diagnostics (host numpy) ---------------------------------------------


def _boundary_ends(data: dict, step_id, eos_id: int) -> list[np.ndarray]:
  """Token index closing each prefix s_1, s_2, ... of every row."""
  valid_NT = valid_mask(data)
  out = []
  for t_T, pl, v_T in zip(data["tokens_NT"], data["prompt_len_N"], valid_NT):
    col = np.arange(len(t_T))
    ends_T = np.isin(t_T, np.atleast_1d(np.asarray(step_id))) | (t_T == eos_id)
    resp = (col >= pl) & v_T & ends_T
    out.append(np.concatenate([[pl - 1], np.flatnonzero(resp)]))
  return out


def sibling_accuracy(pred_NP: np.ndarray, data: dict, *, step_id,
                     eos_id: int, margin: float = 0.25) -> tuple[float, int]:
  """Within-parent ranking accuracy: (accuracy, pairs).

  Siblings are two rows of one question with the same tokens up to the
  end of prefix h - 1 (one parent) but different step h, both with an MC
  Q̂ at prefix h differing by >= margin; a pair is right when the
  predicted values order them as Q̂ does. NaN when there are no pairs.
  """
  mc_NP = data["mask_NP"].astype(bool) & (data["count_NP"] > 0)
  q_NP, tok_NT = data["q_NP"], data["tokens_NT"]
  ends = _boundary_ends(data, step_id, eos_id)
  by_q: dict[int, list[int]] = {}
  for i, qi in enumerate(data["prompt_index_N"]):
    by_q.setdefault(int(qi), []).append(i)
  good = total = 0
  for rows in by_q.values():
    for a, i in enumerate(rows):
      for j in rows[a + 1:]:
        for h in range(1, min(len(ends[i]), len(ends[j]), q_NP.shape[1])):
          if not (mc_NP[i, h] and mc_NP[j, h]):
            continue
          if abs(q_NP[i, h] - q_NP[j, h]) < margin:
            continue
          e_i, e_j = ends[i][h - 1], ends[j][h - 1]
          same_parent = e_i == e_j and np.array_equal(tok_NT[i, :e_i + 1],
                                                      tok_NT[j, :e_j + 1])
          same_step = (ends[i][h] == ends[j][h] and np.array_equal(
              tok_NT[i, :ends[i][h] + 1], tok_NT[j, :ends[j][h] + 1]))
          if same_parent and not same_step:
            total += 1
            good += (pred_NP[i, h] - pred_NP[j, h]) * (
                q_NP[i, h] - q_NP[j, h]) > 0
  return (good / total if total else float("nan")), total


def top1_diagnostics(score_N: np.ndarray, data: dict) -> dict:
  """Best-of-n over each question's labelled rollouts (n = its rows).

  top1_acc: accuracy of the top-scored rollout (ties: first); random: mean
  outcome; fp_rate: how often the top-1 is wrong among questions with both
  a right and a wrong rollout; auroc_within: mean AUROC inside those.
  """
  y_N = data["outcome_N"] > 0.5
  by_q: dict[int, list[int]] = {}
  for i, qi in enumerate(data["prompt_index_N"]):
    by_q.setdefault(int(qi), []).append(i)
  top, fp, within = [], [], []
  for rows in by_q.values():
    r = np.asarray(rows)
    pick = r[int(np.argmax(score_N[r]))]
    top.append(y_N[pick])
    if 0 < y_N[r].sum() < len(r):
      fp.append(not y_N[pick])
      within.append(metrics_lib.auroc(score_N[r], y_N[r]))
  nan = float("nan")
  return {"top1_acc": float(np.mean(top)), "random": float(y_N.mean()),
          "fp_rate": float(np.mean(fp)) if fp else nan,
          "auroc_within": float(np.mean(within)) if within else nan,
          "mixed_questions": len(fp)}


# Evaluation (host numpy; metrics in `metrics.py`) ---------------------------


def evaluate(preds: dict, data: dict, *, alpha: float, prover_k: float,
             out_dir: Path, step_id: int | None = None,
             eos_id: int | None = None) -> tuple[dict, str]:
  """Calibration, per-step AUROC, advantage correlation, Fig. 10, and (with
  step_id / eos_id) sibling ranking accuracy and top-1-of-n diagnostics;
  plots + md."""
  # matplotlib is imported here, not at the top: it costs ~1 s and every
  # stage module is imported by the pipeline (and by tests) at start-up.
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  mask = data["mask_NP"].astype(bool)
  mc = mask & (data["count_NP"] > 0)
  y = data["outcome_N"]
  p = mask.shape[1]
  q_pi = preds["prm_q"]
  q_mu = jnp.asarray(preds["q_mu"]) if "q_mu" in preds else None
  a_mu = np.asarray(advantages.prover_advantages(
      jnp.asarray(q_pi), jnp.asarray(mask), prover_k, q_mu_NP=q_mu))
  pav = np.asarray(advantages.effective_reward(q_pi, a_mu, alpha))
  a_mc = np.asarray(advantages.prover_advantages(
      jnp.asarray(data["q_NP"]), jnp.asarray(mask), prover_k))
  has_steps = min(p, int(data["num_prefixes_N"].max()))
  scores = {"orm": preds["orm"], "prm_q": q_pi, "pav": pav}
  if "a_direct" in preds:
    scores["pav_direct"] = np.asarray(
        advantages.effective_reward(q_pi, preds["a_direct"], alpha))
  metrics = {"auroc": {k: [] for k in scores}, "ece_by_step": [],
             "fig10": {"pqv": [], "pav": []}, "rows": int(len(y))}
  val = data["prompt_index_N"] % 2 == 0
  for h in range(has_steps):
    m = mask[:, h]
    for k, s in scores.items():
      metrics["auroc"][k].append(metrics_lib.auroc(s[m, h], y[m]))
    metrics["ece_by_step"].append(metrics_lib.calibration(q_pi[mc[:, h], h],
                                              data["q_NP"][mc[:, h], h])[4]
                                  if mc[:, h].any() else float("nan"))
    for name, s in (("pqv", q_pi), ("pav", pav)):
      mv, mt = m & val, m & ~val
      metrics["fig10"][name].append(metrics_lib.best_threshold_error(
          s[mv, h], y[mv], s[mt, h], y[mt]))
  _, mp, mt, cnt, ece = metrics_lib.calibration(q_pi[mc], data["q_NP"][mc])
  metrics["ece"] = ece
  step_m = mc & (np.arange(p)[None, :] >= 1)
  step_m &= np.concatenate([np.zeros_like(mc[:, :1]), mc[:, :-1]], axis=1) | ~mc
  metrics["adv_corr"] = (
      float(np.corrcoef(a_mu[step_m], a_mc[step_m])[0, 1])
      if step_m.sum() > 2 else float("nan"))
  if "a_direct" in preds:
    metrics["adv_corr_direct"] = (
        float(np.corrcoef(preds["a_direct"][step_m], a_mc[step_m])[0, 1])
        if step_m.sum() > 2 else float("nan"))
  metrics["outcome_auroc_last"] = {
      k: metrics_lib.auroc(s[np.arange(len(y)), data["num_prefixes_N"] - 1], y)
      for k, s in scores.items()}

  last_N = data["num_prefixes_N"] - 1
  metrics["top1"] = {k: top1_diagnostics(sc[np.arange(len(y)), last_N], data)
                     for k, sc in scores.items()}
  if step_id is not None:
    metrics["sibling_acc"], metrics["sibling_pairs"] = {}, 0
    for k in ("prm_q", "pav"):
      acc, n = sibling_accuracy(scores[k], data, step_id=step_id,
                                eos_id=eos_id)
      metrics["sibling_acc"][k], metrics["sibling_pairs"] = acc, n

  out_dir.mkdir(parents=True, exist_ok=True)
  fig, ax = plt.subplots(figsize=(4, 4))
  ax.plot([0, 1], [0, 1], "k:", lw=1)
  ok = cnt > 0
  ax.plot(mp[ok], mt[ok], "o-", label=f"PRM-Q (ECE {ece:.3f})")
  ax.set(xlabel="predicted Q^π", ylabel="MC Q̂^π", title="Per-step calibration")
  ax.legend()
  fig.tight_layout()
  fig.savefig(out_dir / "calibration.png", dpi=100)
  plt.close(fig)
  fig, axs = plt.subplots(1, 2, figsize=(9, 3.5))
  hs = np.arange(has_steps)
  for k, v in metrics["auroc"].items():
    axs[0].plot(hs, v, "o-", label=k)
  axs[0].set(xlabel="prefix index h (0 = question)", ylabel="AUROC vs outcome",
             title="Ranking quality per step")
  axs[0].legend()
  axs[1].plot(hs, metrics["fig10"]["pqv"], "o-", label="Q̂^π")
  axs[1].plot(hs, metrics["fig10"]["pav"], "s-", label=f"Q̂^π + {alpha}·Â^μ")
  axs[1].set(xlabel="prefix index h", ylabel="outcome-prediction error",
             title="Fig. 10 analogue (test split)")
  axs[1].legend()
  fig.tight_layout()
  fig.savefig(out_dir / "ranking_fig10.png", dpi=100)
  plt.close(fig)

  def fmt(v):
    return "—" if not np.isfinite(v) else f"{v:.3f}"
  md = ["| h | n | " + " | ".join(f"AUROC {k}" for k in scores)
        + " | ECE PRM-Q | err Q̂^π | err PAV |",
        "|---" * (len(scores) + 5) + "|"]
  for h in range(has_steps):
    md.append(f"| {h} | {int(mask[:, h].sum())} | "
              + " | ".join(fmt(metrics["auroc"][k][h]) for k in scores)
              + f" | {fmt(metrics['ece_by_step'][h])} | "
              f"{fmt(metrics['fig10']['pqv'][h])} | "
              f"{fmt(metrics['fig10']['pav'][h])} |")
  md.append("")
  md.append(f"Overall ECE of PRM-Q vs MC Q̂^π: {ece:.3f}. "
            "Correlation of predicted "
            f"vs MC A^μ (BoK K={prover_k:g}): {metrics['adv_corr']:.3f}"
            + (f"; direct A^μ head: {metrics['adv_corr_direct']:.3f}"
               if "adv_corr_direct" in metrics else "") + ".")
  md.append("")
  md.append("| scorer | outcome AUROC (last) | AUROC within question "
            "| top-1 acc | random | top-1 false-positive rate "
            "| sibling acc |")
  md.append("|---|---|---|---|---|---|---|")
  for k in scores:
    t1 = metrics["top1"][k]
    sib = metrics.get("sibling_acc", {}).get(k, float("nan"))
    md.append(f"| {k} | {fmt(metrics['outcome_auroc_last'][k])} | "
              f"{fmt(t1['auroc_within'])} | {fmt(t1['top1_acc'])} | "
              f"{fmt(t1['random'])} | {fmt(t1['fp_rate'])} | {fmt(sib)} |")
  md.append("")
  n_questions = max(len(set(data["prompt_index_N"].tolist())), 1)
  md.append(f"Top-1 of each question's {len(y) // n_questions} "
            f"labelled rollouts ({metrics['top1']['orm']['mixed_questions']} "
            "questions with right and wrong ones); sibling pairs (same "
            f"parent prefix, MC Q̂ apart by >= 0.25): "
            f"{metrics.get('sibling_pairs', 0)}.")
  md.append("")
  md.append("![calibration](verifiers/calibration.png) "
            "![ranking](verifiers/ranking_fig10.png)")
  return metrics, "\n".join(md)


# The stage ------------------------------------------------------------------


def _identity_sections(config) -> dict:
  """The config a verifier's checkpoints are made from (resume compares it):
  not the search / RL / eval settings, which may change mid-training."""
  c = config.to_dict()
  return {k: c[k] for k in ("seed", "task", "tokenizer", "model", "sft",
                            "label", "verifier", "pav") if k in c}


def _strong_identity(config) -> dict:
  """What the strong model is made from: not the verifier heads' knobs."""
  c = config.to_dict()
  out = {k: c[k] for k in ("seed", "task", "tokenizer", "model", "sft")
         if k in c}
  out["strong"] = {k: c["verifier"][k] for k in ("strong_sft_steps",
                                                 "strong_learning_rate")}
  return out


def strong_model(run: run_lib.Run, policy_params) -> tuple[object, dict]:
  """The verifiers' backbone: (params, info).

  `c.verifier.strong_sft_steps` > 0: the policy trained that many more SFT
  steps on the reference solutions at `strong_learning_rate` (the sft_lib
  trainer: checkpoints and resume under `verifiers/strong/`, exported to
  `verifiers/strong/params`, then evaluated on the test prompts); 0: the
  policy itself.
  """
  vc, config = run.config.verifier, run.config
  steps = int(vc.strong_sft_steps)
  if steps <= 0:
    return policy_params, {"strong_sft_steps": 0}
  out = run.stage_dir("verifiers") / "strong"
  info_path = out / "eval.json"
  t0 = time.time()
  if (out / "params").exists() and info_path.exists():
    info = json.loads(info_path.read_text())
    made = (info.get("strong_sft_steps"),
            info.get("strong_learning_rate", vc.strong_learning_rate))
    if made != (steps, vc.strong_learning_rate):
      raise ValueError(
          f"{out} holds a strong model of (steps, lr) = {made}, the config "
          f"asks for {(steps, vc.strong_learning_rate)}: delete {out} to "
          "retrain it")
    _, params = run.load_params_dir(
        out / "params", lambda: transformer.create(run.model_cfg))
    return params, info
  train = run.examples("train", config.task.num_train)
  data = sft_lib.encode_sft(run.tok, [run.task.prompt(e) for e in train],
                            [e.solution for e in train], config.sft.max_len)
  graphdef, params = sft_lib.train(
      run, stage="verifiers/strong", data=data, steps=steps,
      learning_rate=vc.strong_learning_rate, init_params=policy_params,
      config_dict=_strong_identity(config))
  ckpt_lib.save_params(out / "params", params)
  test = run.examples("test", config.eval.num_prompts)
  k = min(4, config.eval.samples_per_prompt)
  ev = rollouts.evaluate_policy(
      run.sampler(graphdef), params, run.task, run.tok, test, k=k,
      max_new_tokens=config.sample.max_new_tokens,
      rng=run.key("policy_eval"), batch_rows=config.eval.batch_rows)
  info = {"strong_sft_steps": steps,
          "strong_learning_rate": vc.strong_learning_rate,
          "strong_test": ev.metrics,
          "strong_seconds": time.time() - t0, "eval_samples": k}
  if jax.process_index() == 0:
    info_path.write_text(json.dumps(info, indent=2, default=float))
  return params, info


def run_verifiers(run: run_lib.Run) -> dict:
  """Stage "verifiers": strong model, ORM, PRM-Q (+Q^mu, A-direct), export,
  evaluate."""
  t0 = time.time()
  config, workdir = run.config, run.workdir
  _, policy_params = run.load_policy()
  tok = run.tok
  step_ids = tok.step_ids  # every step-end id (issue 13)
  expect = labelled_set.tokenizer_identity(tok)
  train_data = labelled_set.load_labelled(workdir / "label" / "train", expect)
  eval_data = labelled_set.load_labelled(workdir / "label" / "eval", expect)
  vc = config.verifier
  k, alpha = run.pav.prover_k, run.pav.alpha
  kinds = ["orm", "prm_q"]
  if "q_mu_NP" in train_data:
    kinds.append("q_mu")
  if vc.a_direct:
    kinds.append("a_direct")
  out_dir = run.stage_dir("verifiers")
  backbone, strong_info = strong_model(run, policy_params)
  t_strong = time.time() - t0
  preds, summary, notes = {}, {"kinds": kinds, "design": vc.design}, []
  summary.update(strong_info)
  for kind in kinds:
    arrays = training_arrays(train_data, kind, k,
                             config.label.get("first_pit_high", 0.0))
    graphdef, params = train(
        stage_dir=out_dir / kind, kind=kind, arrays=arrays,
        model_cfg=run.model_cfg, mesh=run.mesh, policy_params=backbone,
        steps=vc.steps, batch_size=vc.batch_size,
        learning_rate=vc.learning_rate,
        step_id=step_ids, eos_id=tok.eos_id, seed=config.seed,
        ckpt_every=vc.ckpt_every, config_dict=_identity_sections(config),
        design=vc.design, rank_weight=vc.rank_weight,
        rank_margin=vc.rank_margin, backbone_lr_scale=vc.backbone_lr_scale,
        group_batches=vc.group_batches)
    ckpt_lib.save_params(out_dir / kind / "params", params)
    dead = train_lib.read_train_summary(out_dir / kind) or {}
    if dead.get("dead_gradient"):
      summary[f"{kind}/dead_gradient"] = True
      notes.append(f"**Warning: verifier `{kind}` did not train** "
                      f"({dead.get('dead_reason', 'no gradient')}).")
    if "lp_w" in params:
      summary[f"{kind}/lp_w"] = np.asarray(params["lp_w"]).tolist()
    ev_kind = ("prm_q" if kind == "q_mu" and "q_mu_NP" not in eval_data
               else kind)
    ev_arrays = training_arrays(eval_data, ev_kind, k)
    preds[kind] = predict(graphdef, params, ev_arrays, kind=kind,
                          step_id=step_ids, eos_id=tok.eos_id)
  metrics, md = evaluate(preds, eval_data, alpha=alpha, prover_k=k,
                         out_dir=out_dir, step_id=step_ids,
                         eos_id=tok.eos_id)
  summary.update(metrics, seconds=time.time() - t0,
                 strong_stage_seconds=t_strong,
                 train_prefixes=int(train_data["mask_NP"].sum()),
                 eval_rows=int(len(eval_data["outcome_N"])))
  if jax.process_index() == 0:
    (out_dir / "eval.json").write_text(
        json.dumps(summary, indent=2, default=float))
  if vc.strong_sft_steps > 0:
    st = strong_info.get("strong_test", {})
    strong_md = (f"Backbone: the policy after {vc.strong_sft_steps} more SFT "
                 f"steps (lr {vc.strong_learning_rate:g}), test pass@1 "
                 f"{st.get('pass@1', float('nan')):.3f}. ")
  else:
    strong_md = "Backbone: the policy. "
  summary["report_md"] = (
      f"Verifiers ({', '.join(kinds)}; design `{vc.design}`"
      + (f", ranking weight {vc.rank_weight:g}" if vc.rank_weight else "")
      + f"), {vc.steps} steps each, evaluated on "
      f"{summary['eval_rows']} held-out rollouts; PAV = Q̂^π + {alpha}·Â^μ with "
      f"μ = Bo{k:g}(π) (Fig. 10 thresholds tuned per step on even prompts, "
      "errors on odd ones). " + strong_md + "\n\n"
      + "".join(w + "\n\n" for w in notes) + md)
  return summary
