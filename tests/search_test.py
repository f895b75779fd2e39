"""Search tests: selection, aggregation, accounting and beam search."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pav_jax import advantages
from pav_jax import config as config_lib
from pav_jax import sampler as sampler_lib
from pav_jax import search
from pav_jax import transformer as tr
from pav_jax import verifier
from pav_jax.search import beam as beam_lib
from pav_jax.search import report as search_report

EOS, STEP, PAD = 1, 2, 0
CFG = config_lib.ModelConfig.tiny(vocab_size=48).replace(
    num_layers=2, embed_dim=32, hidden_dim=64, head_dim=8, sliding_window=8)
PROMPTS = [[3, 4, 5, STEP], [6, 7, 8, 9, 10, 11, STEP], [12, STEP],
           [20, 21, 22, STEP]]


def _policy(seed, step_mul, eos_mul):
  graphdef, params = tr.split(tr.create(CFG, seed=seed))
  params["embed_VD"] = (params["embed_VD"].at[STEP].mul(step_mul)
                        .at[EOS].mul(eos_mul))
  return graphdef, params


_SAMPLERS = {}


def _sampler(graphdef, temperature):
  """One sampler per temperature, shared by the tests (compiles are cached
  per sampler; every policy here has the same graph)."""
  if temperature not in _SAMPLERS:
    _SAMPLERS[temperature] = sampler_lib.Sampler(
        graphdef, CFG, cache_size=160, eos_id=EOS, step_id=STEP, pad_id=PAD,
        buckets=(8, 16),
        sampling=sampler_lib.SamplingConfig(temperature=temperature))
  return _SAMPLERS[temperature]


class TokenScorer:
  """Scripted verifier: V = hi once a trace holds token `good`, else lo.

  Same interface as `search.CachedVerifier`; its cache counts the tokens
  it has read so tests can check the accounting.
  """

  def __init__(self, good, lo=0.2, hi=0.9):
    self.good, self.lo, self.hi = good, lo, hi

  def init_cache(self, batch, size):
    del size
    return {"seen_B": jnp.zeros((batch,), bool),
            "read_B": jnp.zeros((batch,), jnp.int32)}

  def extend(self, tokens_BW, length_B, pos0_B, cache):
    del pos0_B
    tokens_BW, length_B = jnp.asarray(tokens_BW), jnp.asarray(length_B)
    valid_BW = jnp.arange(tokens_BW.shape[1])[None, :] < length_B[:, None]
    seen_B = cache["seen_B"] | jnp.any(valid_BW & (tokens_BW == self.good), 1)
    cache = {"seen_B": seen_B, "read_B": cache["read_B"] + length_B}
    return jnp.where(seen_B, self.hi, self.lo), cache


# Pure functions ---------------------------------------------------------------


def test_fig2a_q_and_advantage_selection_differ():
  """Paper Fig. 2a: beam 2, two states with 3 actions each."""
  v_S = np.array([0.6, 0.3])
  q_M = jnp.array([0.55, 0.50, 0.70, 0.50, 0.35, 0.25])
  parent_M = jnp.asarray(np.repeat(v_S, 3))
  ok = jnp.ones((1, 6), bool)
  keep = jnp.array([2])
  by_q = search.beam_scores(q_M, parent_M, mode="q", alpha=1.0, prover_k=1)
  idx, kept = search.select_top(by_q[None], ok, keep, 2)
  assert sorted(idx[0].tolist()) == [0, 2] and bool(kept.all())  # a11, a13
  # PAV with mu = pi (K=1): Q + A; A = (-.05, -.1, .1, .2, .05, -.05).
  by_pav = search.beam_scores(q_M, parent_M, mode="pav", alpha=1.0,
                              prover_k=1)
  np.testing.assert_allclose(
      by_pav, [0.5, 0.4, 0.8, 0.7, 0.4, 0.2], atol=1e-6)
  idx, _ = search.select_top(by_pav[None], ok, keep, 2)
  assert idx[0].tolist() == [2, 3]  # a13, a21: s2 survives


def test_select_top_masks_invalid_and_spent_slots():
  score = jnp.array([[0.9, 0.8, 0.7, 0.6], [0.1, 0.2, 0.3, 0.4]])
  ok = jnp.array([[False, True, True, True], [True, False, False, False]])
  idx, keep = search.select_top(score, ok, jnp.array([1, 3]), 3)
  assert idx[0, 0] == 1 and keep[0].tolist() == [True, False, False]
  assert idx[1, 0] == 0 and keep[1].tolist() == [True, False, False]


def test_beam_scores_bok_prover():
  q_new, q_par = jnp.array([0.3]), jnp.array([0.1])
  s = search.beam_scores(q_new, q_par, mode="pav", alpha=0.5, prover_k=4)
  adv = (1 - 0.7**4) - (1 - 0.9**4)
  np.testing.assert_allclose(s, [0.3 + 0.5 * adv], rtol=1e-6)


def test_aggregations():
  v = jnp.array([[0.5, 0.8, 0.4, 0.9, 0.0], [0.3, 0.0, 0.0, 0.0, 0.0]])
  m = jnp.array([[1, 1, 1, 1, 0], [1, 0, 0, 0, 0]], bool)
  np.testing.assert_allclose(search.aggregate_steps(v, m, "last"), [0.9, 0.3])
  np.testing.assert_allclose(search.aggregate_steps(v, m, "min"), [0.4, 0.3])
  np.testing.assert_allclose(search.aggregate_steps(v, m, "product"),
                             [0.8 * 0.4 * 0.9, 0.3], rtol=1e-6)
  r = search.pav_min_scores(v, m, alpha=1.0, prover_k=1)
  # Q + A per step: .8+.3, .4-.4, .9+.5 -> min 0.0.
  np.testing.assert_allclose(r, [0.0, 0.3], atol=1e-6)
  with pytest.raises(ValueError):
    search.aggregate_steps(v, m, "mean")


def test_best_of_n_majority_and_pass():
  correct = np.array([[0, 1, 0, 0], [1, 0, 0, 1]], float)
  scores = np.array([[0.1, 0.9, 0.8, 0.2], [0.3, 0.3, 0.5, 0.1]])
  # N=2 groups: p0 (0,1)->1 correct, (2,3)->2 wrong; p1 (0,1) tie->0 ok,
  # (2,3)->2 wrong.
  assert search.best_of_n(scores, correct, 2) == 0.5
  assert search.best_of_n(scores, correct, 4) == 0.5  # p0 ok, p1 picks 2
  assert search.best_of_n(correct, correct, 4) == 1.0  # oracle = pass@N
  answers = [["3", "5", "3", None], ["7", "8", "8", "7"]]
  assert search.majority_pick(answers[0]) == 0
  assert search.majority_pick(["1", "2", "2", "1"]) == 0  # tie: first seen
  assert search.majority_pick([None, None]) is None
  assert search.majority_vote(answers, correct, 4) == 0.5  # "3" no, "7" yes
  assert search.majority_vote(answers, correct, 1) == 3 / 8
  for n in (1, 2, 4):
    want = advantages.pass_at_k(np.array([4, 4]), correct.sum(1), n).mean()
    assert search.pass_at_n(correct, n) == pytest.approx(want)
  assert search.pass_at_n(correct, 4) == 1.0
  with pytest.raises(ValueError):
    search.best_of_n(scores, correct, 8)


def test_compute_to_match_and_interp():
  flops, accs = [1.0, 10.0, 100.0], [0.2, 0.4, 0.6]
  assert search.compute_to_match(0.1, flops, accs) == 1.0
  assert search.compute_to_match(0.5, flops, accs) == pytest.approx(
      10**1.5, rel=1e-9)
  assert search.compute_to_match(0.7, flops, accs) is None
  assert search.interp_log(10**0.5, flops, accs) == pytest.approx(0.3)
  assert search.interp_log(1000.0, flops, accs) is None


def test_bon_compute_hand_counts():
  smp = search.Samples(
      responses=[[[]] * 4], finished=np.ones((1, 4), bool),
      correct=np.zeros((1, 4)), answers=[[None] * 4],
      generated_EK=np.array([[3, 5, 7, 9]]), prompt_len_E=np.array([10]))
  c = search.bon_compute(smp, 2, verifiers=1)
  # groups (3+5), (7+9): mean 12 generated; the verifier reads the prompt
  # once (as beam search charges it) + the 12 response tokens.
  assert (c.prefilled_tokens, c.generated_tokens, c.verifier_tokens) == (
      10, 12, 22)
  assert c.flops(100, 10) == 2 * 100 * 22 + 2 * 10 * 22
  assert search.bon_compute(smp, 4, verifiers=0).verifier_tokens == 0


# Beam search ------------------------------------------------------------------


def _greedy_reference(sampler, params, prompts, max_steps, max_step_tokens):
  """Steps of the plain greedy decode, cut as beam search with B=C=1 would."""
  out = sampler.generate(params, prompts, jax.random.key(0),
                         max_new_tokens=max_steps * max_step_tokens)
  refs = []
  for b in range(len(prompts)):
    toks = out.tokens_BN[b, : int(out.length_B[b])].tolist()
    trace, generated, finished = [], 0, False
    for _ in range(max_steps):
      ends = [i for i, t in enumerate(toks) if t in (STEP, EOS)]
      if not ends or ends[0] >= max_step_tokens:  # step truncated: dies
        generated += min(len(toks), max_step_tokens)
        break
      step, toks = toks[: ends[0] + 1], toks[ends[0] + 1:]
      generated += len(step)
      trace += step
      if step[-1] == EOS:
        finished = True
        break
    refs.append((trace, generated, finished))
  return refs


def test_b1_c1_greedy_beam_equals_greedy_decode_and_counts_tokens():
  graphdef, params = _policy(4, 1.3, 1.2)
  s = _sampler(graphdef, 0.0)
  cfg = search.BeamConfig(beam_size=1, expansions=1, max_steps=6,
                          max_step_tokens=12, mode="pav")
  res = search.beam_search(s, params, TokenScorer(good=-1), PROMPTS, cfg,
                           jax.random.key(1))
  refs = _greedy_reference(s, params, PROMPTS, 6, 12)
  assert any(r[2] for r in refs) and any(not r[2] for r in refs)
  for b, (trace, _, finished) in enumerate(refs):
    assert res.finished[b] == finished
    assert res.responses[b] == (trace[:-1] if finished else trace), b
  gen = sum(r[1] for r in refs)
  plen = sum(map(len, PROMPTS))
  assert res.compute.prefilled_tokens == plen
  assert res.compute.generated_tokens == gen
  assert res.compute.verifier_tokens == plen + gen


def test_oracle_scorer_finds_the_good_token():
  """A scorer that prefers traces holding token 45 steers the beam there."""
  graphdef, params = _policy(3, 1.3, 1.5)
  s = _sampler(graphdef, 1.0)
  prompts = PROMPTS * 4
  good = 45  # not in any prompt; in ~0.3 of plain 64-token samples
  hits = {}
  for b, c in ((1, 1), (4, 3)):
    cfg = search.BeamConfig(beam_size=b, expansions=c, max_steps=6,
                            max_step_tokens=16, mode="pav", alpha=0.5,
                            prover_k=4)
    res = search.beam_search(s, params, TokenScorer(good), prompts, cfg,
                             jax.random.key(2))
    hits[b] = np.mean([good in r for r in res.responses])
    assert all(len(pool) <= b for pool in res.pools)
    for r, pool, fin in zip(res.responses, res.pools, res.finished):
      if fin:  # the chosen trace is the pool's best by Q^pi
        assert r in pool
        assert (good in r) or not any(good in t for t in pool)
  # 16 problems: 0.38-0.69 vs 0-0.13 over keys 2-9 (an ignored scorer
  # leaves the B = 4 beam near the B = 1 rate).
  assert hits[4] >= hits[1] + 0.25, hits


def test_cached_verifier_scores_equal_one_pass_prefix_values():
  graphdef, params = _policy(3, 1.7, 1.5)
  s = _sampler(graphdef, 1.0)
  vg, vp = tr.split(verifier.create(CFG, 5, design="head"))
  vp["head_D"] = jax.random.normal(jax.random.key(0), vp["head_D"].shape)
  cv = search.CachedVerifier(vg, vp)
  cfg = search.BeamConfig(beam_size=2, expansions=2, max_steps=5,
                          max_step_tokens=16, mode="q")
  res = search.beam_search(s, params, cv, PROMPTS, cfg, jax.random.key(3))
  assert res.finished.any()
  t = 96
  tok = np.full((len(PROMPTS), t), PAD, np.int32)
  for b, (p, r, f) in enumerate(zip(PROMPTS, res.responses, res.finished)):
    row = p + r + [EOS] * int(f)
    tok[b, : len(row)] = row
  valid = np.arange(t)[None] < np.array(
      [len(p) + len(r) + int(f) for p, r, f in
       zip(PROMPTS, res.responses, res.finished)])[:, None]
  v, m = jax.jit(verifier.prefix_values, static_argnums=0,
                 static_argnames=("step_id", "eos_id", "num_prefixes"))(
                     vg, vp, jnp.asarray(tok), jnp.asarray(valid),
                     jnp.array([len(p) for p in PROMPTS]), step_id=STEP,
                     eos_id=EOS, num_prefixes=8)
  for b, vals in enumerate(res.values):
    assert int(m[b].sum()) == len(vals)
    np.testing.assert_allclose(v[b, : len(vals)], vals, atol=2e-5)


def test_chunking_does_not_change_results():
  graphdef, params = _policy(3, 1.7, 1.5)
  s = _sampler(graphdef, 0.0)
  kw = dict(beam_size=2, expansions=2, max_steps=4, max_step_tokens=16)
  big = search.beam_search(s, params, TokenScorer(15), PROMPTS,
                           search.BeamConfig(batch_rows=64, **kw),
                           jax.random.key(4))
  small = search.beam_search(s, params, TokenScorer(15), PROMPTS,
                             search.BeamConfig(batch_rows=12, **kw),
                             jax.random.key(4))
  assert big.compute == small.compute
  # Greedy policy: the same traces, values and pools whatever the chunking.
  assert big.responses == small.responses
  assert big.values == small.values
  assert big.pools == small.pools
  assert big.finished.tolist() == small.finished.tolist()
  assert any(len(r) > 0 for r in big.responses)


def test_summarise_compute_ratios():
  res = {"methods": {
      "orm_bon": {"acc": [0.2, 0.3, 0.4], "flops": [1.0, 2.0, 4.0]},
      "pav_beam": {"acc": [0.35, 0.45, 0.5], "flops": [1.0, 2.0, 4.0]},
      "prm_q_beam": {"acc": [0.1, 0.2, 0.5], "flops": [1.0, 2.0, 4.0]},
      "prm_last_bon": {"acc": [0.2, 0.3, 0.45], "flops": [1.0, 2.0, 4.0]}}}
  s = search.summarise(res)
  # PAV reaches ORM@max (0.4) between flops 1 and 2 (log-interpolated).
  assert s["pav_vs_orm_compute_ratio"] == pytest.approx(4.0 / 2**0.5)
  assert s["pav_vs_orm_acc_gap_at_equal_compute"] == pytest.approx(
      [0.15, 0.15, 0.1])
  assert s["pav_vs_orm_best_compute_ratio"] == pytest.approx(4.0 / 2**0.5)
  assert s["pav_vs_prm_q_beam_compute_ratio"] == pytest.approx(1.0)
  assert s["prm_last_vs_orm_at_max_n"] == pytest.approx(0.05)


class SumScorer:
  """Scripted verifier whose value is a function of all tokens read so far
  (V = ((sum of tokens) mod 7 + 1) / 8), so siblings usually differ."""

  def init_cache(self, batch, size):
    del size
    return {"sum_B": jnp.zeros((batch,), jnp.int32)}

  @staticmethod
  def value(total):
    return ((total % 7) + 1) / 8.0

  def extend(self, tokens_BW, length_B, pos0_B, cache):
    del pos0_B
    tokens_BW, length_B = jnp.asarray(tokens_BW), jnp.asarray(length_B)
    valid_BW = jnp.arange(tokens_BW.shape[1])[None, :] < length_B[:, None]
    sum_B = cache["sum_B"] + jnp.sum(jnp.where(valid_BW, tokens_BW, 0), 1)
    return self.value(sum_B), {"sum_B": sum_B}


def test_pav_beam_scores_candidates_against_their_parent_value(monkeypatch):
  """Wiring: each candidate's parent value is its parent's V, shared by its
  C siblings (first step: V of the question). Passing a candidate's own
  value instead makes A = 0 (PAV beam == PRM-Q beam) and fails here."""
  calls = []
  orig = beam_lib.beam_scores

  def spy(q_new_M, q_parent_M, **kw):
    calls.append((np.asarray(q_new_M), np.asarray(q_parent_M)))
    return orig(q_new_M, q_parent_M, **kw)

  monkeypatch.setattr(beam_lib, "beam_scores", spy)
  graphdef, params = _policy(3, 1.3, 1.5)
  s = _sampler(graphdef, 1.0)
  b, c = 2, 3
  cfg = search.BeamConfig(beam_size=b, expansions=c, max_steps=4,
                          max_step_tokens=16, mode="pav", alpha=1.0,
                          prover_k=1)
  res = search.beam_search(s, params, SumScorer(), PROMPTS, cfg,
                           jax.random.key(5))
  assert len(calls) >= 2
  v0_E = np.array([SumScorer.value(sum(p)) for p in PROMPTS])
  np.testing.assert_allclose(calls[0][1], np.repeat(v0_E, b * c), atol=1e-6)
  for vals, v0 in zip(res.values, v0_E):
    assert vals[0] == pytest.approx(v0)
  varied = 0
  for q_new, q_par in calls:
    par_RC = q_par.reshape(-1, c)
    assert (par_RC == par_RC[:, :1]).all(), par_RC  # siblings share
    varied += int(np.any(q_new.reshape(-1, c).std(1) > 0))
    # Every parent value is a value the verifier can give (not a score).
    assert set(np.round(q_par * 8).tolist()) <= set(range(1, 8))
  assert varied >= 2  # the mutation would have broken sibling equality
  # Each kept trace's values are its prefixes' verifier values.
  for p, r, vals in zip(PROMPTS, res.responses, res.values):
    ends = [i + 1 for i, t in enumerate(r) if t == STEP]
    for h, e in enumerate(ends[: len(vals) - 1]):
      assert vals[h + 1] == pytest.approx(SumScorer.value(sum(p + r[:e])))


def test_pav_beam_differs_from_prm_q_beam_when_advantages_matter():
  """With a strong alpha, PAV beam picks differently from PRM-Q beam on the
  same samples (same keys): A != 0 reaches the selection."""
  graphdef, params = _policy(3, 1.3, 1.5)
  s = _sampler(graphdef, 1.0)
  differ = []
  for key in (6, 7):  # two draws: a selection changes in most, not all
    out = {}
    for mode in ("q", "pav"):
      cfg = search.BeamConfig(beam_size=2, expansions=3, max_steps=4,
                              max_step_tokens=16, mode=mode, alpha=4.0,
                              prover_k=1)
      out[mode] = search.beam_search(s, params, SumScorer(), PROMPTS * 4,
                                     cfg, jax.random.key(key)).responses
    differ.append(out["q"] != out["pav"])
  assert any(differ)


def test_beam_start_one_samples_c_first_steps():
  graphdef, params = _policy(3, 1.3, 1.5)
  s = _sampler(graphdef, 1.0)
  counts = {}
  for start in ("beam", "one"):
    cfg = search.BeamConfig(beam_size=4, expansions=2, max_steps=1,
                            max_step_tokens=16, start=start)
    res = search.beam_search(s, params, TokenScorer(45), PROMPTS, cfg,
                             jax.random.key(7))
    counts[start] = res.compute
  # One step only: "beam" samples B*C = 8 first steps per problem, "one"
  # C = 2; the verifier reads the question once either way.
  g_beam = counts["beam"].generated_tokens
  g_one = counts["one"].generated_tokens
  assert 0 < g_one < g_beam
  assert g_beam / g_one == pytest.approx(4.0, rel=0.35)
  plen = sum(map(len, PROMPTS))
  assert counts["one"].verifier_tokens == plen + g_one
  with pytest.raises(ValueError, match="beam start"):
    search.BeamConfig(beam_size=2, start="two")


def test_mc_scorer_beam_finds_the_good_token_and_charges_rollouts():
  """The test-time MC scorer (Q̂ from n rollouts, grader: the trace holds
  token 45) steers the beam like an oracle scorer; its rollouts are policy
  compute and it reads no verifier tokens."""
  graphdef, params = _policy(3, 1.3, 1.5)
  s = _sampler(graphdef, 1.0)
  prompts = PROMPTS * 2
  good = 45
  scorer = search.MCScorer(grade=lambda i, ids: float(good in ids), n=4,
                           max_new_tokens=64)
  kw = dict(beam_size=4, expansions=3, max_steps=6, max_step_tokens=16,
            alpha=0.5, prover_k=4)
  res = search.beam_search(s, params, scorer, prompts,
                           search.BeamConfig(mode="pav", **kw),
                           jax.random.key(2))
  plain = search.beam_search(s, params, TokenScorer(good), prompts,
                             search.BeamConfig(mode="pav", **kw),
                             jax.random.key(2))
  assert np.mean([good in r for r in res.responses]) >= 0.75
  assert res.compute.verifier_tokens == 0
  assert res.compute.generated_tokens > 2 * plain.compute.generated_tokens
  for vals in res.values:  # Q̂ are multiples of 1/n (or exact outcomes)
    np.testing.assert_allclose(np.array(vals) * 4, np.round(np.array(vals) * 4),
                               atol=1e-6)


def test_mc_scorer_best_of_n_scores_step_prefixes_not_the_outcome():
  graphdef, params = _policy(3, 1.3, 1.5)
  s = _sampler(graphdef, 1.0)
  good = 45
  scorer = search.MCScorer(grade=lambda i, ids: float(good in ids), n=4,
                           max_new_tokens=48)
  p0 = PROMPTS[0]
  responses = [[[good], [7, STEP, good, STEP, 9], [8, STEP]]]
  score, tok, v1 = scorer.bon_scores(s, params, [p0], responses, STEP,
                                     jax.random.key(0), batch_prefixes=2)
  # Sample 0 has no step prefix (its only step is the final one, whose
  # value would be the graded outcome): it gets V(s_1).
  assert score.shape == (1, 3)
  np.testing.assert_allclose(score * 4, np.round(score * 4))
  assert score[0, 0] <= 1.0
  # A prefix holding the good token has Q̂ = 1, so sample 1's min is the
  # value of its first prefix, which is < 1 unless every rollout hits.
  assert 0.0 <= score[0, 1] <= 1.0
  lp = len(p0)
  np.testing.assert_array_equal(tok[0, :, 0], [0, 2 * lp + 6, lp + 2])
  assert tok[0, 0, 1] == 0 and tok[0, 1, 1] > 0
  assert v1[0, 0] == lp and v1[0, 1] > 0
  smp = search.Samples(responses=responses, finished=np.ones((1, 3), bool),
                       correct=np.zeros((1, 3)), answers=[[None] * 3],
                       generated_EK=np.array([[2, 6, 3]]),
                       prompt_len_E=np.array([lp]))
  c = search.mc_bon_compute(smp, 3, tok, v1)
  assert c.verifier_tokens == 0
  assert c.prefilled_tokens == lp + tok[0, :, 0].sum() + lp
  assert c.generated_tokens == 11 + tok[0, :, 1].sum() + v1[0, 1]


def test_logprob_scores_mean_and_sum():
  smp = search.Samples(
      responses=[[[]] * 2], finished=np.ones((1, 2), bool),
      correct=np.array([[0.0, 1.0]]), answers=[[None] * 2],
      generated_EK=np.array([[2, 8]]), prompt_len_E=np.array([5]),
      logprob_EK=np.array([[-2.0, -4.0]]))
  np.testing.assert_allclose(search.logprob_scores(smp, "sum"), [[-2, -4]])
  np.testing.assert_allclose(search.logprob_scores(smp, "mean"),
                             [[-1.0, -0.5]])
  # Sum favours the short sample, mean the long (correct) one.
  assert search.best_of_n(search.logprob_scores(smp, "sum"),
                          smp.correct, 2) == 0.0
  assert search.best_of_n(search.logprob_scores(smp, "mean"),
                          smp.correct, 2) == 1.0
  with pytest.raises(ValueError):
    search.logprob_scores(smp, "max")


# Distinct beams and trained provers (issue 13, Fig. 5c) -----------------------


def test_distinct_mask_keeps_first_copy_per_problem():
  # Two problems, B = 1 parent row each, C = 3 candidates per parent.
  resp_RL = np.array([[5, 6, 0], [5, 6, 0]], np.int32)
  rlen_R = np.array([2, 2])
  tok_MN = np.array([[7, STEP], [7, STEP], [8, STEP],
                     [7, STEP], [9, STEP], [7, STEP]], np.int32)
  len_M = np.array([2, 2, 2, 2, 2, 2])
  parent_M = np.arange(6) // 3
  ok_M = np.array([True, True, True, True, True, False])
  out = search.distinct_mask(resp_RL, rlen_R, tok_MN, len_M, parent_M, ok_M,
                             per_problem=3)
  # Problem 0: candidate 1 copies 0; problem 1 may repeat problem 0's text.
  assert out.tolist() == [True, False, True, True, True, False]
  # A shorter step that is a prefix of another is a different state.
  len2 = np.array([1, 2, 2, 2, 2, 2])
  out2 = search.distinct_mask(resp_RL, rlen_R, tok_MN, len2, parent_M, ok_M,
                              per_problem=3)
  assert out2[:3].tolist() == [True, True, True]


def test_distinct_beam_keeps_no_duplicate_prefixes():
  graphdef, params = _policy(3, 1.3, 3.0)  # greedy traces end with EOS
  s = _sampler(graphdef, 0.0)  # greedy: every candidate of a parent copies
  kw = dict(beam_size=3, expansions=2, max_steps=4, max_step_tokens=16,
            mode="q")
  plain = search.beam_search(s, params, SumScorer(), PROMPTS,
                             search.BeamConfig(**kw), jax.random.key(8))
  dist = search.beam_search(s, params, SumScorer(), PROMPTS,
                            search.BeamConfig(distinct=True, **kw),
                            jax.random.key(8))
  # Greedy decoding gives one distinct state per problem: the plain beam
  # fills its B slots with copies (B finished copies), the distinct beam
  # keeps one and spends fewer tokens; both answer with the greedy trace.
  assert [len(p) for p in plain.pools] == [3] * len(PROMPTS)
  assert [len(p) for p in dist.pools] == [1] * len(PROMPTS)
  assert dist.compute.generated_tokens < plain.compute.generated_tokens
  assert dist.responses == plain.responses


def test_beam_scores_trained_provers():
  q_new, q_par = jnp.array([0.2, 0.6]), jnp.array([0.5, 0.5])
  mu_new, mu_par = jnp.array([0.9, 0.3]), jnp.array([0.4, 0.4])
  got = search.beam_scores(q_new, q_par, mode="pav", alpha=0.5, prover_k=4,
                           prover="q_mu", mu_new_M=mu_new,
                           mu_parent_M=mu_par)
  np.testing.assert_allclose(got, [0.2 + 0.25, 0.6 - 0.05], atol=1e-6)
  got = search.beam_scores(q_new, q_par, mode="pav", alpha=0.5, prover_k=4,
                           prover="a_direct", mu_new_M=jnp.array([-0.4, 0.2]))
  np.testing.assert_allclose(got, [0.0, 0.7], atol=1e-6)
  with pytest.raises(ValueError, match="prover"):
    search.beam_scores(q_new, q_par, mode="pav", alpha=0.5, prover_k=4,
                       prover="bo4")
  with pytest.raises(ValueError, match="prover"):
    search.BeamConfig(beam_size=2, prover="x")


class ConstScorer:
  """Scripted prover verifier: the same value everywhere (A = const)."""

  def __init__(self, value):
    self.value = value

  def init_cache(self, batch, size):
    del size
    return {"n_B": jnp.zeros((batch,), jnp.int32)}

  def extend(self, tokens_BW, length_B, pos0_B, cache):
    del tokens_BW, pos0_B
    length_B = jnp.asarray(length_B)
    return (jnp.full(length_B.shape, self.value, jnp.float32),
            {"n_B": cache["n_B"] + length_B})


def test_pav_beam_with_trained_prover_verifiers():
  """A q_mu prover verifier that is the value verifier itself (mu = pi) is
  the closed form with K = 1; an a_direct prover that predicts A = 0 is the
  PRM-Q beam. Both verifiers' tokens are charged."""
  graphdef, params = _policy(3, 1.3, 1.5)
  s = _sampler(graphdef, 1.0)
  kw = dict(beam_size=2, expansions=3, max_steps=4, max_step_tokens=16,
            alpha=4.0)
  prompts = PROMPTS * 4

  def run(prover_verifier=None, **extra):
    return search.beam_search(s, params, SumScorer(), prompts,
                              search.BeamConfig(**kw, **extra),
                              jax.random.key(7),
                              prover_verifier=prover_verifier)

  bok1 = run(mode="pav", prover_k=1)
  qmu = run(SumScorer(), mode="pav", prover="q_mu")
  assert qmu.responses == bok1.responses
  assert qmu.values == bok1.values
  assert qmu.compute.verifier_tokens == 2 * bok1.compute.verifier_tokens
  q = run(mode="q")
  adir = run(ConstScorer(0.0), mode="pav", prover="a_direct")
  assert adir.responses == q.responses
  assert q.responses != bok1.responses  # A != 0 reached the selection
  with pytest.raises(ValueError, match="prover_verifier"):
    run(mode="pav", prover="q_mu")


