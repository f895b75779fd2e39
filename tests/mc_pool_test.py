"""Tests of pav_jax.mc_pool: rollouts rewound from a seed state and decoded
in a refilled ring-cache pool equal those of a prefilled, forked prefix."""

import jax
import numpy as np
import pytest

from pav_jax import config as config_lib
from pav_jax import mc_pool
from pav_jax import mc_values
from pav_jax import sampler as sampler_lib
from pav_jax import sharding
from pav_jax import transformer

PAD, BOS, EOS, STEP = 0, 1, 2, 4


def _lm(num_kv_heads):
  cfg = config_lib.ModelConfig.tiny(vocab_size=8).replace(
      num_layers=2, embed_dim=32, hidden_dim=64, num_heads=2,
      num_kv_heads=num_kv_heads, head_dim=16, sliding_window=6)
  graphdef, params = transformer.split(transformer.create(cfg, seed=4))
  return graphdef, params, cfg


def _seeds(s, params, prompts, steps):
  """Seed rows decoded step by step (rows idle while others finish a step
  leave empty slots between theirs); (final state, responses)."""
  state = s.prefill(params, prompts, None,
                    key_B=jax.random.split(jax.random.key(7), len(prompts)))
  resp = [[] for _ in prompts]
  for _ in range(steps):
    out = s.decode(params, state, 5, stop_at_step=True)
    toks, lens = jax.device_get((out.tokens_BN, out.length_B))
    for r in range(len(prompts)):
      resp[r] += toks[r, : lens[r]].tolist()
    state = out.state
  return state, resp


def _reference(s, params, prefixes, keys, max_new):
  """Each prefix prefilled and forked, decoded max_new tokens: (graded
  texts per prefix, sampled tokens up to the budget)."""
  n = keys.shape[1]
  st = s.prefill(params, prefixes, None, key_B=keys[:, 0])
  st = sampler_lib.fork(st, n, key_B=keys.reshape(-1))
  out = s.decode(params, st, max_new)
  toks, lens = jax.device_get((out.tokens_BN, out.length_B))
  texts, sampled = [], 0
  for a, p in enumerate(prefixes):
    resp = p[p.index(STEP) + 1:]
    cap = max_new - len(resp)
    got = []
    for i in range(n):
      cont = toks[a * n + i, : lens[a * n + i]].tolist()
      sampled += min(len(cont), cap)
      if cont and cont[-1] == EOS:
        cont = cont[:-1]
      got.append(tuple((resp + cont)[:max_new]))
    texts.append(sorted(got))
  return texts, sampled


@pytest.mark.parametrize("num_kv_heads,mesh_shape", [
    (1, None), (2, {"data": 2, "fsdp": 2, "tensor": 2})])
def test_pooled_rollouts_equal_prefilled_forks_token_for_token(
    num_kv_heads, mesh_shape):
  gd, params, cfg = _lm(num_kv_heads)
  if mesh_shape is None:
    _check_pool(gd, params, cfg)
  else:  # rows over data x fsdp, KV heads over tensor
    with jax.set_mesh(sharding.make_mesh(mesh_shape)):
      _check_pool(gd, params, cfg)


def _check_pool(gd, params, cfg):
  max_new, n = 14, 3
  s = sampler_lib.Sampler(gd, cfg, cache_size=48, eos_id=EOS, step_id=STEP,
                          pad_id=PAD, buckets=(8, 16))
  prompts = [[BOS, 5, STEP], [BOS, 6, 7, 5, STEP], [BOS, 7, 6, STEP]]
  seed, resp = _seeds(s, params, prompts, steps=2)
  src, prefixes = [], []
  for r, p in enumerate(prompts):
    for cut in sorted({0, 1, len(resp[r]) // 2, len(resp[r])}):
      body = [t for t in resp[r][:cut] if t != EOS]
      if len(body) < cut or cut >= max_new:
        continue  # prefixes end before EOS, within the budget
      src.append(r)
      prefixes.append(p + body)
  keys = jax.random.split(jax.random.key(9), len(prefixes) * n).reshape(
      len(prefixes), n)
  want, want_sampled = _reference(s, params, prefixes, keys, max_new)
  got = [[] for _ in prefixes]

  def grade(a, ids):
    got[a].append(tuple(ids))
    return float(sum(ids) % 2 == 0)

  budget = mc_values.Budget()
  resp_A = [p[p.index(STEP) + 1:] for p in prefixes]
  # 4 rows for ~30 rollouts: refills, ring wraps and the narrower tail pool.
  succ = mc_pool.pooled_successes(
      s, params, seed, np.array(src), resp_A, prefixes,
      np.arange(len(prefixes)), keys, grade, max_new, budget, width=4,
      segment=2)
  assert [sorted(g) for g in got] == want
  np.testing.assert_array_equal(
      succ, [sum(sum(t) % 2 == 0 for t in w) for w in want])
  assert budget.mc_rollouts == len(prefixes) * n
  assert budget.sampled_tokens == want_sampled
  assert budget.cache_full == 0
  # More rollouts than rows x ring passes: the shared index wrapped.
  assert want_sampled > 4 * mc_pool.ring_size(8, max_new, 2)


def test_prefix_state_decodes_like_a_prefill_of_the_prefix():
  gd, params, cfg = _lm(2)
  s = sampler_lib.Sampler(gd, cfg, cache_size=48, eos_id=EOS, step_id=STEP,
                          pad_id=PAD, buckets=(8, 16))
  prompts = [[BOS, 5, STEP], [BOS, 6, 7, 5, 6, STEP]]
  seed, resp = _seeds(s, params, prompts, steps=2)
  prefixes = [prompts[0] + resp[0][:2], prompts[1]]
  keys = jax.random.split(jax.random.key(3), 2)
  st = mc_pool.prefix_state(s, seed, [0, 1], [len(p) - 1 for p in prefixes],
                            [p[-1] for p in prefixes], keys, 10)
  a = s.decode(params, st, 10)
  b = s.decode(params, s.prefill(params, prefixes, None, key_B=keys), 10)
  np.testing.assert_array_equal(a.tokens_BN, b.tokens_BN)
  np.testing.assert_allclose(a.logprobs_BN, b.logprobs_BN, atol=1e-5)
  assert (a.stop_B != sampler_lib.CACHE_FULL).all()


def test_ring_size_holds_prefix_budget_and_a_segment():
  assert mc_pool.ring_size(25, 80, 4) == 112  # 24 + 80 + 3 = 107
  assert mc_pool.ring_size(8, 14, 2) % 16 == 0
  assert mc_pool.ring_size(3, 10, 8) % 8 == 0
