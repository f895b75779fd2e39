"""Tests of pav_jax.labelling and labelled_set: MC labels vs exact DP,
fork == re-prefill, first pits and the adaptive budget against known exact
values, resume, and refusal of corrupt or mismatched sets."""

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pav_jax import advantages
from pav_jax import config as config_lib
from pav_jax import labelled_set
from pav_jax import labelling
from pav_jax import mc_values
from pav_jax import sampler as sampler_lib
from pav_jax import transformer
from pav_jax.didactic import automaton_lm as automaton
from pav_jax.didactic import env as env_lib

PAD, BOS, EOS, STEP = 0, 1, 2, 4


def test_mc_labels_match_exact_dp_values_for_pi_and_checkpoint_prover():
  env = env_lib.Env(target=(1, 2, 0), length=6, vocab=5)
  g_pi, g_mu = 1.5, 4.0
  gd, params, cfg = automaton.automaton_lm(env, g_pi)
  gd_mu, params_mu, _ = automaton.automaton_lm(env, g_mu)

  def mk(g):
    return sampler_lib.Sampler(g, cfg, cache_size=64, eos_id=EOS,
                               step_id=STEP, pad_id=PAD)

  lc = labelling.LabelConfig(n_cov=4, n_mc=32, max_new_tokens=2 * env.length,
                             max_step_tokens=2, max_steps=env.length,
                             prompts_per_chunk=16, row_buckets=1)
  prover = labelling.Prover(mk(gd_mu), params_mu)
  arr, budget = labelling.label_chunk(
      mk(gd), params, [[BOS, STEP]] * 16, automaton.grade_env(env),
      jax.random.key(0), lc, prover)
  assert budget.cache_full == 0 and budget.mc_rollouts > 0
  delta = env_lib.transition_table(env)
  for q_key, gamma in (("q_NP", g_pi), ("q_mu_NP", g_mu)):
    v_KR = env_lib.prover_values(env, gamma).v_KR
    errs, groups = [], {}
    for r in range(len(arr["tokens_NT"])):
      resp = arr["tokens_NT"][r, 2:2 + arr["response_len_N"][r]].tolist()
      syms, k = automaton.env_symbols(env, resp), 0
      for h in range(arr["num_prefixes_N"][r]):
        if h > 0:
          k = delta[k, syms[h - 1]] if h - 1 < len(syms) else k
        q, n = arr[q_key][r, h], arr["count_NP"][r, h]
        if n == 0:  # EOS-closed prefix: the outcome, exactly.
          assert q == arr["outcome_N"][r]
          continue
        if h == 0 and r % lc.n_cov:
          continue  # s_1 is labelled once per prompt (shared by its seeds).
        true = v_KR[k, env.length - h]
        errs.append(abs(q - true) > advantages.binomial_ci(true, n))
        groups.setdefault((k, h), []).append(q)
    # 99.9% per-prefix intervals: allow 1% misses, and pooled means per
    # (automaton state, step) must sit inside their pooled intervals.
    assert len(errs) > 150
    assert np.mean(errs) <= 0.01, (q_key, np.mean(errs))
    for (k, h), qs in groups.items():
      true = v_KR[k, env.length - h]
      assert abs(np.mean(qs) - true) <= advantages.binomial_ci(
          true, lc.n_mc * len(qs)) + 1e-9 or len(qs) < 4, (q_key, k, h)


def _tiny_lm(vocab=8):
  cfg = config_lib.ModelConfig.tiny(vocab_size=vocab).replace(
      num_layers=1, embed_dim=32, hidden_dim=64, num_heads=2, num_kv_heads=1,
      head_dim=16, sliding_window=None)
  graphdef, params = transformer.split(transformer.create(cfg, seed=3))
  return graphdef, params, cfg


def _grade_sum(i, resp):
  return float((sum(resp) + i) % 3 == 0)


