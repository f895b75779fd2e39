"""Step ends: every vocabulary piece that contains the step delimiter "\\n".

A step ends at the first token whose surface text holds a newline. With the
project's own tokenizer that is one piece ("\\n" is a user-defined symbol),
but a real SentencePiece vocabulary (Gemma's) merges newlines into longer
pieces: Gemma 3 encodes "a\\n\\nb\\nc" as ['a', '\\n\\n', 'b', '\\n', 'c'], so
a sampler or verifier that only knows the single "\\n" id would never end
the step closed by "\\n\\n". `step_end_ids` finds them all once per
tokenizer (`Tokenizer.step_ids`); `is_step_end` tests tokens against them.

A step id argument (`step_id=` of the sampler, verifier, labeller, search
and RL code) is either one int (the old form) or a tuple of ints; both are
hashable, so either may be a static jit argument.
"""

from __future__ import annotations

import re
from typing import Protocol, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

DELIMITER = "\n"
# Byte-fallback pieces ("<0x0A>") stand for the byte they name.
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
# Up to this many ids, an OR of equalities; more: jnp.isin.
_MAX_EQUALITIES = 8

StepIds = Union[int, Sequence[int]]


class _Vocab(Protocol):
  vocab_size: int

  def id_to_piece(self, i: int) -> str:
    ...


def piece_text(piece: str) -> str:
  """The surface text of a SentencePiece piece (bytes decoded, "▁" a space).

  A byte-fallback piece "<0xNN>" is the byte NN (as latin-1, so a lone
  newline byte reads "\\n"); other pieces are literal.
  """
  m = _BYTE_PIECE.fullmatch(piece)
  if m:
    return chr(int(m.group(1), 16))
  return piece.replace("\u2581", " ")


def step_end_ids(tok: _Vocab, delimiter: str = DELIMITER) -> tuple[int, ...]:
  """Ids of every piece whose surface text contains `delimiter`.

  Scans `tok.id_to_piece` over the vocabulary (a literal "\\n", "\\n\\n",
  ".\\n" ... piece or the byte piece "<0x0A>"). The tokenizer's own
  `step_id` (if it has one) comes first, the rest ascending; its pad, BOS
  and EOS ids are never step ends.

  Raises:
    ValueError: if no piece contains the delimiter.
  """
  special = {getattr(tok, name, None) for name in ("pad_id", "bos_id",
                                                   "eos_id")}
  found = [i for i in range(tok.vocab_size)
           if i not in special and delimiter in piece_text(tok.id_to_piece(i))]
  first = getattr(tok, "step_id", None)
  if first is not None and first in found:
    found.remove(first)
    found.insert(0, first)
  if not found:
    raise ValueError(f"no piece of the vocabulary contains {delimiter!r}: "
                     "the step delimiter cannot be recognised")
  return tuple(found)


def as_ids(step_ids: StepIds) -> tuple[int, ...]:
  """`step_ids` as a tuple of ints (an int becomes a 1-tuple)."""
  if isinstance(step_ids, (int, np.integer)):
    return (int(step_ids),)
  ids = tuple(int(i) for i in step_ids)
  if not ids:
    raise ValueError("step ids must not be empty")
  return ids


def is_step_end(tokens: jax.Array, step_ids: StepIds) -> jax.Array:
  """Bool array, True where `tokens` is one of `step_ids` (same shape)."""
  ids = as_ids(step_ids)
  tokens = jnp.asarray(tokens)
  if len(ids) > _MAX_EQUALITIES:
    return jnp.isin(tokens, jnp.asarray(ids, tokens.dtype))
  out = tokens == ids[0]
  for i in ids[1:]:
    out = out | (tokens == i)
  return out


def np_is_step_end(tokens: np.ndarray, step_ids: StepIds) -> np.ndarray:
  """Host (numpy) version of `is_step_end`."""
  return np.isin(np.asarray(tokens), np.asarray(as_ids(step_ids)))


def step_ends(tokens: Sequence[int], step_ids: StepIds) -> list[int]:
  """Positions just past each step end in a token list (prefix lengths)."""
  ids = set(as_ids(step_ids))
  return [j + 1 for j, t in enumerate(tokens) if int(t) in ids]
