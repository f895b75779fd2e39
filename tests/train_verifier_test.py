"""Tests of pav_jax.train_verifier: step targets, export/load, metrics."""

import jax
import numpy as np

from pav_jax import checkpoint as ckpt_lib
from pav_jax import config as config_lib
from pav_jax import metrics
from pav_jax import run_lib
from pav_jax import sharding
from pav_jax import train_verifier
from pav_jax import transformer
from pav_jax import verifier

PAD, BOS, EOS, STEP = 0, 1, 2, 4
CFG = config_lib.ModelConfig.tiny(vocab_size=12).replace(
    num_layers=1, embed_dim=32, hidden_dim=64, num_heads=2, num_kv_heads=1,
    head_dim=16, sliding_window=None)


def _synthetic(n=64, steps=3, seed=0):
  """Rows BOS 7 STEP (x STEP)*: Q after a step is 0.9 if x == 6 else 0.1."""
  rng = np.random.default_rng(seed)
  t, p = 3 + 2 * steps + 1, steps + 1
  data = {k: [] for k in ("tokens_NT", "q_NP")}
  for _ in range(n):
    xs = rng.choice([5, 6], size=steps)
    row = [BOS, 7, STEP] + [v for x in xs for v in (x, STEP)]
    row[-1] = EOS
    data["tokens_NT"].append(row + [PAD] * (t - len(row)))
    data["q_NP"].append([0.5] + [0.9 if x == 6 else 0.1 for x in xs])
  out = {k: np.asarray(v) for k, v in data.items()}
  out["q_NP"] = out["q_NP"].astype(np.float32)
  out.update(
      prompt_len_N=np.full(n, 3, np.int32),
      response_len_N=np.full(n, 2 * steps, np.int32),
      num_prefixes_N=np.full(n, p, np.int32),
      mask_NP=np.ones((n, p), bool),
      count_NP=np.full((n, p), 8, np.int32),
      outcome_N=(out["q_NP"][:, -1] > 0.5).astype(np.float32),
      prompt_index_N=np.arange(n, dtype=np.int32))
  return out


def test_verifier_fits_synthetic_step_targets_and_exports(tmp_path):
  data = _synthetic()
  arrays = train_verifier.training_arrays(data, "prm_q")
  _, policy = transformer.split(transformer.create(CFG, seed=0))
  mesh = sharding.make_mesh({"data": 2}, jax.devices()[:2])
  graphdef, params = train_verifier.train(
      stage_dir=tmp_path / "prm_q", kind="prm_q", arrays=arrays, model_cfg=CFG,
      mesh=mesh, policy_params=policy, steps=120, batch_size=16,
      learning_rate=1e-2, step_id=STEP, eos_id=EOS, ckpt_every=60,
      design="head")
  pred = train_verifier.predict(graphdef, params, arrays, kind="prm_q",
                                step_id=STEP, eos_id=EOS, batch_size=32)
  err = np.abs(pred - data["q_NP"])[:, 1:]
  assert err.mean() < 0.05, err.mean()


def _sibling_set(n_q=16, seed=0):
  """4 rows per question: BOS 7 STEP x EOS; outcome = (x == 6).

  The rows of a question share the question (one parent), so they are
  siblings at prefix 1; Q̂ after the step is 0.9 if x == 6 else 0.1.
  """
  rng = np.random.default_rng(seed)
  toks, q, y = [], [], []
  for _ in range(n_q):
    for x in rng.choice([5, 6], size=4):
      toks.append([BOS, 7, STEP, x, EOS])
      q.append([0.5, 0.9 if x == 6 else 0.1])
      y.append(float(x == 6))
  n = len(toks)
  return {
      "tokens_NT": np.asarray(toks, np.int32),
      "q_NP": np.asarray(q, np.float32),
      "prompt_len_N": np.full(n, 3, np.int32),
      "response_len_N": np.full(n, 2, np.int32),
      "num_prefixes_N": np.full(n, 2, np.int32),
      "mask_NP": np.ones((n, 2), bool),
      "count_NP": np.full((n, 2), 8, np.int32),
      "outcome_N": np.asarray(y, np.float32),
      "prompt_index_N": np.repeat(np.arange(n_q, dtype=np.int32), 4)}


def test_grouped_batches_hold_whole_questions():
  arrays = train_verifier.training_arrays(_sibling_set(), "prm_q")
  fn = train_verifier.grouped_batch_fn(arrays, 16, seed=0)
  b = fn(3)
  assert len(b["tokens"]) == 16 and b["real"].all()
  assert b["group"].tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
  for g in range(4):  # each group is the 4 rows of one question
    rows = b["tokens"][b["group"] == g]
    assert len({r.tobytes() for r in rows}) >= 1
  assert "prompt_index" not in b


