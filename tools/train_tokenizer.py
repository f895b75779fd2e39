"""Trains a SentencePiece tokenizer on a task's prompts and solutions.

Usage:
  python tools/train_tokenizer.py --task=arithmetic --vocab_size=320 \\
      --out=runs/tokenizers/arithmetic
  python tools/train_tokenizer.py --task=countdown \\
      --knobs=num_numbers=5,max_number=50 --out=runs/tokenizers/countdown

Writes `<out>.model` and `<out>.vocab`, then prints the vocabulary size and
the token lengths of BOS + prompt + solution + EOS.
"""

from collections.abc import Sequence
from typing import Any

from absl import app
from absl import flags
import numpy as np

from pav_jax import tasks
from pav_jax import tokenizer as tokenizer_lib

_TASK = flags.DEFINE_enum("task", "arithmetic", sorted(tasks.TASKS), "Task.")
_VOCAB_SIZE = flags.DEFINE_integer(
    "vocab_size", tokenizer_lib.DEFAULT_VOCAB_SIZE, "Target vocabulary size."
)
_OUT = flags.DEFINE_string("out", None, "Output model prefix.", required=True)
_SPLIT = flags.DEFINE_string("split", "train", "Split to train on.")
_NUM = flags.DEFINE_integer(
    "num_examples", 5000, "Examples to train on (-1: all, for file tasks)."
)
_KNOBS = flags.DEFINE_list(
    "knobs", [], "Task knobs as key=value, e.g. num_ops=3,ops=+-."
)


def parse_knobs(items: Sequence[str]) -> dict[str, Any]:
  """["num_ops=3", "ops=+-"] -> {"num_ops": 3, "ops": "+-"}."""
  knobs = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep:
      raise app.UsageError(f"--knobs entry {item!r} is not key=value")
    for cast in (int, float):
      try:
        knobs[key] = cast(value)
        break
      except ValueError:
        continue
    else:
      knobs[key] = {"True": True, "False": False}.get(value, value)
  return knobs


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  task = tasks.get_task(_TASK.value, **parse_knobs(_KNOBS.value))
  num = None if _NUM.value < 0 else _NUM.value
  examples = task.examples(_SPLIT.value, num=num)
  texts = [task.prompt(ex) + ex.solution for ex in examples]
  tok = tokenizer_lib.train_tokenizer(texts, _OUT.value, _VOCAB_SIZE.value)
  lengths = np.array([len(tok.encode(t, bos=True, eos=True)) for t in texts])
  print(f"wrote {_OUT.value}.model: {tok.vocab_size} pieces")
  print(
      f"tokens per example (BOS+prompt+solution+EOS): mean"
      f" {lengths.mean():.1f}, p95 {np.percentile(lengths, 95):.0f}, max"
      f" {lengths.max()}"
  )


if __name__ == "__main__":
  app.run(main)
