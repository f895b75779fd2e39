"""Tests for pav_jax.tokenizer: reserved ids, exact round trips, loading."""

import pathlib

import numpy as np
import pytest
import sentencepiece as spm

from pav_jax import tasks
from pav_jax import tokenizer as tokenizer_lib

_EXTRA_TEXTS = (
    "",
    " leading space",
    "   three leading spaces and trailing   ",
    "\n\nblank lines\n\n\n",
    "tabs\tand\r\nwindows newlines",
    "ünïcödé ∑ 漢字 🙂 Ω≈ç",
    "$\\frac{1}{2}$ and \\boxed{\\{1,2\\}}",
    "<score> is literal text too",
    "1,234,567.89 - 0.001 = x",
)


# GSM8K/MATH samples shipped with the tests: the vocabulary below must not
# depend on data outside the repository.
FIXTURE_DATA = pathlib.Path(__file__).parent / "fixtures" / "data"
_FILE_TASKS = {"gsm8k": ("gsm8k", "train"), "math": ("math500", "test")}


def _task_texts() -> dict[str, list[str]]:
  """prompt + solution texts of every task (file tasks from the fixtures)."""
  texts = {}
  for name in tasks.TASKS:
    if name in _FILE_TASKS:
      subdir, split = _FILE_TASKS[name]
      task = tasks.get_task(name, data_dir=FIXTURE_DATA / subdir)
      examples = task.examples(split)
    else:
      task = tasks.get_task(name)
      examples = task.examples("train", num=50)
    texts[name] = [task.prompt(ex) + ex.solution for ex in examples]
  return texts


@pytest.fixture(scope="module")
def texts():
  return _task_texts()


@pytest.fixture(scope="module")
def tok(tmp_path_factory, texts):
  corpus = [t for ts in texts.values() for t in ts]
  prefix = tmp_path_factory.mktemp("tok") / "mixed"
  return tokenizer_lib.train_tokenizer(corpus, prefix, vocab_size=400)


@pytest.fixture(scope="module")
def arithmetic_tok(tmp_path_factory):
  task = tasks.get_task("arithmetic")
  corpus = [task.prompt(ex) + ex.solution for ex in task.examples("train", 500)]
  prefix = tmp_path_factory.mktemp("tok") / "arithmetic"
  return tokenizer_lib.train_tokenizer(corpus, prefix)


def test_reserved_ids(tok):
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
  assert (tok.step_id, tok.score_id) == (4, 5)
  assert tok.id_to_piece(tok.step_id) == "\n"
  assert tok.id_to_piece(tok.score_id) == "<score>"
  assert tok.vocab_size == 400


def test_round_trip_on_every_task(tok, texts):
  assert set(texts) == set(tasks.TASKS)
  for name, ts in texts.items():
    for text in ts:
      ids = tok.encode(text)
      assert tok.decode(ids) == text, name
      assert ids.count(tok.step_id) == text.count("\n"), name
      assert tok.unk_id not in ids


@pytest.mark.parametrize("text", _EXTRA_TEXTS)
def test_round_trip_on_odd_text(tok, text):
  assert tok.decode(tok.encode(text)) == text
  assert tok.decode(tok.encode(text, bos=True, eos=True)) == text


def test_encode_special_tokens_and_decode_stops_at_eos(tok):
  ids = tok.encode("1 + 2", bos=True, eos=True)
  assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
  assert ids[1:-1] == tok.encode("1 + 2")
  buffer = np.array(ids + tok.encode(" junk") + [tok.pad_id] * 3)
  assert tok.decode(buffer) == "1 + 2"
  assert tok.decode([tok.pad_id] + tok.encode("a\nb") + [tok.pad_id]) == "a\nb"


def test_check_fits(tok):
  tok.check_fits(tok.vocab_size)
  tok.check_fits(512)
  with pytest.raises(
      ValueError,
      match=(
          "tokenizer has 400 pieces but the model's vocab_size is 256: set"
          r" model.vocab_size >= 400 or retrain the tokenizer"
      ),
  ):
    tok.check_fits(256)


def test_default_tokenizer_keeps_synthetic_tasks_short(arithmetic_tok):
  assert arithmetic_tok.vocab_size == tokenizer_lib.DEFAULT_VOCAB_SIZE
  for name in ("arithmetic", "countdown"):
    task = tasks.get_task(name)
    for ex in task.examples("test", 100):
      ids = arithmetic_tok.encode(task.prompt(ex) + ex.solution, True, True)
      assert len(ids) <= 100, name
      assert arithmetic_tok.decode(ids) == task.prompt(ex) + ex.solution