def test_lp_design_with_ranking_trains_exports_and_loads(tmp_path):
  """A tiny verifier run with the default design and the ranking loss.

  Q̂ after the step is 0.9 for the siblings whose step the backbone LM finds
  less likely (0.1 otherwise), so only a verifier that learns the weights
  of the log-prob features ranks the sibling pairs right (a question-only
  head cannot: siblings share the question; the initial weights rank them
  backwards). Then the
  export -> Run.load_verifier round trip gives the same values.
  """
  data = _sibling_set()
  _, policy = transformer.split(transformer.create(CFG, seed=0))
  graph = transformer.split(transformer.create(CFG))[0]
  tok = jax.numpy.asarray(data["tokens_NT"])
  ok = jax.numpy.ones_like(tok, bool)
  logits = transformer.forward(graph, policy, tok,
                               transformer.positions_from_mask(ok), ok)[0]
  logp = np.asarray(jax.nn.log_softmax(logits, -1))
  rows = np.arange(len(tok))
  f_N = (logp[rows, 2, data["tokens_NT"][:, 3]]
         + logp[rows, 3, EOS])  # log p(x) + log p(EOS | x)
  # The LESS likely step (by the LM) is the right one, 0.9 vs 0.1: the
  # initial lp_w (> 0) ranks every sibling pair wrong; training must flip.
  best = data["tokens_NT"][np.argmin(f_N), 3]
  data["q_NP"][:, 1] = np.where(data["tokens_NT"][:, 3] == best, 0.9, 0.1)
  data["outcome_N"] = (data["q_NP"][:, 1] > 0.5).astype(np.float32)
  arrays = train_verifier.training_arrays(data, "prm_q")
  mesh = sharding.make_mesh({"data": 2}, jax.devices()[:2])
  graphdef, params = train_verifier.train(
      stage_dir=tmp_path / "prm_q", kind="prm_q", arrays=arrays,
      model_cfg=CFG, mesh=mesh, policy_params=policy, steps=120,
      batch_size=16, learning_rate=0.2, step_id=STEP, eos_id=EOS,
      ckpt_every=120, rank_weight=1.0, backbone_lr_scale=0.0)
  assert "lp_w" in params
  init = verifier.params_from_policy(policy, CFG)
  pred0 = train_verifier.predict(graphdef, init, arrays, kind="prm_q",
                                 step_id=STEP, eos_id=EOS, batch_size=32)
  assert train_verifier.sibling_accuracy(pred0, data, step_id=STEP,
                                         eos_id=EOS)[0] == 0.0
  pred = train_verifier.predict(graphdef, params, arrays, kind="prm_q",
                                step_id=STEP, eos_id=EOS, batch_size=32)
  acc, pairs = train_verifier.sibling_accuracy(pred, data, step_id=STEP,
                                               eos_id=EOS)
  assert pairs > 20 and acc >= 0.9, (acc, pairs, params["lp_w"])
  (tmp_path / "verifiers" / "prm_q").mkdir(parents=True)
  ckpt_lib.save_params(tmp_path / "verifiers" / "prm_q" / "params", params)
  run = run_lib.Run(config=None, workdir=tmp_path, mesh=mesh, task=None,
                    tok=None, model_cfg=CFG, pav=run_lib.Pav())
  gd2, p2 = run.load_verifier("prm_q")
  pred2 = train_verifier.predict(gd2, p2, arrays, kind="prm_q", step_id=STEP,
                                 eos_id=EOS, batch_size=32)
  np.testing.assert_allclose(pred, pred2, atol=1e-6)


def test_top1_diagnostics_on_hand_built_scores():
  data = _sibling_set(n_q=2)
  y = data["outcome_N"]
  d = train_verifier.top1_diagnostics(y.copy(), data)  # a perfect scorer
  assert d["top1_acc"] == float(y.reshape(2, 4).max(1).mean())
  assert d["fp_rate"] in (0.0,) or np.isnan(d["fp_rate"])
  d = train_verifier.top1_diagnostics(-y, data)  # an inverted scorer
  if d["mixed_questions"]:
    assert d["fp_rate"] == 1.0 and d["auroc_within"] == 0.0


