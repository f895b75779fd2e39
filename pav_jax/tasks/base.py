"""The task interface shared by every reasoning task, plus small helpers.

A task turns problems into `Example`s and grades policy responses exactly.
A response is a list of steps joined by `STEP_DELIMITER` ("\\n"); its last
line is the final answer line `Answer: <value>`. The policy is trained on
`BOS + task.prompt(ex) + ex.solution + EOS`.
"""

from __future__ import annotations

import dataclasses
import fractions
import hashlib
import json
import os
import pathlib
import random
import re
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

STEP_DELIMITER = "\n"
ANSWER_PREFIX = "Answer:"
SPLITS = ("train", "validation", "test")

# Synthetic splits are disjoint by construction: an example belongs to the
# split whose bucket holds md5(question) % 100.
_SPLIT_BUCKETS = {"train": (10, 100), "validation": (5, 10), "test": (0, 5)}


@dataclasses.dataclass(frozen=True)
class Example:
  """One problem with its reference solution.

  Attributes:
    uid: Unique id, e.g. "gsm8k/train/17".
    question: The problem text.
    solution: Reference solution: steps separated by "\\n", the last line is
      the final answer line `Answer: <value>`.
    answer: Canonical final answer string.
  """

  uid: str
  question: str
  solution: str
  answer: str


@runtime_checkable
class Task(Protocol):
  """What every task provides (see the module docstring)."""

  name: str

  def examples(
      self, split: str, num: int | None = None, seed: int = 0
  ) -> list[Example]:
    ...

  def prompt(self, ex: Example) -> str:
    ...

  def extract_answer(self, response: str) -> str | None:
    ...

  def grade(self, ex: Example, response: str) -> float:
    ...

  def steps(self, response: str) -> list[str]:
    ...


def split_steps(response: str) -> list[str]:
  """Splits a response into steps at `STEP_DELIMITER`, dropping blank lines."""
  return [s for s in response.split(STEP_DELIMITER) if s.strip()]


def join_steps(steps: Sequence[str]) -> str:
  """Inverse of `split_steps` for responses without blank lines."""
  return STEP_DELIMITER.join(steps)


def answer_line(value: str) -> str:
  """The final answer line for `value`."""
  return f"{ANSWER_PREFIX} {value}"


def extract_answer_line(response: str) -> str | None:
  """Returns the value of the last `Answer: ...` line, or None if absent."""
  for line in reversed(response.split(STEP_DELIMITER)):
    line = line.strip()
    if line.startswith(ANSWER_PREFIX):
      value = line[len(ANSWER_PREFIX):].strip()
      return value or None
  return None


class QATask:
  """Shared `prompt`/`steps`/`extract_answer` for tasks in the standard format.

  Subclasses set `name` and implement `examples` and `grade`.
  """

  name: str = ""

  def prompt(self, ex: Example) -> str:
    return ex.question + STEP_DELIMITER

  def steps(self, response: str) -> list[str]:
    return split_steps(response)

  def extract_answer(self, response: str) -> str | None:
    return extract_answer_line(response)


# -- Synthetic generation ------------------------------------------------------


def check_split(split: str) -> None:
  if split not in _SPLIT_BUCKETS:
    raise ValueError(f"unknown split {split!r}: expected one of {SPLITS}")


def in_split(question: str, split: str) -> bool:
  """Whether a synthetic `question` belongs to `split` (disjoint splits)."""
  bucket = int(hashlib.md5(question.encode()).hexdigest(), 16) % 100
  lo, hi = _SPLIT_BUCKETS[split]
  return lo <= bucket < hi


def split_rng(name: str, split: str, seed: int) -> random.Random:
  """A deterministic RNG for one (task, split, seed)."""
  return random.Random(f"{name}/{split}/{seed}")


def generate_split(task, split: str, num: int | None,
                   seed: int) -> list[Example]:
  """`num` (default 1000) seeded problems of a synthetic task in `split`.

  `task._generate(rng, uid)` draws one problem; problems are kept when their
  question hashes into `split`, so the splits never overlap.
  """
  check_split(split)
  rng = split_rng(task.name, split, seed)
  out = []
  while len(out) < (1000 if num is None else num):
    ex = task._generate(rng, uid=f"{task.name}/{split}/{seed}/{len(out)}")  # pylint: disable=protected-access
    if in_split(ex.question, split):
      out.append(ex)
  return out


# -- File-backed data ----------------------------------------------------------


DATA_DIR_ENV = "PAV_DATA_DIR"


