"""SentencePiece tokenizer with the ids PAV needs: PAD, BOS, EOS, step, score.

`train_tokenizer` trains a small model for a task corpus: identity
normalization (no whitespace collapsing), "\\n" as its own piece (the step
delimiter), split digits and byte fallback, so every text round-trips
exactly. Its reserved ids are

    0 <pad>   1 <s> (BOS)   2 </s> (EOS)   3 <unk>   4 "\\n" (step)   5 <score>

`Tokenizer.load` also wraps any existing SentencePiece model (e.g. Gemma's:
pad 0, eos 1, bos 2, unk 3) through the same interface.
"""

from __future__ import annotations

import functools
import os
import pathlib
from collections.abc import Iterable, Sequence

from absl import logging
import numpy as np
import sentencepiece as spm

from pav_jax import steps

STEP_PIECE = "\n"
SCORE_PIECE = "<score>"
DEFAULT_VOCAB_SIZE = 320
# Tried in order when a loaded model has no `<score>` piece.
_SCORE_CANDIDATES = (SCORE_PIECE, "<unused0>", "[unused0]", "<reserved_0>")
_NUM_BYTE_PIECES = 256
_NUM_RESERVED = 6  # pad, bos, eos, unk, "\n", <score>.


class Tokenizer:
  """A SentencePiece model plus PAV's special ids.

  Attributes:
    pad_id: Padding id; `decode` drops it.
    bos_id: Beginning of sequence.
    eos_id: End of sequence; `decode` stops at it.
    unk_id: Unknown piece.
    step_id: The id of the step delimiter "\\n".
    step_ids: Every id whose piece contains "\\n" (`step_id` first): a real
      vocabulary merges newlines ("\\n\\n"), and a step ends at any of them.
    score_id: The verifier scoring token.
    vocab_size: Number of pieces; a model's vocab_size must be at least this.
  """

  def __init__(
      self,
      processor: spm.SentencePieceProcessor,
      score_piece: str | None = None,
  ):
    """Wraps `processor`.

    Args:
      processor: A loaded SentencePiece model.
      score_piece: The piece to use as the scoring token; by default the first
        of "<score>", "<unused0>", "[unused0]", "<reserved_0>" that exists,
        else `<unk>` (with a warning).

    Raises:
      ValueError: if the model lacks BOS/EOS, a single "\\n" token, or the
        requested `score_piece`.
    """
    self._sp = processor
    self.vocab_size = processor.get_piece_size()
    self.unk_id = processor.unk_id()
    self.bos_id = processor.bos_id()
    self.eos_id = processor.eos_id()
    if self.bos_id < 0 or self.eos_id < 0:
      raise ValueError(
          "the SentencePiece model has no BOS or EOS piece: retrain it with"
          " bos_id/eos_id set (e.g. with pav_jax.tokenizer.train_tokenizer)"
      )
    pad = processor.pad_id()
    self.pad_id = pad if pad >= 0 else self.unk_id
    self.step_id = self._step_id()
    self.score_id = self._score_id(score_piece)

  @classmethod
  def load(
      cls, path: str | os.PathLike[str], score_piece: str | None = None
  ) -> Tokenizer:
    """Loads a SentencePiece model file (`.model`; the suffix may be omitted).

    Args:
      path: The model file or its prefix.
      score_piece: See `__init__`.
    """
    path = pathlib.Path(path)
    if not path.is_file() and path.with_name(path.name + ".model").is_file():
      path = path.with_name(path.name + ".model")
    if not path.is_file():
      raise FileNotFoundError(
          f"no SentencePiece model at {path}: train one with"
          " tools/train_tokenizer.py"
      )
    try:
      processor = spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as e:
      raise ValueError(
          f"SentencePiece model {path} is unreadable ({path.stat().st_size}"
          f" bytes; truncated or not a model: {str(e).strip()[:200]}): delete"
          " it to have the run retrain it, or point tokenizer.path at a good"
          " model"
      ) from e
    return cls(processor, score_piece)

  def encode(
      self, text: str, bos: bool = False, eos: bool = False
  ) -> list[int]:
    """Token ids of `text`, optionally with BOS first and EOS last."""
    ids = self._sp.encode(text, out_type=int)
    return [self.bos_id] * bos + ids + [self.eos_id] * eos

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Text of `ids`, stopping at the first EOS and skipping PAD and BOS.

    Ids past the tokenizer's pieces (a model's vocab_size may be larger, and
    a sampler can emit them) decode as `<unk>`.
    """
    out = []
    for i in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
      if i == self.eos_id:
        break
      if i not in (self.pad_id, self.bos_id):
        out.append(i if 0 <= i < self.vocab_size else self.unk_id)
    return self._sp.decode(out)

  def id_to_piece(self, i: int) -> str:
    return self._sp.id_to_piece(i)

  @functools.cached_property
  def step_ids(self) -> tuple[int, ...]:
    """Ids of every piece holding "\\n" (`steps.step_end_ids`), step_id
    first; e.g. Gemma's "\\n", "\\n\\n", ... and the byte piece "<0x0A>"."""
    return steps.step_end_ids(self)

  def check_fits(self, model_vocab_size: int) -> None:
    """Raises ValueError unless every id fits a model with this vocab size."""
    if self.vocab_size > model_vocab_size:
      raise ValueError(
          f"tokenizer has {self.vocab_size} pieces but the model's vocab_size"
          f" is {model_vocab_size}: set model.vocab_size >= {self.vocab_size}"
          " or retrain the tokenizer"
      )

  def _step_id(self) -> int:
    for piece in (STEP_PIECE, "<0x0A>"):  # Its own piece, else its byte.
      i = self._sp.piece_to_id(piece)
      if i != self.unk_id:
        return i
    ids = self._sp.encode(STEP_PIECE, out_type=int)
    if len(ids) == 1 and ids[0] != self.unk_id:
      return ids[0]
    raise ValueError(
        f"the SentencePiece model encodes '\\n' as {ids}, not one token: the"
        " step delimiter needs its own piece (retrain with '\\n' as a"
        " user-defined symbol and identity normalization)"
    )

  def _score_id(self, score_piece: str | None) -> int:
    candidates = (score_piece,) if score_piece else _SCORE_CANDIDATES
    for piece in candidates:
      i = self._sp.piece_to_id(piece)
      if self._sp.id_to_piece(i) == piece and i != self.unk_id:
        return i
    if score_piece:
      raise ValueError(
          f"score_piece {score_piece!r} is not in the SentencePiece model:"
          " pass an existing (unused) piece"
      )
    logging.warning(
        "SentencePiece model has none of %s; using <unk> (id %d) as the score"
        " token. Pass score_piece= to choose another.",
        _SCORE_CANDIDATES,
        self.unk_id,
    )
    return self.unk_id