def test_training_arrays_kinds_and_eval_metrics(tmp_path):
  data = _synthetic(n=40, seed=1)
  orm = train_verifier.training_arrays(data, "orm")
  assert orm["mask"].sum() == 40 and orm["mask"][:, -1].all()
  a = train_verifier.training_arrays(data, "a_direct", prover_k=4)
  assert not a["mask"][:, 0].any()
  q = data["q_NP"]
  preds = {"orm": np.repeat(q[:, -1:], q.shape[1], 1), "prm_q": q,
           "a_direct": a["target"]}
  ev, md = train_verifier.evaluate(preds, data, alpha=0.5, prover_k=4,
                                   out_dir=tmp_path, step_id=STEP, eos_id=EOS)
  assert ev["auroc"]["prm_q"][-1] == 1.0
  assert np.isclose(ev["adv_corr"], 1.0) and ev["ece"] < 1e-6
  assert (tmp_path / "calibration.png").exists()
  assert (tmp_path / "ranking_fig10.png").exists() and "AUROC" in md
  assert "top-1 false-positive rate" in md and "top1" in ev
  assert metrics.auroc(np.array([0.1, 0.4, 0.35, 0.8]),
                       np.array([0, 0, 1, 1])) == 0.75
  assert metrics.best_threshold_error(
      np.array([0.1, 0.9]), np.array([0, 1]), np.array([0.2, 0.7]),
      np.array([0, 1])) == 0.0


def test_tiny_verifiers_stage_with_strong_model(tmp_path):
  """sft -> label -> verifiers (strong SFT of 2 steps, default design) on a
  tiny model, through the entry point; the stage exports the strong model
  and both verifiers, reports the diagnostics, and a rerun reuses them."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from pathlib import Path  # pylint: disable=g-import-not-at-top
  root = Path(__file__).resolve().parents[1]
  tiny = [
      "--config.task.num_train=256", "--config.task.num_eval=8",
      "--config.model.num_layers=1", "--config.model.embed_dim=32",
      "--config.model.hidden_dim=64", "--config.model.num_heads=2",
      "--config.model.num_kv_heads=1", "--config.model.head_dim=16",
      "--config.sft.batch_size=16", "--config.sft.max_len=80",
      "--config.sft.warmup_steps=1", "--config.sft.steps=2",
      "--config.eval.num_prompts=2", "--config.eval.samples_per_prompt=2",
      "--config.eval.batch_rows=8", "--config.sample.max_new_tokens=40",
      "--config.sample.cache_size=96", "--config.label.num_prompts=4",
      "--config.label.n_cov=2", "--config.label.n_mc=2",
      "--config.label.num_eval_prompts=4", "--config.label.max_steps=6",
      "--config.label.cache_size=96", "--config.label.prompts_per_chunk=4",
      "--config.verifier.strong_sft_steps=2", "--config.verifier.steps=3",
      "--config.verifier.batch_size=4", "--config.verifier.ckpt_every=3",
      "--config.stages=sft,label,verifiers"]
  cmd = [sys.executable, "-m", "pav_jax.main", "--config=configs/demo.py",
         f"--workdir={tmp_path}", *tiny]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  ver = tmp_path / "verifiers"
  for d in ("strong/params", "orm/params", "prm_q/params"):
    assert (ver / d).exists(), d
  ev = json.loads((ver / "eval.json").read_text())
  assert ev["design"] == "lp_features" and ev["strong_sft_steps"] == 2
  assert len(ev["prm_q/lp_w"]) == 2 and "top1" in ev
  assert "top-1 false-positive rate" in (tmp_path / "report.md").read_text()


def test_first_pit_high_drops_only_post_pit_prefixes_of_failing_seeds():
  n = 4
  data = {
      "tokens_NT": np.tile(np.array([BOS, 7, STEP, 5, STEP, 5, EOS],
                                    np.int32), (n, 1)),
      "q_NP": np.array([[0.8, 1.0, 1.0],    # correct seed: all kept
                        [0.8, 0.0, 0.0],    # failing: pit at 1 after a high
                        [0.3, 0.2, 0.1],    # failing, no pit: all kept
                        [0.0, 0.0, 0.0]],   # failing, never high: no pit
                       np.float32),
      "prompt_len_N": np.full(n, 3, np.int32),
      "response_len_N": np.full(n, 4, np.int32),
      "num_prefixes_N": np.full(n, 3, np.int32),
      "mask_NP": np.ones((n, 3), bool),
      "count_NP": np.full((n, 3), 8, np.int32),
      "outcome_N": np.array([1, 0, 0, 0], np.float32),
      "prompt_index_N": np.zeros(n, np.int32)}
  plain = train_verifier.training_arrays(data, "prm_q")["mask"]
  pit = train_verifier.training_arrays(data, "prm_q",
                                       first_pit_high=0.5)["mask"]
  assert plain.astype(int).tolist() == [[1, 1, 1]] * 4
  # Only the failing seed with a pit loses its prefixes after the pit.
  assert pit.astype(int).tolist() == [[1, 1, 1], [1, 1, 0], [1, 1, 1],
                                      [1, 1, 1]]
