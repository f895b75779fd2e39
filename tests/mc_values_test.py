"""Tests of pav_jax.mc_values and the search's test-time MC scorer: the
scorer's Q̂ equals the labeller's on the same keys."""

import jax
import numpy as np
import pytest

from pav_jax import config as config_lib
from pav_jax import labelling
from pav_jax import mc_values
from pav_jax import sampler as sampler_lib
from pav_jax import transformer
from pav_jax.search import mc_scorer

PAD, BOS, EOS, STEP = 0, 1, 2, 4


def _tiny_lm(vocab=8):
  cfg = config_lib.ModelConfig.tiny(vocab_size=vocab).replace(
      num_layers=1, embed_dim=32, hidden_dim=64, num_heads=2, num_kv_heads=1,
      head_dim=16, sliding_window=None)
  graphdef, params = transformer.split(transformer.create(cfg, seed=3))
  return graphdef, params, cfg


def _grade_sum(i, resp):
  return float((sum(resp) + i) % 3 == 0)


def _prefixes_of(arr, lc):
  """(h, row, prompt index, prompt+response prefix, response) of every
  MC-labelled prefix of a label_chunk result (s_1 once per prompt)."""
  out = []
  for r in range(len(arr["tokens_NT"])):
    plen = int(arr["prompt_len_N"][r])
    row = arr["tokens_NT"][r].tolist()
    resp = row[plen: plen + int(arr["response_len_N"][r])]
    ends = [j + 1 for j, t in enumerate(resp) if t == STEP]
    for h in range(int(arr["num_prefixes_N"][r])):
      if arr["count_NP"][r, h] == 0:
        continue  # exact (EOS-closed): no rollouts
      if h == 0:
        if r % lc.n_cov:
          continue
        out.append((0, r // lc.n_cov, r // lc.n_cov, row[:plen], []))
      else:
        cut = resp[: ends[h - 1]]
        out.append((h, r, int(arr["prompt_index_N"][r]), row[:plen] + cut,
                    cut))
  return out


def test_mc_scorer_equals_labeller_q_on_the_same_keys():
  gd, params, cfg = _tiny_lm()
  s = sampler_lib.Sampler(gd, cfg, cache_size=96, eos_id=EOS, step_id=STEP,
                          pad_id=PAD)
  prompts = [[BOS, 6, 7, STEP], [BOS, 5, STEP], [BOS, 7, 7, 6, STEP]]
  lc = labelling.LabelConfig(n_cov=2, n_mc=4, max_new_tokens=16,
                             max_step_tokens=8, max_steps=4,
                             prompts_per_chunk=4, row_buckets=1)
  key = jax.random.key(1)
  arr, _ = labelling.label_chunk(s, params, prompts, _grade_sum, key, lc)
  k_mc = jax.random.fold_in(key, 2)  # the labeller's continuation stream
  items = _prefixes_of(arr, lc)
  assert len({h for h, *_ in items}) >= 3  # s_1 and at least two steps
  scorer = mc_scorer.MCScorer(grade=_grade_sum, n=lc.n_mc,
                              max_new_tokens=lc.max_new_tokens,
                              row_buckets=1)
  want, got_p, got_r = [], [], []
  for h, row, pi, prefix, resp in items:
    keys = mc_values.mc_keys(k_mc, h, np.array([row]), lc.n_mc)
    budget = mc_values.Budget()
    got_p.append(scorer.q_prefixes(s, params, [prefix], [resp], [pi], keys,
                                   1, budget)[0])
    # The beam-search path: rows of a state that holds the prefixes.
    state = s.prefill(params, [prefix], jax.random.key(9))
    got_r.append(scorer.q_rows(s, params, state, [0], [resp], [pi], keys, 1,
                               budget)[0])
    assert budget.cache_full_biased == 0
    assert budget.mc_rollouts == 2 * lc.n_mc
    want.append(arr["q_NP"][row * (lc.n_cov if h == 0 else 1), h])
  np.testing.assert_array_equal(got_p, want)
  np.testing.assert_array_equal(got_r, want)
  assert 0 < np.mean(want) < 1  # not a degenerate grader


def test_cache_full_is_counted_and_refused():
  gd, params, cfg = _tiny_lm()
  # 16 cache slots: an 8-slot prompt bucket leaves 8 of a 16-token budget.
  s = sampler_lib.Sampler(gd, cfg, cache_size=16, eos_id=EOS, step_id=STEP,
                          pad_id=PAD, buckets=(8,))
  st = mc_scorer.MCScorer(grade=_grade_sum, n=4, max_new_tokens=16,
                          row_buckets=1)
  budget = mc_values.Budget()
  st.q_prefixes(s, params, [[BOS, 6, STEP]], [[]], [0],
                mc_values.mc_keys(jax.random.key(0), 0, np.array([0]), 4), 1,
                budget)
  assert budget.cache_full_biased > 0
  assert budget.cache_full >= budget.cache_full_biased
  with pytest.raises(mc_values.CacheFullError, match="label.cache_size"):
    mc_values.check_cache_full(budget.cache_full, "x", "label.cache_size")
  mc_values.check_cache_full(0, "x", "label.cache_size")  # no error