def test_pav_min_scores_trained_provers():
  v = jnp.array([[0.5, 0.7, 0.2, 0.0], [0.4, 0.6, 0.8, 0.0]])
  m = jnp.array([[1, 1, 1, 0], [1, 1, 1, 0]])
  np.testing.assert_allclose(
      search.pav_min_scores(v, m, 0.5, 4.0, mu_BP=v, prover="q_mu"),
      search.pav_min_scores(v, m, 0.5, 1.0), atol=1e-6)
  # a_direct: Q + alpha A per step, min over steps; A at the question unused.
  a = jnp.array([[9.0, -0.2, 0.4, 0.0], [9.0, 0.0, -1.0, 0.0]])
  np.testing.assert_allclose(
      search.pav_min_scores(v, m, 0.5, 4.0, mu_BP=a, prover="a_direct"),
      [min(0.7 - 0.1, 0.2 + 0.2), min(0.6, 0.8 - 0.5)], atol=1e-6)
  np.testing.assert_allclose(
      search.tanh_from_sigmoid(np.array([0.5, 1 / (1 + np.exp(-1.0)), 1.0])),
      [0.0, np.tanh(1.0), 1.0], atol=1e-9)


def test_tables_md_methods_with_their_own_ns():
  agg = {"orm_bon": {"ns": [2, 4, 8], "acc_mean": [0.1, 0.2, 0.3],
                     "acc_std": [0, 0, 0], "flops_mean": [1.0, 2.0, 4.0]},
         "pav_beam": {"ns": [2, 4], "acc_mean": [0.5, 0.6],
                      "acc_std": [0, 0], "flops_mean": [3.0, 6.0]}}
  md = search_report.tables_md({"main": {
      "ns": [2, 4, 8], "seeds": [0], "num_prompts": 3, "agg": agg,
      "summaries": [{"x": 1.0}]}})
  assert "| pav_beam | 0.500±0.000 | 0.600±0.000 |  |" in md
  assert "| orm_bon | 1.00e+00 | 2.00e+00 | 4.00e+00 |" in md