def test_forked_labels_equal_reprefilled_labels():
  gd, params, cfg = _tiny_lm()
  s = sampler_lib.Sampler(gd, cfg, cache_size=96, eos_id=EOS, step_id=STEP,
                          pad_id=PAD)
  prompts = [[BOS, 6, 7, STEP], [BOS, 5, STEP], [BOS, 7, 7, 6, STEP]]
  base = dict(n_cov=2, n_mc=4, max_new_tokens=16, max_step_tokens=8,
              max_steps=4, prompts_per_chunk=4, row_buckets=1)
  a_f, b_f = labelling.label_chunk(
      s, params, prompts, _grade_sum, jax.random.key(1),
      labelling.LabelConfig(mode="fork", **base))
  a_r, b_r = labelling.label_chunk(
      s, params, prompts, _grade_sum, jax.random.key(1),
      labelling.LabelConfig(mode="reprefill", **base))
  assert a_f["mask_NP"].sum() > len(a_f["mask_NP"])  # several steps labelled
  for k in a_f:
    np.testing.assert_array_equal(a_f[k], a_r[k], err_msg=k)
  # The pooled fork labels the real prompts' prefixes only (3 of 4 here)
  # and cuts each rollout at the response budget (tokens past it are never
  # graded), so it samples fewer tokens than the per-step re-prefill.
  labelled = a_f["count_NP"] > 0
  labelled[np.arange(len(labelled)) % 2 > 0, 0] = False  # s_1 once/prompt
  assert b_f.mc_rollouts == int(a_f["count_NP"][labelled].sum())
  assert b_f.sampled_tokens < b_r.sampled_tokens
  assert b_f.prefilled_tokens < b_r.prefilled_tokens


