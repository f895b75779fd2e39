"""Step ends on a vocabulary with merged newline pieces ("\\n\\n").

A real SentencePiece vocabulary (Gemma's) has pieces that hold more than one
newline; a step must end at any of them in the sampler, the labeller, the
verifier's read positions, the search and the RL step index. The tokenizer
here is trained with "\\n\\n" as its own piece, so "a\\n\\nb\\nc" encodes as
[a, "\\n\\n", b, "\\n", c], like Gemma 3's.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece as spm

from pav_jax import config as config_lib
from pav_jax import labelling
from pav_jax import policy_gradient as pg
from pav_jax import sampler as sampler_lib
from pav_jax import steps
from pav_jax import tokenizer as tok_lib
from pav_jax import transformer
from pav_jax import verifier
from pav_jax.search import mc_scorer

TEXTS = ["12+3=15", "a cat sat on the mat", "x = 4 * 7", "so the answer is 9",
         "step one: add", "then multiply 3 by 8"] * 4


def _train_merged(prefix) -> tok_lib.Tokenizer:
  """The project's trainer settings plus a merged "\\n\\n" piece."""
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(TEXTS), model_prefix=str(prefix),
      vocab_size=300, model_type="bpe", normalization_rule_name="identity",
      remove_extra_whitespaces=False, add_dummy_prefix=False,
      split_digits=True, byte_fallback=True, character_coverage=1.0,
      allow_whitespace_only_pieces=True, pad_id=0, bos_id=1, eos_id=2,
      unk_id=3, user_defined_symbols=["\n", tok_lib.SCORE_PIECE, "\n\n"],
      hard_vocab_limit=False, num_threads=1, minloglevel=2)
  return tok_lib.Tokenizer.load(f"{prefix}.model")


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
  return _train_merged(tmp_path_factory.mktemp("merged") / "m")


def _nn(tok) -> int:
  i = tok._sp.piece_to_id("\n\n")  # pylint: disable=protected-access
  assert tok.id_to_piece(i) == "\n\n"
  return i


def _byte_nl(tok) -> int:
  i = tok._sp.piece_to_id("<0x0A>")  # pylint: disable=protected-access
  assert tok.id_to_piece(i) == "<0x0A>"
  return i


def test_merged_vocabulary_step_ids(merged):
  tok = merged
  nn = _nn(tok)
  # The merged piece is what the tokenizer emits for a blank line.
  ids = tok.encode("a\n\nb\nc")
  assert [tok.id_to_piece(i) for i in ids] == ["a", "\n\n", "b", "\n", "c"]
  assert tok.step_ids[0] == tok.step_id == 4
  assert set(tok.step_ids) == {tok.step_id, nn, _byte_nl(tok)}
  assert tok.step_ids == steps.step_end_ids(tok)
  # Exactly the pieces whose text holds a newline; never pad/BOS/EOS.
  for i in range(tok.vocab_size):
    has_nl = "\n" in tok.decode([i]) and i not in (tok.pad_id, tok.bos_id,
                                                   tok.eos_id)
    assert (i in tok.step_ids) == has_nl, (i, tok.id_to_piece(i))


def test_project_tokenizer_unchanged(tmp_path):
  tok = tok_lib.train_tokenizer(TEXTS, tmp_path / "p")
  assert tok.id_to_piece(tok.step_id) == "\n"
  # Its only newline pieces: "\n" and the byte-fallback "<0x0A>", which the
  # encoder never emits, so every encoding's step ends are the "\n" tokens.
  assert tok.step_ids == (tok.step_id, _byte_nl(tok))
  ids = tok.encode("a\n\nb\nc\n")
  assert steps.step_ends(ids, tok.step_ids) == steps.step_ends(ids,
                                                               tok.step_id)
  assert ids.count(tok.step_id) == 4


def test_step_end_ids_literal_and_byte_pieces():
  class Vocab:
    pieces = ["<pad>", "</s>", "<s>", "a", "<0x0A>", "<0x0B>", ".\n", "\n\n",
              "\u2581b", "\n"]
    vocab_size, pad_id, eos_id, bos_id, step_id = len(pieces), 0, 1, 2, 9

    def id_to_piece(self, i):
      return self.pieces[i]

  assert steps.step_end_ids(Vocab()) == (9, 4, 6, 7)
  assert steps.piece_text("\u2581b") == " b"
  Vocab.pieces = ["<pad>", "</s>", "<s>", "a"]
  Vocab.vocab_size = 4
  with pytest.raises(ValueError, match="no piece"):
    steps.step_end_ids(Vocab())


