"""Synthetic multi-step arithmetic: apply a chain of operations left to right.

Question: `Start with 7, then + 3, * 2, - 5.`
Solution (one line per operation, then the answer line):

    7 + 3 = 10
    10 * 2 = 20
    20 - 5 = 15
    Answer: 15

With `noprogress_frac > 0` that fraction of reference solutions gets one
"no-progress" step inserted before an operation line: either a restatement of
the remaining operations (`Left: * 2, - 5`) or the current value repeated
(`Value: 10`). Values stay in [0, max_value]; `*` and `/` use one-digit
operands and `/` is exact.
"""

from __future__ import annotations

import dataclasses
import random
import re

from pav_jax.tasks import base

_OPS = "+-*/"
_INT_RE = re.compile(r"-?\d+")
_MAX_TRIES = 1000


@dataclasses.dataclass(frozen=True)
class ArithmeticTask(base.QATask):
  """Chains of integer operations; see the module docstring.

  Attributes:
    num_ops: Operations per problem.
    digits: Maximum digits of the start value and of `+`/`-` operands.
    ops: The operation mix, a subset of "+-*/".
    noprogress_frac: Fraction of reference solutions with a no-progress step.
    max_value: Bound on every intermediate value; default 10**(digits+1) - 1.
  """

  num_ops: int = 4
  digits: int = 1
  ops: str = "+-*"
  noprogress_frac: float = 0.0
  max_value: int | None = None
  name: str = "arithmetic"

  def __post_init__(self):
    if self.num_ops < 1 or self.digits < 1:
      raise ValueError(
          f"num_ops and digits must be >= 1, got {self.num_ops}, {self.digits}"
      )
    if not self.ops or set(self.ops) - set(_OPS):
      raise ValueError(
          f"ops must be a non-empty subset of {_OPS!r}, got {self.ops!r}"
      )
    if not 0.0 <= self.noprogress_frac <= 1.0:
      raise ValueError(
          f"noprogress_frac must be in [0, 1], got {self.noprogress_frac}"
      )

  @property
  def bound(self) -> int:
    return self.max_value or 10 ** (self.digits + 1) - 1

  def examples(
      self, split: str, num: int | None = None, seed: int = 0
  ) -> list[base.Example]:
    """Generates `num` (default 1000) problems of `split`, seeded."""
    return base.generate_split(self, split, num, seed)

  def grade(self, ex: base.Example, response: str) -> float:
    got = self.extract_answer(response)
    if got is None or not _INT_RE.fullmatch(got):
      return 0.0
    return float(int(got) == int(ex.answer))

  def _generate(self, rng: random.Random, uid: str) -> base.Example:
    for _ in range(_MAX_TRIES):
      start = rng.randint(1, 10**self.digits - 1)
      chain = self._chain(rng, start)
      if chain is not None:
        return self._render(rng, uid, start, chain)
    raise ValueError(
        f"could not build a chain of {self.num_ops} ops from {self.ops!r}"
        f" within max_value={self.bound}: raise max_value or add '+' or '-'"
    )

  def _chain(
      self, rng: random.Random, value: int
  ) -> list[tuple[str, int]] | None:
    """A random feasible chain from `value`, or None at a dead end."""
    chain = []
    for _ in range(self.num_ops):
      choices = [(op, self._operands(op, value)) for op in self.ops]
      choices = [(op, bs) for op, bs in choices if bs]
      if not choices:
        return None
      op, operands = rng.choice(choices)
      b = rng.choice(operands)
      chain.append((op, b))
      value = _apply(op, value, b)
    return chain

  def _operands(self, op: str, v: int) -> list[int]:
    """Operands b for which `v op b` stays an integer in [0, bound]."""
    small = 10**self.digits - 1
    if op == "+":
      return list(range(1, min(small, self.bound - v) + 1))
    if op == "-":
      return list(range(1, min(small, v) + 1))
    if op == "*":
      return list(range(2, min(9, self.bound // v) + 1)) if v else []
    return [b for b in range(2, min(9, v) + 1) if v % b == 0]

  def _render(
      self,
      rng: random.Random,
      uid: str,
      start: int,
      chain: list[tuple[str, int]],
  ) -> base.Example:
    question = f"Start with {start}, then {_ops_text(chain)}."
    lines, value, values = [], start, []
    for op, b in chain:
      values.append(value)
      new = _apply(op, value, b)
      lines.append(f"{value} {op} {b} = {new}")
      value = new
    if rng.random() < self.noprogress_frac:
      i = rng.randrange(len(chain))
      if rng.random() < 0.5:
        filler = f"Left: {_ops_text(chain[i:])}"
      else:
        filler = f"Value: {values[i]}"
      lines.insert(i, filler)
    lines.append(base.answer_line(str(value)))
    return base.Example(
        uid=uid,
        question=question,
        solution=base.join_steps(lines),
        answer=str(value),
    )


def _ops_text(chain: list[tuple[str, int]]) -> str:
  return ", ".join(f"{op} {b}" for op, b in chain)


def _apply(op: str, a: int, b: int) -> int:
  if op == "+":
    return a + b
  if op == "-":
    return a - b
  if op == "*":
    return a * b
  return a // b