def test_pure_prover_math():
  q_NP = jnp.array([[0.2, 0.5, 0.0, 1.0], [0.4, 0.4, 0.9, 0.0]])
  m_NP = jnp.array([[1, 1, 1, 1], [1, 1, 1, 0]], bool)
  a = advantages.prover_advantages(q_NP, m_NP)
  np.testing.assert_allclose(a, [[0, 0.3, -0.5, 1.0], [0, 0.0, 0.5, 0]],
                             atol=1e-6)
  a4 = advantages.prover_advantages(q_NP, m_NP, prover_k=4)
  bq = 1 - (1 - np.asarray(q_NP)) ** 4
  np.testing.assert_allclose(a4[0, 1:], np.diff(bq[0]), atol=1e-6)
  np.testing.assert_allclose(
      advantages.effective_rewards(q_NP, a, m_NP, 0.5)[1],
      [0.4, 0.4, 1.15, 0.0], atol=1e-6)
  w = advantages.class_balance_weights(q_NP, m_NP)
  hi = (np.asarray(q_NP) >= 0.5) & np.asarray(m_NP)
  assert np.isclose(w[hi].sum(), w[~hi & np.asarray(m_NP)].sum())
  pit, keep = advantages.first_pit(q_NP, m_NP, high=0.5)
  np.testing.assert_array_equal(pit, [2, -1])
  np.testing.assert_array_equal(keep[0], [1, 1, 1, 0])
  fail = jnp.zeros(2)
  np.testing.assert_array_equal(advantages.first_pit_selection(
      q_NP, m_NP, fail, high=0.5), [[1, 1, 1, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(advantages.first_pit_selection(
      q_NP, m_NP, fail, high=0.5, keep_no_pit=True),
                                [[1, 1, 1, 0], [1, 1, 1, 0]])
  np.testing.assert_array_equal(advantages.first_pit_selection(
      q_NP, m_NP, jnp.array([1.0, 0.0]), high=0.5), [[1, 1, 1, 1], [0] * 4])
  zeros = [0.3, 0.2, 0.1, 0.0, 0.0, 0.0]
  assert labelling.bisect_first_zero(lambda h: zeros[h] == 0, 0, 5) == 3


def _run(tmp, s, params, prompts, lc, identity, **kw):
  return labelling.label_dataset(tmp, s, params, prompts, _grade_sum,
                                 jax.random.key(5), lc, identity, **kw)


def test_resume_and_refuse_mismatched_or_corrupt_sets(tmp_path):
  gd, params, cfg = _tiny_lm()
  s = sampler_lib.Sampler(gd, cfg, cache_size=96, eos_id=EOS, step_id=STEP,
                          pad_id=PAD)
  prompts = [[BOS, 5 + i % 3, STEP] for i in range(6)]
  lc = labelling.LabelConfig(n_cov=2, n_mc=2, max_new_tokens=12,
                             max_step_tokens=6, max_steps=3,
                             prompts_per_chunk=2, row_buckets=1)
  ident = {"tokenizer_sha256": "abc", "step_id": STEP, "eos_id": EOS,
           "pad_id": PAD}
  full = _run(tmp_path / "full", s, params, prompts, lc, ident)
  assert full["complete"] and full["counts"]["rollouts"] == 12
  part = _run(tmp_path / "part", s, params, prompts, lc, ident, max_chunks=1)
  assert not part["complete"] and len(part["shards"]) == 1
  with pytest.raises(labelled_set.LabelledSetError, match="incomplete"):
    labelled_set.load_labelled(tmp_path / "part")
  mtime = (tmp_path / "part" / "shard_00000.npz").stat().st_mtime_ns
  done = _run(tmp_path / "part", s, params, prompts, lc, ident)
  assert done["complete"]
  assert (tmp_path / "part" / "shard_00000.npz").stat().st_mtime_ns == mtime
  a = labelled_set.load_labelled(tmp_path / "full")
  b = labelled_set.load_labelled(tmp_path / "part")
  for k in a:
    if k != "manifest":
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert done["budget"]["sampled_tokens"] == full["budget"]["sampled_tokens"]
  # Mismatches: another step delimiter / tokenizer.
  with pytest.raises(labelled_set.LabelledSetError, match="step_id"):
    _run(tmp_path / "full", s, params, prompts, lc, dict(ident, step_id=9))
  with pytest.raises(labelled_set.LabelledSetError, match="tokenizer_sha256"):
    labelled_set.load_labelled(tmp_path / "full",
                               expect={"tokenizer_sha256": "zzz"})
  # Corruption: a flipped shard byte, a broken manifest.
  shard = tmp_path / "full" / "shard_00001.npz"
  data = bytearray(shard.read_bytes())
  data[len(data) // 2] ^= 0xFF
  shard.write_bytes(bytes(data))
  with pytest.raises(labelled_set.LabelledSetError, match="corrupt"):
    labelled_set.load_labelled(tmp_path / "full")
  (tmp_path / "part" / "manifest.json").write_text("{not json")
  with pytest.raises(labelled_set.LabelledSetError, match="not valid JSON"):
    labelled_set.load_labelled(tmp_path / "part")
  m = json.loads((tmp_path / "full" / "manifest.json").read_text())
  m["version"] = 99
  (tmp_path / "full" / "manifest.json").write_text(json.dumps(m))
  with pytest.raises(labelled_set.LabelledSetError, match="v99"):
    labelled_set.load_labelled(tmp_path / "full")


def test_cache_full_fails_loudly_and_is_reported(tmp_path):
  gd, params, cfg = _tiny_lm()
  prompts = [[BOS, 5 + i % 3, STEP] for i in range(2)]
  lc = labelling.LabelConfig(n_cov=2, n_mc=2, max_new_tokens=12,
                             max_step_tokens=6, max_steps=3,
                             prompts_per_chunk=2, row_buckets=1)
  ident = {"tokenizer_sha256": "abc", "step_id": STEP, "eos_id": EOS}
  # Seeds cut by the cache (10 slots: 2 tokens after the 8-token prompt
  # bucket) before the response budget: the chunk is refused.
  small = sampler_lib.Sampler(gd, cfg, cache_size=10, eos_id=EOS,
                              step_id=STEP, pad_id=PAD, buckets=(8,))
  with pytest.raises(mc_values.CacheFullError, match="label.cache_size"):
    _run(tmp_path / "small", small, params, prompts, lc, ident)
  assert not (tmp_path / "small" / "shard_00000.npz").exists()
  # A set whose manifest records cut rollouts (made before the check) is
  # refused on load, naming the key.
  s = sampler_lib.Sampler(gd, cfg, cache_size=96, eos_id=EOS, step_id=STEP,
                          pad_id=PAD)
  m = _run(tmp_path / "ok", s, params, prompts, lc, ident)
  assert m["budget"]["cache_full_biased"] == 0
  # Every set's summary (and report row) carries both counts.
  summ = labelling.set_summary(m, labelled_set.load_labelled(tmp_path / "ok"),
                               1.0)
  assert summ["cache_full"] == m["budget"]["cache_full"]
  assert summ["cache_full_biased"] == 0
  assert "| 0 (0) |" in labelling.summary_row("train", dict(
      summ, cache_full=0))
  # Forked continuations cut by the cache (4 free slots): biased below the
  # response budget (12), unbiased once a prefix's response reached it.
  tight = sampler_lib.Sampler(gd, cfg, cache_size=16 + 4, eos_id=EOS,
                              step_id=STEP, pad_id=PAD, buckets=(16,))
  for resp_len, biased in ((10, 0), (5, 2)):
    state = tight.prefill(params, [[BOS, 5, STEP] + [6] * resp_len], None,
                          key_B=jax.random.split(jax.random.key(2), 1))
    b = mc_values.Budget()
    mc_values.continue_forked(
        tight, params, state, np.array([0]), [[6] * resp_len], [0],
        jax.random.split(jax.random.key(3), 2), _grade_sum,
        mc_values.McSettings(2, 12, 1), 1, b)
    assert b.cache_full == 2 and b.cache_full_biased == biased, b
  m["budget"]["cache_full_biased"] = 3
  (tmp_path / "ok" / "manifest.json").write_text(json.dumps(m))
  with pytest.raises(labelled_set.LabelledSetError, match="label.cache_size"):
    labelled_set.load_labelled(tmp_path / "ok")


# First pits and the adaptive MC budget, on the automaton LM (exact values).
# Env (1, 2, 0) in 6 symbols: once fewer steps remain than y* still needs,
# the answer is unreachable and Q = 0 exactly: a known pit.

_PIT_ENV = env_lib.Env(target=(1, 2, 0), length=6, vocab=5)
_PIT_GAMMA = 1.5


def _pit_chunk(key=0, **kw):
  env = _PIT_ENV
  gd, params, cfg = automaton.automaton_lm(env, _PIT_GAMMA)
  s = sampler_lib.Sampler(gd, cfg, cache_size=64, eos_id=EOS, step_id=STEP,
                          pad_id=PAD)
  base = dict(n_cov=4, n_mc=4, max_new_tokens=2 * env.length,
              max_step_tokens=2, max_steps=env.length, prompts_per_chunk=8,
              row_buckets=1)
  lc = labelling.LabelConfig(**dict(base, **kw))
  return labelling.label_chunk(s, params, [[BOS, STEP]] * 8,
                               automaton.grade_env(env), jax.random.key(key),
                               lc)


def test_bisect_locates_the_known_first_pit_and_counts_its_rollouts():
  off, b_off = _pit_chunk()
  bis, b_bis = _pit_chunk(first_pit="bisect", n_pit=64)
  fil, _ = _pit_chunk(first_pit="filter")
  q_true = automaton.exact_q(_PIT_ENV, off, _PIT_GAMMA)
  fail = off["outcome_N"] == 0
  n_real = off["mask_NP"].sum(1)
  # The truth: the first prefix with exact Q == 0 (a finished failing seed
  # always has one, at the latest its EOS-closed last prefix).
  true_pit = np.array([np.flatnonzero(q_true[r, :n_real[r]] == 0)[0]
                       if fail[r] else -1 for r in range(len(fail))])
  assert fail.sum() >= 8 and (true_pit[fail] < n_real[fail] - 1).sum() >= 4
  np.testing.assert_array_equal(bis["seed_mask_NP"], off["mask_NP"])
  # Probes only reveal successes: a found pit is never after the true one,
  # and with 64 probes it is the true one for nearly every failing seed.
  assert (bis["pit_N"][~fail] == -1).all()
  assert (bis["pit_N"][fail] >= 0).all()
  assert (bis["pit_N"] <= true_pit).all()
  assert np.mean(bis["pit_N"][fail] == true_pit[fail]) >= 0.9
  # Kept prefixes run up to the pit; the pit is labelled 0.
  p_ids = np.arange(off["mask_NP"].shape[1])
  keep = off["mask_NP"] & ((bis["pit_N"][:, None] < 0)
                           | (p_ids <= bis["pit_N"][:, None]))
  np.testing.assert_array_equal(bis["mask_NP"], keep)
  rows = np.flatnonzero(fail)
  assert (bis["q_NP"][rows, bis["pit_N"][rows]] == 0).all()
  # The main pass is unchanged (own key stream); probes only add rollouts,
  # and the budget counts them.
  assert (bis["count_NP"] >= off["count_NP"]).all()
  assert (bis["succ_NP"] >= off["succ_NP"]).all()
  extra = int((bis["count_NP"] - off["count_NP"]).sum())
  assert b_bis.pit_rollouts == b_bis.mc_rollouts - b_off.mc_rollouts > 0
  assert extra == b_bis.pit_rollouts  # s_1 copies aside: no shared probes
  # Labels of kept prefixes are closer to the exact values than n_mc = 4.
  err_off = np.nanmean(np.where(bis["mask_NP"], off["q_NP"] - q_true,
                                np.nan) ** 2)
  err_bis = np.nanmean(np.where(bis["mask_NP"], bis["q_NP"] - q_true,
                                np.nan) ** 2)
  assert err_bis < err_off
  # "filter" reuses the labels: the first zero after a high state (pit_high
  # 0: the first zero), no extra rollouts; the same seeds as "off".
  pit_f, _ = advantages.first_pit(jnp.asarray(off["q_NP"]),
                                  jnp.asarray(off["mask_NP"]), high=0.0)
  np.testing.assert_array_equal(fil["pit_N"],
                                np.where(fail, np.asarray(pit_f), -1))
  np.testing.assert_array_equal(fil["q_NP"], off["q_NP"])


def test_adaptive_mc_stops_resolved_prefixes_and_keeps_the_rest_exact():
  fixed, b_fixed = _pit_chunk(n_mc=16)
  ada, b_ada = _pit_chunk(n_mc=16, n_mc_min=4)
  np.testing.assert_array_equal(ada["mask_NP"], fixed["mask_NP"])
  mc = fixed["count_NP"] > 0
  counts = ada["count_NP"][mc]
  assert set(np.unique(counts)) <= {4, 8, 12, 16}
  # Resolved after the first round: all 4 agree; never resolved later.
  stop = ada["count_NP"] == 4
  assert stop.any() and (ada["count_NP"][mc] > 4).any()
  assert np.isin(ada["succ_NP"][stop], [0, 4]).all()
  full = mc & (ada["count_NP"] == 16)
  # Draw i uses key i in both: an unresolved prefix has the fixed label.
  np.testing.assert_array_equal(ada["succ_NP"][full], fixed["succ_NP"][full])
  once = mc.copy()  # s_1 is labelled once per prompt (copied to its seeds)
  once[np.arange(len(once)) % 4 > 0, 0] = False
  assert b_fixed.mc_rollouts == int(fixed["count_NP"][once].sum())
  assert b_ada.mc_rollouts == int(ada["count_NP"][once].sum())
  assert b_ada.mc_rollouts < 0.8 * b_fixed.mc_rollouts
  # A confidence bound instead: all-agree needs n >= 1 / mc_tol.
  assert np.array_equal(labelling.resolved(
      np.array([0, 2, 2, 16]), np.array([4, 4, 16, 16]), True, 0.0),
      [True, False, False, True])
  assert np.array_equal(labelling.resolved(
      np.array([2, 50, 0, 0]), np.array([4, 400, 4, 10]), False, 0.1),
      [False, True, False, True])
  # Neyman allocation keeps the fixed budget exactly, per step.
  ney, b_ney = _pit_chunk(n_mc=16, n_mc_min=4, mc_alloc="neyman")
  assert b_ney.mc_rollouts == b_fixed.mc_rollouts
  for h in range(ney["count_NP"].shape[1]):
    col = once[:, h]
    assert ney["count_NP"][col, h].sum() == 16 * col.sum()
  assert (ney["count_NP"][mc] >= 4).all()
  assert len(np.unique(ney["count_NP"][mc])) > 2
  extra = labelling.neyman_extra(np.array([0, 2, 4, 2]), 4, 30)
  assert extra.sum() == 30 and extra[1] == extra[3] > extra[0] == extra[2]


def test_set_made_before_a_label_setting_existed_matches_at_its_default():
  defaults = {"label_config": dataclasses.asdict(labelling.LabelConfig())}
  want = {"step_id": 3, "label_config": labelling.identity_config(
      labelling.LabelConfig())}
  old = {"step_id": 3, "label_config": {
      k: v for k, v in want["label_config"].items() if k != "first_pit"}}
  labelled_set.check_identity(Path("m.json"), old, want, defaults)
  bisect = dict(want, label_config=labelling.identity_config(
      labelling.LabelConfig(first_pit="bisect")))
  with pytest.raises(labelled_set.LabelledSetError,
                     match=r'label_config\.first_pit: "off" -> "bisect"'):
    labelled_set.check_identity(Path("m.json"), old, bisect, defaults)
  with pytest.raises(labelled_set.LabelledSetError, match="step_id: 4 -> 3"):
    labelled_set.check_identity(Path("m.json"), dict(old, step_id=4), want,
                                defaults)
