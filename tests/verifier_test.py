"""Verifier: one-pass step scores == per-prefix forward scores; the
log-prob-feature design == a hand computation; cached == one pass."""

import jax
import jax.numpy as jnp
import numpy as np

from pav_jax import config as config_lib
from pav_jax import transformer
from pav_jax import verifier

STEP, EOS, PAD = 4, 2, 0
CFG = config_lib.ModelConfig.tiny(vocab_size=40).replace(
    num_layers=2, embed_dim=32, hidden_dim=64, head_dim=8, sliding_window=6)

# Jitted once here: op-by-op (eager) calls compile every primitive again for
# each new shape, which made these tests slow; the values are the same.
_prefix_values = jax.jit(verifier.prefix_values, static_argnums=0,
                         static_argnames=("step_id", "eos_id",
                                          "num_prefixes"))
_score = jax.jit(verifier.score, static_argnums=0)
_forward = jax.jit(transformer.forward, static_argnums=0)


def _params(design="head"):
  graphdef, state = transformer.split(verifier.create(CFG, 1, design=design))
  state["head_D"] = jax.random.normal(jax.random.key(0), state["head_D"].shape)
  if design == "lp_features":
    state["lp_w"] = jnp.array([0.3, 0.7])
  return graphdef, state


def _rows(n=3, seed=0):
  """Random BOS + prompt + STEP + steps (last ends with EOS), right-padded."""
  rng = np.random.default_rng(seed)
  rows, plens = [], []
  for b in range(n):
    prompt = [1] + rng.integers(5, 40, 3 + b).tolist() + [STEP]
    resp = []
    for _ in range(2 + b):
      resp += rng.integers(5, 40, rng.integers(1, 4)).tolist() + [STEP]
    resp[-1] = EOS
    rows.append(prompt + resp)
    plens.append(len(prompt))
  t = max(map(len, rows)) + 2
  tok = np.full((n, t), PAD, np.int32)
  for i, r in enumerate(rows):
    tok[i, : len(r)] = r
  return rows, plens, tok


def test_boundaries_and_gather():
  #            prompt: 1 7 8 STEP | response: 9 STEP 10 11 STEP 12 EOS PAD
  tok = jnp.array([[1, 7, 8, STEP, 9, STEP, 10, 11, STEP, 12, EOS, PAD]])
  valid = tok != PAD
  bnd = verifier.boundary_mask(tok, valid, jnp.array([4]), STEP, EOS)
  assert np.flatnonzero(bnd[0]).tolist() == [3, 5, 8, 10]
  vals = jnp.arange(12, dtype=jnp.float32)[None]
  v, m = verifier.gather_boundaries(vals, bnd, 6)
  assert v[0].tolist() == [3, 5, 8, 10, 0, 0]
  assert m[0].tolist() == [1, 1, 1, 1, 0, 0]
  v, m = verifier.gather_boundaries(vals, bnd, 2)  # overflow is dropped
  assert v[0].tolist() == [3, 5]


def test_one_pass_equals_per_prefix_forward():
  graphdef, params = _params("head")
  rows, plens, tok = _rows()
  t = tok.shape[1]
  tok = jnp.asarray(tok)
  valid = tok != PAD
  v, m = _prefix_values(graphdef, params, tok, valid, jnp.array(plens),
                        step_id=STEP, eos_id=EOS, num_prefixes=8)
  score = _score
  for i, r in enumerate(rows):
    ends = [plens[i] - 1] + [j for j in range(plens[i], len(r))
                             if r[j] in (STEP, EOS)]
    assert int(m[i].sum()) == len(ends)
    for h, e in enumerate(ends):  # separate forward on the prefix alone
      pre = np.full((1, t), PAD, np.int32)  # fixed width: one compile
      pre[0, : e + 1] = r[: e + 1]
      ok = jnp.asarray(pre != PAD)
      logit, _ = score(graphdef, params, jnp.asarray(pre),
                       transformer.positions_from_mask(ok), ok)
      np.testing.assert_allclose(v[i, h], jax.nn.sigmoid(logit[0, e]),
                                 atol=1e-5)