def test_load_accepts_prefix_and_file(tmp_path):
  corpus = ["a b c\n1 2 3"] * 20
  tok = tokenizer_lib.train_tokenizer(corpus, tmp_path / "t", 300)
  for path in (tmp_path / "t", tmp_path / "t.model"):
    loaded = tokenizer_lib.Tokenizer.load(path)
    assert loaded.encode("a\n12") == tok.encode("a\n12")
  with pytest.raises(FileNotFoundError, match="no SentencePiece model"):
    tokenizer_lib.Tokenizer.load(tmp_path / "missing")


def test_vocab_too_small_for_byte_fallback(tmp_path):
  with pytest.raises(ValueError, match="vocab_size=64 is too small"):
    tokenizer_lib.train_tokenizer(["a"], tmp_path / "t", 64)


def _train_raw(prefix, **kwargs) -> str:
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(["hello world 123", "the cat sat"] * 20),
      model_prefix=str(prefix),
      vocab_size=300,
      byte_fallback=True,
      hard_vocab_limit=False,
      minloglevel=2,
      **kwargs,
  )
  return f"{prefix}.model"


def test_load_gemma_style_model(tmp_path):
  """Gemma's layout: pad 0, eos 1, bos 2, unk 3, "\\n" and <unusedN> pieces."""
  path = _train_raw(
      tmp_path / "gemma",
      pad_id=0,
      eos_id=1,
      bos_id=2,
      unk_id=3,
      normalization_rule_name="identity",
      user_defined_symbols=["<unused0>", "<unused1>", "\n"],
  )
  tok = tokenizer_lib.Tokenizer.load(path)
  assert (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, 2)
  assert tok.id_to_piece(tok.step_id) == "\n"
  assert tok.id_to_piece(tok.score_id) == "<unused0>"
  assert tok.encode("a\nb").count(tok.step_id) == 1
  assert tok.decode(tok.encode("hi\nthere", bos=True, eos=True)) == "hi\nthere"
  other = tokenizer_lib.Tokenizer.load(path, score_piece="<unused1>")
  assert other.id_to_piece(other.score_id) == "<unused1>"
  with pytest.raises(ValueError, match="score_piece '<nope>' is not in"):
    tokenizer_lib.Tokenizer.load(path, score_piece="<nope>")


def test_load_model_without_newline_piece_uses_byte_piece(tmp_path):
  path = _train_raw(
      tmp_path / "plain",
      pad_id=0,
      bos_id=1,
      eos_id=2,
      unk_id=3,
      normalization_rule_name="identity",
      remove_extra_whitespaces=False,
  )
  tok = tokenizer_lib.Tokenizer.load(path)
  assert tok.id_to_piece(tok.step_id) == "<0x0A>"
  assert tok.score_id == tok.unk_id  # No reserved piece: falls back, warns.


def test_truncated_model_error_names_the_path(tmp_path):
  tokenizer_lib.train_tokenizer(["a b c\n1 2 3"] * 20, tmp_path / "t", 300)
  path = tmp_path / "t.model"
  path.write_bytes(path.read_bytes()[:100])
  with pytest.raises(ValueError, match=f"SentencePiece model {path} is "
                     "unreadable.*delete it"):
    tokenizer_lib.Tokenizer.load(path)


def test_training_killed_midway_leaves_no_model(tmp_path, monkeypatch):
  def crash(*args, model_prefix, **kwargs):
    del args, kwargs
    with open(f"{model_prefix}.model", "wb") as f:
      f.write(b"\x0a\x05half")  # what an interrupted write leaves
    raise KeyboardInterrupt

  monkeypatch.setattr(spm.SentencePieceTrainer, "train", crash)
  with pytest.raises(KeyboardInterrupt):
    tokenizer_lib.train_tokenizer(["a b c"] * 20, tmp_path / "tok", 300)
  assert list(tmp_path.iterdir()) == []


def test_vocab_mismatch_names_both_sizes(tmp_path):
  tok = tokenizer_lib.train_tokenizer(["a b c\n1 2 3"] * 20, tmp_path / "t",
                                      300)
  with pytest.raises(ValueError, match=f"tokenizer has {tok.vocab_size} "
                     "pieces but the model's vocab_size is 200"):
    tok.check_fits(200)
