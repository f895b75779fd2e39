"""MATH / MATH-500 competition problems, loaded from JSONL and graded by
`math_verify`.

Each line of `<data_dir>/<split>.jsonl` (or `<split>_*.jsonl`) is
`{"problem", "solution", "answer"?, ...}`; the reference answer is the
`answer` field, or else the last `\\boxed{...}` of the solution. The reference
solution keeps the non-blank solution lines and ends with `Answer: <answer>`.
A response's answer is its last `Answer: ...` line, else its last
`\\boxed{...}`; it is graded equivalent to the reference with
`math_verify.parse`/`math_verify.verify`, not by string equality.

Get MATH-500 from https://huggingface.co/datasets/HuggingFaceH4/MATH-500
(`test.jsonl`) or the full MATH set from
https://github.com/hendrycks/math.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import threading

import math_verify

from pav_jax.tasks import base

_BOXED = ("\\boxed", "\\fbox")
_TIMEOUT_S = 5


@dataclasses.dataclass(frozen=True)
class MathTask(base.QATask):
  """MATH from JSONL; see the module docstring.

  Attributes:
    data_dir: Directory holding the split files; default
      `find_data_dir() / "math500"`.
  """

  data_dir: str | os.PathLike[str] | None = None
  name: str = "math"

  def directory(self) -> pathlib.Path:
    return base.resolve_data_dir(self.data_dir, "math500")

  def examples(
      self, split: str, num: int | None = None, seed: int = 0
  ) -> list[base.Example]:
    """Loads `split`; `num` takes a seeded subset in file order."""
    out = []
    for path in base.split_files(self.directory(), split):
      for lineno, rec in base.read_jsonl(path, ("problem", "solution")):
        answer = rec.get("answer")
        if answer is None:
          answer = last_boxed(rec["solution"])
        if not isinstance(answer, str) or not answer.strip():
          raise ValueError(
              f"{path}:{lineno}: no answer: add an 'answer' string or a"
              " \\boxed{...} to the solution"
          )
        answer = " ".join(answer.split())
        uid = f"{self.name}/{path.stem}/{lineno}"
        solution = convert_solution(rec["solution"], answer)
        out.append(
            base.Example(uid, rec["problem"].strip(), solution, answer)
        )
    return base.subsample(out, num, seed)

  def extract_answer(self, response: str) -> str | None:
    return base.extract_answer_line(response) or last_boxed(response)

  def grade(self, ex: base.Example, response: str) -> float:
    got = self.extract_answer(response)
    return float(got is not None and equivalent(ex.answer, got))


def convert_solution(solution: str, answer: str) -> str:
  """A MATH solution -> its non-blank lines plus the answer line."""
  steps = [s.rstrip() for s in solution.split("\n") if s.strip()]
  steps.append(base.answer_line(answer))
  return base.join_steps(steps)


def last_boxed(text: str) -> str | None:
  """The content of the last `\\boxed{...}` (or `\\fbox{...}`) in `text`.

  Nested braces are matched; `\\boxed 5` (no braces) yields "5".

  Returns:
    The content, or None if there is none or its braces do not close.
  """
  start = max(text.rfind(b) for b in _BOXED)
  if start < 0:
    return None
  i = start + next(len(b) for b in _BOXED if text.startswith(b, start))
  if text[i:i + 1] == " ":
    words = text[i + 1:].split("$")[0].split()
    return words[0] if words else None
  if text[i:i + 1] != "{":
    return None
  depth = 0
  for j in range(i, len(text)):
    if text[j] == "{":
      depth += 1
    elif text[j] == "}":
      depth -= 1
      if depth == 0:
        return text[i + 1:j]
  return None


def equivalent(gold: str, pred: str) -> bool:
  """Whether two LaTeX answers are mathematically equivalent (math_verify)."""
  # math_verify's timeouts use SIGALRM, which only the main thread may set.
  main = threading.current_thread() is threading.main_thread()
  timeout = _TIMEOUT_S if main else None
  gold_p = math_verify.parse(_as_math(gold), parsing_timeout=timeout)
  pred_p = math_verify.parse(_as_math(pred), parsing_timeout=timeout)
  if not gold_p or not pred_p:
    return False
  return math_verify.verify(gold_p, pred_p, timeout_seconds=timeout)


def _as_math(answer: str) -> str:
  return "$" + answer.strip().strip("$") + "$"