def test_cached_scoring_equals_full_pass():
  """Incremental scoring (new step only) with the verifier's own KV cache."""
  graphdef, params = _params("head")
  score = _score
  tok = jax.random.randint(jax.random.key(2), (2, 10), 5, 40)
  valid = jnp.ones_like(tok, bool)
  pos = transformer.positions_from_mask(valid)
  full, _ = score(graphdef, params, tok, pos, valid)
  cache = transformer.init_cache(CFG, 2, 16)
  a, cache = score(graphdef, params, tok[:, :6], pos[:, :6], valid[:, :6],
                   cache)
  b, _ = score(graphdef, params, tok[:, 6:], pos[:, 6:], valid[:, 6:], cache)
  np.testing.assert_allclose(jnp.concatenate([a, b], 1), full, atol=1e-5)


def test_params_from_policy_share_backbone():
  policy = transformer.split(transformer.create(CFG, 3))[1]
  p = verifier.params_from_policy(policy, CFG)
  graphdef, ref = transformer.split(verifier.create(CFG))
  assert jax.tree.structure(p) == jax.tree.structure(ref)
  logit, _ = _score(graphdef, p, jnp.ones((1, 4), jnp.int32),
                    jnp.arange(4)[None], jnp.ones((1, 4), bool))
  np.testing.assert_array_equal(logit, 0.0)  # zero head: p = 0.5 everywhere


def test_lp_feature_values_equal_a_hand_computation():
  """q(question) + w1 * sum + w2 * min of the LM's response log-probs."""
  graphdef, params = _params("lp_features")
  rows, plens, tok = _rows(seed=1)
  valid = tok != PAD
  v, m = _prefix_values(graphdef, params, jnp.asarray(tok),
                        jnp.asarray(valid), jnp.array(plens),
                        step_id=STEP, eos_id=EOS, num_prefixes=8)
  pgd, _ = transformer.split(transformer.create(CFG))
  head, _ = _score(graphdef, params, jnp.asarray(tok),
                   transformer.positions_from_mask(valid), jnp.asarray(valid))
  for i, r in enumerate(rows):
    one = jnp.asarray([r])
    ok = jnp.ones_like(one, bool)
    logits = np.asarray(_forward(
        pgd, params["backbone"], one, transformer.positions_from_mask(ok),
        ok)[0][0], np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    q = float(head[i, plens[i] - 1])
    ends = [plens[i] - 1] + [j for j in range(plens[i], len(r))
                             if r[j] in (STEP, EOS)]
    assert int(m[i].sum()) == len(ends)
    for h, e in enumerate(ends):
      lps = [logp[j - 1, r[j]] for j in range(plens[i], e + 1)]
      want = q + 0.3 * sum(lps) + 0.7 * min(lps + [0.0])
      np.testing.assert_allclose(v[i, h], 1 / (1 + np.exp(-want)), atol=1e-5)


def test_lp_cached_extend_equals_one_pass():
  """CachedVerifier: question, then one step per extend (as beam search)."""
  from pav_jax.search import verifier_cache  # pylint: disable=g-import-not-at-top
  graphdef, params = _params("lp_features")
  rows, plens, tok = _rows(seed=2)
  valid = tok != PAD
  v, m = _prefix_values(graphdef, params, jnp.asarray(tok),
                        jnp.asarray(valid), jnp.array(plens),
                        step_id=STEP, eos_id=EOS, num_prefixes=8)
  cv = verifier_cache.CachedVerifier(graphdef, params)
  n = len(rows)
  ptok = np.full((n, max(plens)), PAD, np.int32)
  for i, r in enumerate(rows):
    ptok[i, : plens[i]] = r[: plens[i]]
  cache = cv.init_cache(n, 48)
  val, cache = cv.extend(ptok, np.array(plens), np.zeros(n, np.int32), cache)
  np.testing.assert_allclose(val, v[:, 0], atol=1e-5)
  steps = []
  for i, r in enumerate(rows):
    ends = [j for j in range(plens[i], len(r)) if r[j] in (STEP, EOS)]
    starts = [plens[i]] + [e + 1 for e in ends[:-1]]
    steps.append([r[s:e + 1] for s, e in zip(starts, ends)])
  pos = np.array(plens)
  for h in range(max(map(len, steps))):
    new = np.full((n, 8), PAD, np.int32)
    ln = np.zeros(n, np.int32)
    for i, st in enumerate(steps):
      if h < len(st):
        new[i, : len(st[h])] = st[h]
        ln[i] = len(st[h])
    # Reorder rows through the cache API as the beam search does.
    cache = verifier_cache.take_rows(cache, jnp.arange(n))
    val, cache = cv.extend(new, ln, pos, cache)
    pos = pos + ln
    for i in range(n):
      if ln[i]:
        np.testing.assert_allclose(val[i], v[i, h + 1], atol=1e-5)