def test_is_step_end_int_tuple_and_many():
  t = jnp.array([[0, 4, 7, 9, 4], [7, 7, 3, 12, 1]])
  np.testing.assert_array_equal(steps.is_step_end(t, 4), np.asarray(t) == 4)
  np.testing.assert_array_equal(steps.is_step_end(t, (4, 7)),
                                np.isin(np.asarray(t), [4, 7]))
  many = tuple(range(5, 15))  # past the OR-of-equalities limit: jnp.isin
  np.testing.assert_array_equal(steps.is_step_end(t, many),
                                np.isin(np.asarray(t), many))
  np.testing.assert_array_equal(
      jax.jit(steps.is_step_end, static_argnums=1)(t, (4, 7)),
      np.isin(np.asarray(t), [4, 7]))
  assert steps.step_ends([3, 4, 5, 7, 7], (4, 7)) == [2, 4, 5]
  assert steps.as_ids(np.int32(3)) == (3,)


def _trajectory(tok):
  """BOS q "\\n" | x "\\n\\n" y "\\n" z EOS, prompt of 3 tokens."""
  a, b = tok.encode("x")[0], tok.encode("y")[0]
  row = [tok.bos_id, a, tok.step_id, a, _nn(tok), b, tok.step_id, b,
         tok.eos_id, tok.pad_id]
  tokens_BT = jnp.asarray([row])
  valid_BT = jnp.asarray([[True] * 9 + [False]])
  return tokens_BT, valid_BT, jnp.asarray([3])


def test_verifier_boundaries_and_rl_step_index_split_at_merged(merged):
  tok = merged
  tokens_BT, valid_BT, plen_B = _trajectory(tok)
  got = verifier.boundary_mask(tokens_BT, valid_BT, plen_B, tok.step_ids,
                               tok.eos_id)
  np.testing.assert_array_equal(np.flatnonzero(got[0]), [2, 4, 6, 8])
  old = verifier.boundary_mask(tokens_BT, valid_BT, plen_B, tok.step_id,
                               tok.eos_id)  # the single-id form still works
  np.testing.assert_array_equal(np.flatnonzero(old[0]), [2, 6, 8])
  resp_BT = valid_BT & (jnp.arange(10)[None] >= 3)
  idx = pg.token_step_index(tokens_BT, resp_BT, step_id=tok.step_ids,
                            eos_id=tok.eos_id)
  np.testing.assert_array_equal(idx[0], [-1, -1, -1, 0, 0, 1, 1, 2, 2, -1])
  idx1 = pg.token_step_index(tokens_BT, resp_BT, step_id=tok.step_id,
                             eos_id=tok.eos_id)
  np.testing.assert_array_equal(idx1[0], [-1, -1, -1, 0, 0, 0, 0, 1, 1, -1])


def test_mc_scorer_prefixes_split_at_merged(merged):
  tok = merged
  seen = []

  class Probe(mc_scorer.MCScorer):
    def q_prefixes(self, sampler, params, prefixes, resp, prompt_ids, keys,
                   batch, budget, tokens_out):
      seen.extend(resp)
      tokens_out.extend([0] * len(resp))
      return np.zeros(len(resp))

  tokens_BT, _, _ = _trajectory(tok)
  resp = np.asarray(tokens_BT[0, 3:8]).tolist()  # x \n\n y \n z
  scorer = Probe(grade=lambda i, r: 0.0, n=1, max_new_tokens=8)
  scorer.bon_scores(None, None, [[1]], [[resp]], tok.step_ids,
                    jax.random.key(0))
  assert seen == [[], resp[:2], resp[:4]]


# The sampler and the labeller ----------------------------------------------


