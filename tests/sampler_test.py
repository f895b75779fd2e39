"""Sampler tests: greedy == argmax of full forward, resume, fork, compiles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pav_jax import config as config_lib
from pav_jax import sampler as sampler_lib
from pav_jax import transformer as tr

EOS, STEP, PAD = 1, 2, 0


@pytest.fixture(scope="module")
def model():
  cfg = config_lib.ModelConfig.tiny(vocab_size=48).replace(
      num_layers=2, embed_dim=32, hidden_dim=64, head_dim=8, sliding_window=8)
  graphdef, params = tr.split(tr.create(cfg, seed=3))
  # Make the step delimiter likely so that step stops happen.
  params["embed_VD"] = params["embed_VD"].at[STEP].mul(1.7)
  return cfg, graphdef, params


def _sampler(model, **kw):
  cfg, graphdef, _ = model
  kw.setdefault("sampling", sampler_lib.SamplingConfig(temperature=1.0))
  return sampler_lib.Sampler(graphdef, cfg,
                             cache_size=kw.pop("cache_size", 256),
                             eos_id=EOS, step_id=STEP, pad_id=PAD,
                             buckets=kw.pop("buckets", (8, 16)), **kw)


PROMPTS = [[3, 4, 5], [6, 7, 8, 9, 10, 11], [12]]


def test_greedy_equals_repeated_full_forward_argmax(model):
  cfg, graphdef, params = model
  s = _sampler(model, sampling=sampler_lib.SamplingConfig(temperature=0.0))
  out = s.generate(params, PROMPTS, jax.random.key(0), max_new_tokens=10)
  fwd = jax.jit(tr.forward, static_argnums=0)
  for b, prompt in enumerate(PROMPTS):
    seq = list(prompt)
    for i in range(int(out.length_B[b])):
      # Right-pad to a fixed width so the reference forward compiles once.
      tok = jnp.asarray([seq + [PAD] * (24 - len(seq))])
      valid = jnp.arange(24)[None] < len(seq)
      logits, _ = fwd(graphdef, params, tok, tr.positions_from_mask(valid),
                      valid)
      nxt = int(jnp.argmax(logits[0, len(seq) - 1]))
      assert nxt == int(out.tokens_BN[b, i]), (b, i)
      seq.append(nxt)
      if nxt == EOS:
        break


def test_logprobs_match_full_forward(model):
  _, graphdef, params = model
  s = _sampler(model)
  out = s.generate(params, PROMPTS[:1], jax.random.key(1), max_new_tokens=6)
  n = int(out.length_B[0])
  seq = jnp.asarray([PROMPTS[0] + list(np.asarray(out.tokens_BN[0, :n]))])
  valid = jnp.ones_like(seq, bool)
  logits, _ = tr.forward(graphdef, params, seq,
                         tr.positions_from_mask(valid), valid)
  logp = jax.nn.log_softmax(logits[0], -1)
  p = len(PROMPTS[0])
  ref = [float(logp[p - 1 + i, seq[0, p + i]]) for i in range(n)]
  np.testing.assert_allclose(out.logprobs_BN[0, :n], ref, atol=1e-4)


def test_step_stop_then_resume_equals_uninterrupted(model):
  _, _, params = model
  s = _sampler(model)
  key = jax.random.key(11)  # two rows end steps within 24 tokens
  full = s.generate(params, PROMPTS, key, max_new_tokens=24)
  state = s.prefill(params, PROMPTS, key)
  pieces = [[] for _ in PROMPTS]
  saw_step = False
  for _ in range(30):
    out = s.decode(params, state, max_new_tokens=24, stop_at_step=True)
    saw_step |= bool(jnp.any(out.stop_B == sampler_lib.STEP_END))
    for b in range(len(PROMPTS)):
      toks = list(np.asarray(out.tokens_BN[b, : int(out.length_B[b])]))
      assert STEP not in toks[:-1]  # at most one step per call
      pieces[b] += toks
    state = out.state
    if all(len(p) >= 24 or (p and p[-1] == EOS) for p in pieces):
      break
  assert saw_step
  for b in range(len(PROMPTS)):
    n = int(full.length_B[b])
    np.testing.assert_array_equal(pieces[b][:n], full.tokens_BN[b, :n])


def test_fork_equals_independent_rows_with_same_keys(model):
  _, _, params = model
  s = _sampler(model, buckets=(8, 16, 32))
  prompt = [PROMPTS[1]]
  for seed in range(20):  # a first step that ends at the delimiter, not EOS
    state = s.prefill(params, prompt, jax.random.key(seed))
    first = s.decode(params, state, max_new_tokens=12, stop_at_step=True)
    if (int(first.stop_B[0]) == sampler_lib.STEP_END
        and int(first.length_B[0]) > 1):
      break
  assert int(first.stop_B[0]) == sampler_lib.STEP_END
  prefix = prompt[0] + list(
      np.asarray(first.tokens_BN[0, : int(first.length_B[0])]))
  n = 5
  keys = jax.random.split(jax.random.key(9), n)
  # decode donates its input state, keys included: hand it a copy.
  forked = s.decode(params, sampler_lib.fork(first.state, n, jnp.copy(keys)),
                    max_new_tokens=12)
  # Independent rows: re-prefill the full prefix n times with the same keys.
  indep_state = s.prefill(params, [prefix] * n, None, key_B=keys)
  indep = s.decode(params, indep_state, max_new_tokens=12)
  np.testing.assert_array_equal(forked.tokens_BN, indep.tokens_BN)
  np.testing.assert_allclose(forked.logprobs_BN, indep.logprobs_BN, atol=1e-4)
  assert len({tuple(np.asarray(r)) for r in forked.tokens_BN}) > 1


def test_decode_compiles_once_per_bucket(model):
  _, _, params = model
  s = _sampler(model)
  for i, prompts in enumerate([[[3, 4]], [[5, 6, 7, 8, 9]], [[1] * 8]]):
    s.generate(params, prompts, jax.random.key(i), max_new_tokens=5)
  assert s.trace_counts == {"prefill": 1, "decode": 1}
  # Bucket 16.
  s.generate(params, [[1] * 12], jax.random.key(0), max_new_tokens=5)
  assert s.trace_counts == {"prefill": 2, "decode": 1}


def test_top_k_one_is_greedy(model):
  _, _, params = model
  greedy = _sampler(
      model, sampling=sampler_lib.SamplingConfig(temperature=0.0))
  topk = _sampler(
      model, sampling=sampler_lib.SamplingConfig(temperature=1.0, top_k=1))
  topp = _sampler(
      model, sampling=sampler_lib.SamplingConfig(temperature=1.0, top_p=1e-6))
  a = greedy.generate(params, PROMPTS, jax.random.key(0), 8)
  b = topk.generate(params, PROMPTS, jax.random.key(1), 8)
  c = topp.generate(params, PROMPTS, jax.random.key(2), 8)
  np.testing.assert_array_equal(a.tokens_BN, b.tokens_BN)
  np.testing.assert_array_equal(a.tokens_BN, c.tokens_BN)


def test_top_p_keeps_nucleus():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  cfg = sampler_lib.SamplingConfig(temperature=1.0, top_p=0.7)
  keys = jax.random.split(jax.random.key(0), 2000)
  toks = jax.vmap(
      lambda k: sampler_lib.sample_logits(logits, k[None], cfg))(keys)
  assert set(np.unique(toks)) == {0, 1}


def test_prompt_longer_than_cache_fails_clearly(model):
  _, _, params = model
  s = _sampler(model, cache_size=16)
  with pytest.raises(ValueError, match="does not fit the KV cache"):
    s.generate(params, [[3] * 16], jax.random.key(0), max_new_tokens=4)
  with pytest.raises(ValueError, match="largest bucket"):
    s.generate(params, [[3] * 40], jax.random.key(0), max_new_tokens=4)


def test_cache_full_stops_rows(model):
  _, _, params = model
  s = _sampler(model, cache_size=12,
               sampling=sampler_lib.SamplingConfig(temperature=0.0))
  out = s.generate(params, [[3, 4, 5]], jax.random.key(0), max_new_tokens=20)
  assert int(out.length_B[0]) <= 12 - 8 + 1
  assert int(out.stop_B[0]) in (sampler_lib.CACHE_FULL, sampler_lib.EOS)


@pytest.mark.parametrize("top_k", [None, 3])
def test_sampled_frequencies_match_probabilities(top_k):
  # Inverse-CDF sampling draws each token with its softmax probability
  # (after top-k): 40k draws, every frequency within 5 standard errors, and
  # masked tokens never drawn.
  logits = jnp.array([[1.0, -0.5, 2.0, 0.0, 0.3, -2.0]])
  cfg = sampler_lib.SamplingConfig(temperature=0.8, top_k=top_k)
  n = 40_000
  keys = jax.random.split(jax.random.key(7), n)
  toks = np.asarray(jax.jit(jax.vmap(
      lambda k: sampler_lib.sample_logits(logits, k[None], cfg)[0]))(keys))
  scaled = np.asarray(logits[0]) / 0.8
  if top_k is not None:
    scaled = np.where(scaled >= np.sort(scaled)[-top_k], scaled, -np.inf)
  p = np.exp(scaled - scaled.max())
  p /= p.sum()
  freq = np.bincount(toks, minlength=p.size) / n
  se = np.sqrt(p * (1 - p) / n)
  assert np.all(np.abs(freq - p) <= 5 * se + 1e-12), (freq, p)
  assert np.all(freq[p == 0] == 0)


def test_inverse_cdf_never_emits_zero_probability_tokens():
  # Trailing and interior zeros, and a row whose only token is the last.
  probs = jnp.array([[0.0, 0.25, 0.0, 0.75, 0.0, 0.0],
                     [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])
  keys = jax.random.split(jax.random.key(3), 5000)
  toks = np.asarray(jax.vmap(lambda k: sampler_lib.inverse_cdf_sample(
      probs, jax.random.split(k, 2)))(keys))
  assert set(np.unique(toks[:, 0])) == {1, 3}
  assert set(np.unique(toks[:, 1])) == {5}
  assert 0.70 < np.mean(toks[:, 0] == 3) < 0.80


@pytest.mark.parametrize("num_kv_heads", [1, 2])
def test_decode_updates_the_kv_cache_in_place(num_kv_heads):
  # The compiled decode loop must not copy a KV-cache buffer per step: each
  # layer's K/V is written at one slot and read by attention, in place
  # (the old [B, S, K, H] layout made XLA:CPU copy every layer's cache
  # twice per step, ~20% of decode time: 8 copies on the multi-query shape
  # here). Counted on the optimised HLO: no `copy` of a cache-shaped array.
  cfg = config_lib.ModelConfig.tiny(vocab_size=64).replace(
      num_layers=2, embed_dim=64, hidden_dim=128, num_heads=2,
      num_kv_heads=num_kv_heads, head_dim=32)
  graphdef, params = tr.split(tr.create(cfg, seed=3))
  s = sampler_lib.Sampler(graphdef, cfg, cache_size=96, eos_id=EOS,
                          step_id=STEP, pad_id=PAD, buckets=(8,))
  state = s.prefill(params, [[3, 4, 5]] * 8, jax.random.key(0))
  k = state.cache["layers"]["layer_0"]["k"]
  # Heads-major; a multi-query cache has no head axis.
  assert k.shape == ((8, 96, 32) if num_kv_heads == 1 else (8, 2, 96, 32))
  hlo = s._decode.lower(params, state, max_new_tokens=8, stop_at_step=True,
                        mesh=None).compile().as_text()
  shape = "f32[%s]" % ",".join(str(d) for d in k.shape)
  copies = [line for line in hlo.splitlines()
            if shape in line and " copy(" in line]
  assert not copies, copies[:3]
