"""GSM8K grade-school math word problems, loaded from JSONL files.

Each line of `<data_dir>/<split>.jsonl` (or `<split>_*.jsonl`) is
`{"question": ..., "answer": ...}` where the answer's lines are the solution
steps and its last line is `#### N`. The reference solution keeps the step
lines with `<<...>>` calculator annotations stripped and ends with
`Answer: N`. Grading compares numbers (commas and `$` ignored).

Get the files from https://github.com/openai/grade-school-math
(`grade_school_math/data/{train,test}.jsonl`).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re

from pav_jax.tasks import base

_CALC_RE = re.compile(r"<<[^>]*>>")
_FINAL = "####"


@dataclasses.dataclass(frozen=True)
class GSM8KTask(base.QATask):
  """GSM8K from JSONL; see the module docstring.

  Attributes:
    data_dir: Directory holding the split files; default
      `find_data_dir() / "gsm8k"`.
  """

  data_dir: str | os.PathLike[str] | None = None
  name: str = "gsm8k"

  def directory(self) -> pathlib.Path:
    return base.resolve_data_dir(self.data_dir, "gsm8k")

  def examples(
      self, split: str, num: int | None = None, seed: int = 0
  ) -> list[base.Example]:
    """Loads `split`; `num` takes a seeded subset in file order."""
    out = []
    for path in base.split_files(self.directory(), split):
      for lineno, rec in base.read_jsonl(path, ("question", "answer")):
        try:
          solution, answer = convert_answer(rec["answer"])
        except ValueError as e:
          raise ValueError(f"{path}:{lineno}: {e}") from None
        uid = f"{self.name}/{path.stem}/{lineno}"
        out.append(base.Example(uid, rec["question"].strip(), solution, answer))
    return base.subsample(out, num, seed)

  def grade(self, ex: base.Example, response: str) -> float:
    got = base.parse_number(self.extract_answer(response))
    return float(got is not None and got == base.parse_number(ex.answer))


def convert_answer(answer: str) -> tuple[str, str]:
  """A GSM8K `answer` field -> (solution in our format, final answer).

  Raises:
    ValueError: if there is no `#### N` line or N is not a number.
  """
  body, sep, final = answer.rpartition(_FINAL)
  final = final.strip().replace(",", "")
  if not sep:
    raise ValueError("answer has no final '#### N' line")
  if base.parse_number(final) is None:
    raise ValueError(f"final answer {final!r} after '####' is not a number")
  steps = [_CALC_RE.sub("", line).rstrip() for line in body.split("\n")]
  steps = [s for s in steps if s.strip()]
  steps.append(base.answer_line(final))
  return base.join_steps(steps), final