@pytest.fixture(scope="module")
def lm(merged):
  """A tiny LM whose greedy first token after PROMPT is the "\\n\\n" piece.

  Swapping the (tied) embedding rows of the greedy first token and "\\n\\n"
  swaps their logits; neither is in the prompt, so nothing else changes.
  """
  tok = merged
  v = -(-tok.vocab_size // 8) * 8
  cfg = config_lib.ModelConfig.tiny(vocab_size=v).replace(
      num_layers=1, embed_dim=32, hidden_dim=64, num_heads=2, num_kv_heads=1,
      head_dim=16, sliding_window=None)
  prompt = tok.encode("12+3=", bos=True)
  nn = _nn(tok)
  greedy = sampler_lib.SamplingConfig(temperature=0.0)
  for seed in range(3, 13):  # a model whose greedy first token is plain
    graphdef, params = transformer.split(transformer.create(cfg, seed=seed))
    s = sampler_lib.Sampler(graphdef, cfg, cache_size=64, eos_id=tok.eos_id,
                            step_id=tok.step_id, pad_id=tok.pad_id,
                            sampling=greedy)
    out = s.generate(params, [prompt], jax.random.key(0), 1)
    t0 = int(out.tokens_BN[0, 0])
    if t0 not in prompt + list(tok.step_ids) + [tok.eos_id]:
      break
  assert t0 not in prompt and nn not in prompt
  e = params["embed_VD"]
  params["embed_VD"] = e.at[t0].set(e[nn]).at[nn].set(e[t0])
  return cfg, graphdef, params, prompt, greedy


def test_sampler_stops_at_merged_piece(merged, lm):
  tok, (cfg, graphdef, params, prompt, greedy) = merged, lm
  nn = _nn(tok)
  kw = dict(cache_size=64, eos_id=tok.eos_id, pad_id=tok.pad_id,
            sampling=greedy)
  s = sampler_lib.Sampler(graphdef, cfg, step_id=tok.step_ids, **kw)
  assert s.step_id == tok.step_id and s.step_ids == tok.step_ids
  out = s.generate(params, [prompt], jax.random.key(0), 8, stop_at_step=True)
  assert int(out.tokens_BN[0, 0]) == nn
  assert int(out.length_B[0]) == 1
  assert int(out.stop_B[0]) == sampler_lib.STEP_END
  assert bool(out.step_end_BN[0, 0])
  # The single-id sampler (the old behaviour) runs through the "\n\n".
  s1 = sampler_lib.Sampler(graphdef, cfg, step_id=tok.step_id, **kw)
  out1 = s1.generate(params, [prompt], jax.random.key(0), 8,
                     stop_at_step=True)
  assert int(out1.tokens_BN[0, 0]) == nn
  assert int(out1.length_B[0]) > 1 and not bool(out1.step_end_BN[0, 0])


def test_labeller_prefixes_split_at_merged_piece(merged, lm):
  tok, (cfg, graphdef, params, prompt, greedy) = merged, lm
  lc = labelling.LabelConfig(n_cov=1, n_mc=2, max_new_tokens=12,
                             max_step_tokens=6, max_steps=4,
                             prompts_per_chunk=1, row_buckets=1)

  def label(step_id):
    s = sampler_lib.Sampler(graphdef, cfg, cache_size=96, eos_id=tok.eos_id,
                            step_id=step_id, pad_id=tok.pad_id,
                            sampling=greedy)
    return labelling.label_chunk(s, params, [prompt], lambda i, r: 1.0,
                                 jax.random.key(1), lc)[0]

  arrays = label(tok.step_ids)
  t = jnp.asarray(arrays["tokens_NT"])
  plen = jnp.asarray(arrays["prompt_len_N"])
  end = plen + jnp.asarray(arrays["response_len_N"])
  assert int(t[0, len(prompt)]) == _nn(tok)  # step 1 is the "\n\n" alone
  n_prefix = int(arrays["num_prefixes_N"][0])
  assert n_prefix >= 2
  # The labeller's prefixes are the verifier's read positions: s_1, then one
  # per step end (EOS included); an unfinished row keeps max_steps of them.
  valid = jnp.arange(t.shape[1])[None] < end[:, None]
  bnd = verifier.boundary_mask(t, valid, plen, tok.step_ids, tok.eos_id)
  n_bnd = int(bnd[0].sum())
  if arrays["finished_N"][0]:
    assert n_prefix == n_bnd
  else:
    assert n_prefix == min(n_bnd, lc.max_steps)
  # With the single "\n" id, step 1 runs through the "\n\n" (the old bug).
  assert label(tok.step_id)["num_prefixes_N"][0] < n_prefix