def find_data_dir() -> pathlib.Path | None:
  """Finds the shared data directory.

  Looks in `$PAV_DATA_DIR` first, then in `shared/data` beside the repository
  root (`<repo>/../shared/data`).

  Returns:
    The directory, or None if `$PAV_DATA_DIR` is unset and there is no
    `shared/data` beside the repository.

  Raises:
    FileNotFoundError: if `$PAV_DATA_DIR` is set but is not a directory (a
      typo must not silently fall back to other data).
  """
  env = os.environ.get(DATA_DIR_ENV)
  if env:
    path = pathlib.Path(env)
    if not path.is_dir():
      raise FileNotFoundError(
          f"${DATA_DIR_ENV} is set to {env!r}, which is not a directory: fix"
          f" it, or unset {DATA_DIR_ENV} to use <repo>/../shared/data"
      )
    return path
  repo_root = pathlib.Path(__file__).resolve().parents[2]
  shared = repo_root.parent / "shared" / "data"
  return shared if shared.is_dir() else None


def read_jsonl(
    path: str | os.PathLike[str], required: Sequence[str]
) -> Iterator[tuple[int, dict[str, Any]]]:
  """Yields (line number, record) from a JSONL file, validating each record.

  Blank lines are skipped.

  Args:
    path: The JSONL file.
    required: Keys every record must hold as strings.

  Raises:
    ValueError: naming the file and line, if a line is not UTF-8, not a
      JSON object or lacks a required string field; or naming the file, if
      it holds no record at all.
  """
  count = 0
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, start=1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ValueError(
            f"{path}:{lineno}: not valid UTF-8 (byte {raw[e.start]:#04x} at"
            f" column {e.start + 1}): re-save the file as UTF-8 or fix that"
            " line"
        ) from None
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(
            f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno}):"
            " each line must be one complete JSON object"
        ) from e
      if not isinstance(record, dict):
        raise ValueError(
            f"{path}:{lineno}: expected a JSON object, got"
            f" {type(record).__name__}"
        )
      for key in required:
        if key not in record:
          raise ValueError(f"{path}:{lineno}: missing key {key!r}")
        if not isinstance(record[key], str):
          raise ValueError(
              f"{path}:{lineno}: key {key!r} must be a string, got"
              f" {type(record[key]).__name__}"
          )
      count += 1
      yield lineno, record
  if count == 0:
    raise ValueError(
        f"file {path} has no examples: expected one JSON object per line"
        f" with keys {list(required)}; fill it or remove it"
    )


def resolve_data_dir(
    data_dir: str | os.PathLike[str] | None, subdir: str
) -> pathlib.Path:
  """`data_dir`, or `find_data_dir() / subdir` when `data_dir` is None.

  Raises:
    FileNotFoundError: saying how to point at the data, if it is missing.
  """
  if data_dir is None:
    root = find_data_dir()
    if root is None:
      raise FileNotFoundError(
          f"no data directory for {subdir!r}: pass data_dir= or set"
          " $PAV_DATA_DIR to a directory holding"
          f" {subdir}/<split>.jsonl"
      )
    data_dir = root / subdir
  path = pathlib.Path(data_dir)
  if not path.is_dir():
    raise FileNotFoundError(f"data directory {path} does not exist")
  return path


def split_files(directory: pathlib.Path, split: str) -> list[pathlib.Path]:
  """The JSONL files of `split` in `directory`: `<split>.jsonl`, `<split>_*`.

  Raises:
    FileNotFoundError: if there are none.
  """
  files = sorted(directory.glob(f"{split}.jsonl"))
  files += sorted(directory.glob(f"{split}_*.jsonl"))
  if not files:
    raise FileNotFoundError(
        f"no {split!r} data in {directory}: expected {split}.jsonl or"
        f" {split}_*.jsonl there (set data_dir= or $PAV_DATA_DIR)"
    )
  return files


def subsample(
    items: list[Example], num: int | None, seed: int
) -> list[Example]:
  """A seeded subset of `num` items in their original order (all if None)."""
  if num is None or num >= len(items):
    return items
  keep = sorted(random.Random(seed).sample(range(len(items)), num))
  return [items[i] for i in keep]


_NUMBER_RE = re.compile(r"-?(\d+(\.\d*)?|\.\d+)")


def parse_number(text: str | None) -> fractions.Fraction | None:
  """Parses a plain number, ignoring `$`, `,`, spaces and a trailing period.

  Returns:
    The exact number, or None if `text` is not a number.
  """
  if text is None:
    return None
  text = text.replace(",", "").replace("$", "").replace(" ", "")
  text = text.rstrip(".")
  if not _NUMBER_RE.fullmatch(text):
    return None
  return fractions.Fraction(text)