class _FakeTask:
  """Problems are the PROMPTS; a response is correct when it holds 45."""

  def prompt(self, ex):
    return ex

  def grade(self, ex, text):
    del ex
    return float("45" in text.split())

  def extract_answer(self, text):
    return text.split()[-1] if text.split() else None


class _FakeTok:
  pad_id, eos_id, step_ids = PAD, EOS, STEP

  def encode(self, prompt, bos=True):
    del bos
    return list(prompt)

  def decode(self, ids):
    return " ".join(str(i) for i in ids)


def test_compare_runs_trained_prover_rows_and_charges_both_verifiers():
  """compare() with q_mu and a_direct verifiers: their best-of-N and beam
  rows exist, and each is charged two verifiers' tokens."""
  graphdef, params = _policy(3, 1.3, 1.5)
  s = _sampler(graphdef, 1.0)
  vers = {}
  for i, name in enumerate(("orm", "prm_q", "q_mu", "a_direct")):
    vg, vp = tr.split(verifier.create(CFG, seed=10 + i))
    vers[name] = (vg, vp)
  settings = search.SearchSettings(ns=(2,), max_steps=3, max_step_tokens=16,
                                   max_new_tokens=24, batch_rows=64,
                                   logprob_bon="", weighted_majority=False)
  res = search.compare(sampler=s, policy_params=params, policy_cfg=CFG,
                       verifiers=vers, task=_FakeTask(), tok=_FakeTok(),
                       examples=PROMPTS, settings=settings,
                       rng=jax.random.key(9))
  m = res["methods"]
  for name in ("pav_min_bon_q_mu", "pav_min_bon_a_direct", "pav_beam_q_mu",
               "pav_beam_a_direct"):
    assert name in m and m[name]["ns"] == [2]
  one = m["prm_min_bon"]["compute"][0]["verifier_tokens"]
  assert m["pav_min_bon_q_mu"]["compute"][0]["verifier_tokens"] == 2 * one
  # A beam's verifier reads the prompt and every sampled step once; a
  # trained prover reads them again.
  for name, nv in (("pav_beam", 1), ("pav_beam_q_mu", 2),
                   ("pav_beam_a_direct", 2)):
    c = m[name]["compute"][0]
    assert c["verifier_tokens"] == pytest.approx(
        nv * (c["prefilled_tokens"] + c["generated_tokens"]))