def train_tokenizer(
    texts: Iterable[str],
    model_prefix: str | os.PathLike[str],
    vocab_size: int = DEFAULT_VOCAB_SIZE,
) -> Tokenizer:
  """Trains a BPE SentencePiece model on `texts`; writes `<prefix>.model`.

  Args:
    texts: Training texts (prompts and solutions); split into lines, since
      "\\n" is always its own piece.
    model_prefix: Output path prefix; `.model` and `.vocab` are appended.
    vocab_size: Target vocabulary size, counting the 256 byte-fallback pieces
      and 6 reserved ids. A small corpus may yield fewer pieces.

  Returns:
    The trained tokenizer.

  Raises:
    ValueError: if `vocab_size` cannot hold the byte and reserved pieces, or
      `texts` is empty.
  """
  minimum = _NUM_BYTE_PIECES + _NUM_RESERVED + 1
  if vocab_size < minimum:
    raise ValueError(
        f"vocab_size={vocab_size} is too small: byte fallback needs 256 pieces"
        f" plus {_NUM_RESERVED} reserved ids; use vocab_size >= {minimum}"
        f" (default {DEFAULT_VOCAB_SIZE})"
    )
  lines = [line for text in texts for line in text.split("\n") if line]
  if not lines:
    raise ValueError("train_tokenizer got no non-empty text to train on")
  model_prefix = pathlib.Path(model_prefix)
  model_prefix.parent.mkdir(parents=True, exist_ok=True)
  # Train under a temporary prefix, then rename: a run killed mid-training
  # never leaves a half-written `<prefix>.model` for the next run to read.
  tmp_prefix = model_prefix.with_name(
      f".{model_prefix.name}.tmp{os.getpid()}")
  try:
    _train_spm(lines, tmp_prefix, vocab_size)
    for suffix in (".vocab", ".model"):  # .model last: it marks "done".
      os.replace(tmp_prefix.with_name(tmp_prefix.name + suffix),
                 model_prefix.with_name(model_prefix.name + suffix))
  finally:
    for suffix in (".vocab", ".model"):
      tmp_prefix.with_name(tmp_prefix.name + suffix).unlink(missing_ok=True)
  return Tokenizer.load(model_prefix.with_name(model_prefix.name + ".model"))


def _train_spm(lines: list[str], model_prefix: pathlib.Path,
               vocab_size: int) -> None:
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines),
      model_prefix=str(model_prefix),
      vocab_size=vocab_size,
      model_type="bpe",
      normalization_rule_name="identity",
      remove_extra_whitespaces=False,
      add_dummy_prefix=False,
      split_digits=True,
      byte_fallback=True,
      character_coverage=1.0,
      allow_whitespace_only_pieces=True,
      max_sentence_length=1 << 16,
      pad_id=0,
      bos_id=1,
      eos_id=2,
      unk_id=3,
      user_defined_symbols=[STEP_PIECE, SCORE_PIECE],
      hard_vocab_limit=False,
      num_threads=2,
      minloglevel=2,
  )
