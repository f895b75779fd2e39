"""Countdown: combine the given numbers with + - * / to reach a target.

Question: `Use 3 7 12 5 to make 41.`
Solution (each step combines two available numbers; the result replaces
them), then the answer line:

    12 * 3 = 36
    36 + 5 = 41
    ...
    Answer: 41

By default every number must be used exactly once, so a solution has
`len(numbers) - 1` steps. A step can be valid yet lead to a dead end. All
intermediate results are non-negative integers; division must be exact.
Problems are built from a random solution, so every one is solvable.
"""

from __future__ import annotations

import collections
import dataclasses
import random
import re

from pav_jax.tasks import base

_OPS = "+-*/"
_STEP_RE = re.compile(r"\s*(\d+)\s*([-+*/])\s*(\d+)\s*=\s*(\d+)\s*")
_MAX_TRIES = 1000


@dataclasses.dataclass(frozen=True)
class CountdownTask(base.QATask):
  """Reach a target from a multiset of numbers; see the module docstring.

  Attributes:
    num_numbers: How many numbers a problem gives.
    max_number: The given numbers are drawn from [1, max_number].
    max_target: Bound on the target and every intermediate result; default
      10 * max_number.
    ops: The operation mix, a subset of "+-*/".
    use_all: Whether a solution must use every number (the grader's rule).
  """

  num_numbers: int = 4
  max_number: int = 20
  max_target: int | None = None
  ops: str = "+-*/"
  use_all: bool = True
  name: str = "countdown"

  def __post_init__(self):
    if self.num_numbers < 2 or self.max_number < 2:
      raise ValueError(
          "num_numbers and max_number must be >= 2, got"
          f" {self.num_numbers}, {self.max_number}"
      )
    if not self.ops or set(self.ops) - set(_OPS):
      raise ValueError(
          f"ops must be a non-empty subset of {_OPS!r}, got {self.ops!r}"
      )

  @property
  def bound(self) -> int:
    return self.max_target or 10 * self.max_number

  def examples(
      self, split: str, num: int | None = None, seed: int = 0
  ) -> list[base.Example]:
    """Generates `num` (default 1000) solvable problems of `split`, seeded."""
    return base.generate_split(self, split, num, seed)

  def grade(self, ex: base.Example, response: str) -> float:
    """1.0 iff every step is valid and the steps reach the target."""
    numbers, target = parse_question(ex.question)
    return float(check_solution(numbers, target, response, self.use_all))

  def _generate(self, rng: random.Random, uid: str) -> base.Example:
    for _ in range(_MAX_TRIES):
      numbers = [
          rng.randint(1, self.max_number) for _ in range(self.num_numbers)
      ]
      lines = self._random_solution(rng, numbers)
      if lines is None:
        continue
      target = int(lines[-1].rsplit("=", 1)[1])
      if target < 1 or target in numbers:
        continue
      lines.append(base.answer_line(str(target)))
      return base.Example(
          uid=uid,
          question=f"Use {' '.join(map(str, numbers))} to make {target}.",
          solution=base.join_steps(lines),
          answer=str(target),
      )
    raise ValueError(
        f"could not build a countdown problem with ops {self.ops!r} within"
        f" max_target={self.bound}: raise max_target or add '+'"
    )

  def _random_solution(
      self, rng: random.Random, numbers: list[int]
  ) -> list[str] | None:
    """Combines random pairs until one number is left; None at a dead end."""
    pool, lines = list(numbers), []
    while len(pool) > 1:
      a, b = (pool.pop(rng.randrange(len(pool))) for _ in range(2))
      a, b = max(a, b), min(a, b)
      results = [(op, _apply(op, a, b)) for op in self.ops]
      results = [(op, c) for op, c in results if c is not None]
      results = [(op, c) for op, c in results if c <= self.bound]
      if not results:
        return None
      op, c = rng.choice(results)
      lines.append(f"{a} {op} {b} = {c}")
      pool.append(c)
    return lines


def parse_question(question: str) -> tuple[list[int], int]:
  """The (numbers, target) of a question `Use 3 7 12 5 to make 41.`."""
  m = re.fullmatch(r"Use ([\d ]+) to make (\d+)\.", question)
  if m is None:
    raise ValueError(f"not a countdown question: {question!r}")
  return [int(x) for x in m.group(1).split()], int(m.group(2))


def check_solution(
    numbers: list[int], target: int, response: str, use_all: bool = True
) -> bool:
  """Whether `response` validly reaches `target` from `numbers`.

  Every line but the last must be a step `a op b = c` with `a` and `b`
  available, correct arithmetic and a non-negative integer result; the last
  line must be `Answer: <target>`, and the last step's result must be the
  target (the only number left if `use_all`).
  """
  lines = base.split_steps(response)
  if len(lines) < 2 or base.extract_answer_line(lines[-1]) != str(target):
    return False
  pool = collections.Counter(numbers)
  c = None
  for line in lines[:-1]:
    m = _STEP_RE.fullmatch(line)
    if m is None:
      return False
    a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
    pool[a] -= 1
    pool[b] -= 1
    if pool[a] < 0 or pool[b] < 0 or _apply(op, a, b) != c:
      return False
    pool[c] += 1
  if c != target:
    return False
  return not use_all or +pool == collections.Counter([target])


def _apply(op: str, a: int, b: int) -> int | None:
  """`a op b`, or None if not a non-negative integer."""
  if op == "+":
    return a + b
  if op == "-":
    return a - b if a >= b else None
  if op == "*":
    return a * b
  return a // b if b and a % b == 0 else None
