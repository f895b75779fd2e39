"""Tests for pav_jax.tasks: generators, exact graders, JSONL loading."""

import json
import operator
import pathlib
import re

import pytest

from pav_jax import tasks
from pav_jax.tasks import base
from pav_jax.tasks import countdown
from pav_jax.tasks import gsm8k
from pav_jax.tasks import math_task

DATA_DIR = tasks.find_data_dir()
GSM8K_FILE = DATA_DIR / "gsm8k" / "train.jsonl" if DATA_DIR else None
MATH_DIR = DATA_DIR / "math500" if DATA_DIR else None
needs_gsm8k = pytest.mark.skipif(
    GSM8K_FILE is None or not GSM8K_FILE.is_file(),
    reason="no shared GSM8K data (set $PAV_DATA_DIR to a dir with gsm8k/)",
)
needs_math = pytest.mark.skipif(
    MATH_DIR is None or not any(MATH_DIR.glob("test*.jsonl")),
    reason="no shared MATH-500 data (set $PAV_DATA_DIR to a dir with math500/)",
)
FIXTURE_DATA = pathlib.Path(__file__).parent / "fixtures" / "data"
SYNTHETIC = ("arithmetic", "countdown")
_OPS = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.floordiv,
}


def _perturb(answer: str) -> str:
  """Changes the first digit of `answer` (or appends "+1" if it has none)."""
  m = re.search(r"\d", answer)
  if m is None:
    return answer + "+1"
  i = m.start()
  return answer[:i] + str((int(answer[i]) + 1) % 10) + answer[i + 1:]


def _replace_answer(solution: str, value: str) -> str:
  lines = solution.split("\n")
  return "\n".join(lines[:-1] + [f"Answer: {value}"])


# -- Interface -----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_get_task_returns_a_task(name):
  task = tasks.get_task(name)
  assert isinstance(task, tasks.Task)
  assert task.name == name


def test_get_task_rejects_unknown_names_and_knobs():
  with pytest.raises(ValueError, match="unknown task 'chess'"):
    tasks.get_task("chess")
  with pytest.raises(ValueError, match=r"unknown knobs \['num_opz'\]"):
    tasks.get_task("arithmetic", num_opz=3)


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_examples_are_well_formed(name):
  task = tasks.get_task(name)
  for ex in task.examples("train", num=200):
    prompt = task.prompt(ex)
    assert prompt.endswith(tasks.STEP_DELIMITER)
    assert prompt.count("\n") == 1
    assert ex.solution.split("\n")[-1] == f"Answer: {ex.answer}"
    assert task.steps(ex.solution) == ex.solution.split("\n")
    assert task.extract_answer(ex.solution) == ex.answer
    assert task.grade(ex, ex.solution) == 1.0


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_generation_is_seeded_and_splits_are_disjoint(name):
  task = tasks.get_task(name)
  assert task.examples("train", 50, seed=1) == task.examples("train", 50, 1)
  assert task.examples("train", 50, seed=1) != task.examples("train", 50, 2)
  train = {ex.question for ex in task.examples("train", 2000)}
  test = {ex.question for ex in task.examples("test", 200)}
  assert not train & test
  with pytest.raises(ValueError, match="unknown split 'dev'"):
    task.examples("dev", 1)


def test_steps_split_on_newlines_and_drop_blank_lines():
  task = tasks.get_task("arithmetic")
  assert task.steps("1 + 2 = 3\n\n  \n3 + 1 = 4\nAnswer: 4\n") == [
      "1 + 2 = 3",
      "3 + 1 = 4",
      "Answer: 4",
  ]
  assert tasks.join_steps(["a", "b"]) == "a\nb"


# -- Arithmetic ----------------------------------------------------------------


@pytest.mark.parametrize(
    "knobs",
    [{}, {"num_ops": 6, "digits": 2}, {"ops": "+-*/"}, {"ops": "*/"}],
)
def test_arithmetic_steps_are_correct_and_bounded(knobs):
  task = tasks.get_task("arithmetic", **knobs)
  for ex in task.examples("train", 200):
    lines = ex.solution.split("\n")
    assert len(lines) == task.num_ops + 1
    for line in lines[:-1]:
      a, op, b, c = re.fullmatch(r"(\d+) ([-+*/]) (\d+) = (\d+)", line).groups()
      assert op in task.ops
      assert 0 <= int(c) <= task.bound
      assert int(c) == _OPS[op](int(a), int(b))


def test_arithmetic_grader_is_exact():
  task = tasks.get_task("arithmetic")
  ex = task.examples("test", 1)[0]
  assert task.grade(ex, ex.solution) == 1.0
  wrong = str(int(ex.answer) + 1)
  assert task.grade(ex, _replace_answer(ex.solution, wrong)) == 0.0
  assert task.grade(ex, _replace_answer(ex.solution, ex.answer + ".0")) == 0.0
  assert task.grade(ex, _replace_answer(ex.solution, "x")) == 0.0
  assert task.grade(ex, ex.solution.rsplit("\n", 1)[0]) == 0.0  # No answer.
  assert task.grade(ex, "") == 0.0


def test_arithmetic_noprogress_knob():
  def fillers(task):
    exs = task.examples("train", 400)
    return [
        sum(line.startswith(("Left:", "Value:"))
            for line in ex.solution.split("\n"))
        for ex in exs
    ], exs

  counts, _ = fillers(tasks.get_task("arithmetic", noprogress_frac=0.0))
  assert sum(counts) == 0
  task = tasks.get_task("arithmetic", noprogress_frac=1.0)
  counts, exs = fillers(task)
  assert set(counts) == {1}
  assert all(task.grade(ex, ex.solution) == 1.0 for ex in exs)
  assert all(len(task.steps(ex.solution)) == task.num_ops + 2 for ex in exs)
  counts, _ = fillers(tasks.get_task("arithmetic", noprogress_frac=0.5))
  assert 0.4 < sum(counts) / len(counts) < 0.6
  with pytest.raises(ValueError, match="noprogress_frac"):
    tasks.get_task("arithmetic", noprogress_frac=1.5)


# -- Countdown -----------------------------------------------------------------

_CD = base.Example("cd", "Use 2 3 4 6 to make 30.", "", "30")
_CD_OK = "6 * 4 = 24\n3 * 2 = 6\n24 + 6 = 30\nAnswer: 30"


@pytest.mark.parametrize(
    "response",
    [
        _CD_OK,
        "4 - 2 = 2\n3 + 2 = 5\n6 * 5 = 30\nAnswer: 30",
        "6 * 4 = 24\n2 * 3 = 6\n6 + 24 = 30\nAnswer: 30",
    ],
)
def test_countdown_grader_accepts_any_valid_solution(response):
  assert tasks.get_task("countdown").grade(_CD, response) == 1.0


@pytest.mark.parametrize(
    "response, why",
    [
        ("6 * 4 = 24\n3 + 2 = 6\n24 + 6 = 30\nAnswer: 30", "arithmetic"),
        ("6 * 5 = 30\n4 - 3 = 1\n30 * 1 = 30\nAnswer: 30", "no 5"),
        ("6 * 4 = 24\n24 + 6 = 30\n3 - 2 = 1\nAnswer: 30", "6 reused"),
        ("2 * 3 = 6\n6 * 6 = 36\n36 - 4 = 32\nAnswer: 30", "dead end"),
        ("2 * 3 = 6\n6 * 6 = 36\n36 - 4 = 32\nAnswer: 32", "not target"),
        ("6 + 4 = 10\n10 * 3 = 30\nAnswer: 30", "2 unused"),
        ("6 / 4 = 1\n3 - 1 = 2\n2 * 2 = 4\nAnswer: 30", "inexact /"),
        ("2 - 6 = -4\n4 + 3 = 7\nAnswer: 30", "negative"),
        (_CD_OK.replace("Answer: 30", "Answer: 31"), "answer line"),
        (_CD_OK.replace("\nAnswer: 30", ""), "no answer line"),
        ("Let me think.\n" + _CD_OK, "not a step"),
        ("Answer: 30", "no steps"),
    ],
)
def test_countdown_grader_rejects_invalid_solutions(response, why):
  assert tasks.get_task("countdown").grade(_CD, response) == 0.0, why


def test_countdown_use_all_false_allows_unused_numbers():
  response = "6 + 4 = 10\n10 * 3 = 30\nAnswer: 30"
  assert tasks.get_task("countdown").grade(_CD, response) == 0.0
  assert tasks.get_task("countdown", use_all=False).grade(_CD, response) == 1.0


def test_countdown_generator_builds_solvable_problems():
  for knobs in ({}, {"num_numbers": 5, "max_number": 50}, {"ops": "+-"}):
    task = tasks.get_task("countdown", **knobs)
    for ex in task.examples("train", 200):
      numbers, target = countdown.parse_question(ex.question)
      assert len(numbers) == task.num_numbers
      assert max(numbers) <= task.max_number
      assert 1 <= target <= task.bound and str(target) == ex.answer
      assert len(task.steps(ex.solution)) == task.num_numbers
      assert task.grade(ex, ex.solution) == 1.0
      wrong = _replace_answer(ex.solution, _perturb(ex.answer))
      assert task.grade(ex, wrong) == 0.0


# -- GSM8K ---------------------------------------------------------------------


def test_gsm8k_convert_answer():
  solution, answer = gsm8k.convert_answer(
      "He pays 2*$3 = $<<2*3=6>>6.\n\nTotal 6+1,000 = <<6+1000=1006>>1,006\n"
      "#### 1,006"
  )
  assert solution == "He pays 2*$3 = $6.\nTotal 6+1,000 = 1,006\nAnswer: 1006"
  assert answer == "1006"
  with pytest.raises(ValueError, match="no final '#### N'"):
    gsm8k.convert_answer("no final line")


def test_gsm8k_grades_numerically():
  task = tasks.get_task("gsm8k")
  ex = base.Example("g", "q", "Answer: 1006", "1006")
  for good in ("1006", "1,006", "$1,006", "1006.0", "1006.", "$ 1,006.00"):
    assert task.grade(ex, f"step\nAnswer: {good}") == 1.0, good
  for bad in ("1007", "100.6", "1006 dollars", "", "one"):
    assert task.grade(ex, f"step\nAnswer: {bad}") == 0.0, bad
  assert task.grade(ex, "no answer line") == 0.0


@needs_gsm8k
def test_gsm8k_reference_solutions_all_grade_correct():
  task = tasks.get_task("gsm8k", data_dir=GSM8K_FILE.parent)
  examples = task.examples("train")
  assert len(examples) > 1000
  for ex in examples:
    assert "<<" not in ex.solution and "####" not in ex.solution
    assert task.prompt(ex).endswith("\n")
    assert task.grade(ex, ex.solution) == 1.0, ex.uid
  wrong = [
      task.grade(ex, _replace_answer(ex.solution, _perturb(ex.answer)))
      for ex in examples
  ]
  assert sum(wrong) == 0
  assert task.examples("train", 10, seed=3) == task.examples("train", 10, 3)


@pytest.mark.parametrize("split, num", [
    ("train", 12), ("validation", 4), ("test", 4)])
def test_gsm8k_fixture_splits_load_and_grade(split, num):
  task = tasks.get_task("gsm8k", data_dir=FIXTURE_DATA / "gsm8k")
  examples = task.examples(split)
  assert len(examples) == num
  for ex in examples:
    assert "<<" not in ex.solution and "####" not in ex.solution
    assert task.grade(ex, ex.solution) == 1.0, ex.uid
    wrong = _replace_answer(ex.solution, _perturb(ex.answer))
    assert task.grade(ex, wrong) == 0.0, ex.uid


# -- MATH ----------------------------------------------------------------------


def test_last_boxed_handles_nesting():
  text = r"so $\boxed{1}$ and then $\boxed{\frac{a}{\sqrt{b}}}$ done"
  assert math_task.last_boxed(text) == r"\frac{a}{\sqrt{b}}"
  assert math_task.last_boxed(r"\boxed 5$.") == "5"
  assert math_task.last_boxed(r"\boxed{unclosed") is None
  assert math_task.last_boxed("nothing") is None


def test_math_extracts_answer_line_then_boxed():
  task = tasks.get_task("math")
  assert task.extract_answer(r"x \boxed{3}" + "\nAnswer: 4") == "4"
  assert task.extract_answer(r"so \boxed{\{1,2\}}.") == r"\{1,2\}"
  ex = base.Example("m", "q", "", r"\frac{1}{2}")
  assert task.grade(ex, r"It is $\boxed{0.5}$.") == 1.0
  assert task.grade(ex, r"Answer: \dfrac12") == 1.0
  assert task.grade(ex, r"Answer: \frac{1}{3}") == 0.0
  assert task.grade(ex, "no answer") == 0.0


@needs_math
def test_math500_boxed_answers_verify_and_perturbations_fail():
  rows = []
  for path in sorted(MATH_DIR.glob("test*.jsonl")):
    rows += [json.loads(line) for line in path.read_text().splitlines()]
  task = tasks.get_task("math", data_dir=MATH_DIR)
  examples = task.examples("test")
  assert len(examples) == len(rows) > 100
  same = wrong = 0
  for row, ex in zip(rows, examples):
    boxed = math_task.last_boxed(row["solution"])
    same += task.grade(ex, rf"so $\boxed{{{boxed}}}$.") == 1.0
    wrong += task.grade(ex, f"Answer: {_perturb(ex.answer)}") == 0.0
  assert same >= 0.99 * len(rows), same
  assert wrong >= 0.99 * len(rows), wrong
  assert all(task.prompt(ex).endswith("\n") for ex in examples)
  assert all(ex.solution.endswith(f"Answer: {ex.answer}") for ex in examples)


def test_math_fixture_loads_and_grades():
  task = tasks.get_task("math", data_dir=FIXTURE_DATA / "math500")
  examples = task.examples("test")
  assert len(examples) == 12
  for ex in examples:
    assert task.grade(ex, ex.solution) == 1.0, ex.uid
    assert task.grade(ex, f"Answer: {_perturb(ex.answer)}") == 0.0, ex.uid


# -- Files ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"question": "q"}', "missing key 'answer'"),
        ('{"question": "q", "answer": 3}', "key 'answer' must be a string"),
        ('{"question": "q", "answer": "#', "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"question": "q", "answer": "x\\n#### ?"}', "is not a number"),
    ],
)
def test_malformed_jsonl_names_file_and_line(tmp_path, line, message):
  good = json.dumps({"question": "q", "answer": "a\n#### 1"})
  path = tmp_path / "train.jsonl"
  path.write_text("\n".join([good, "", good, line, good]) + "\n")
  task = tasks.get_task("gsm8k", data_dir=tmp_path)
  pattern = re.escape(f"{path}:4: ") + ".*" + message
  with pytest.raises(ValueError, match=pattern):
    task.examples("train")


def test_math_jsonl_without_answer_uses_boxed_or_fails(tmp_path):
  path = tmp_path / "test.jsonl"
  path.write_text(
      json.dumps({"problem": "p", "solution": r"so $\boxed{7}$."}) + "\n"
      + json.dumps({"problem": "p", "solution": "no box"}) + "\n"
  )
  with pytest.raises(ValueError, match=re.escape(f"{path}:2: no answer")):
    tasks.get_task("math", data_dir=tmp_path).examples("test")
  path.write_text(path.read_text().splitlines()[0] + "\n")
  (ex,) = tasks.get_task("math", data_dir=tmp_path).examples("test")
  assert ex.answer == "7" and ex.solution == "so $\\boxed{7}$.\nAnswer: 7"


def test_missing_split_and_data_dir_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="no 'test' data in"):
    tasks.get_task("gsm8k", data_dir=tmp_path).examples("test")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    tasks.get_task("gsm8k", data_dir=tmp_path / "nope").examples("test")


def test_find_data_dir_prefers_env_and_refuses_a_mistyped_one(
    tmp_path, monkeypatch):
  monkeypatch.setenv("PAV_DATA_DIR", str(tmp_path))
  assert tasks.find_data_dir() == tmp_path
  monkeypatch.setenv("PAV_DATA_DIR", str(tmp_path / "missing"))
  with pytest.raises(FileNotFoundError,
                     match=r"\$PAV_DATA_DIR is set to .*missing.*not a"):
    tasks.find_data_dir()
  with pytest.raises(FileNotFoundError, match="PAV_DATA_DIR"):
    tasks.get_task("gsm8k").examples("train")
  monkeypatch.delenv("PAV_DATA_DIR")
  found = tasks.find_data_dir()
  repo = pathlib.Path(base.__file__).resolve().parents[2]
  assert found is None or found == repo.parent / "shared" / "data"


def test_non_utf8_byte_names_file_and_line(tmp_path):
  good = json.dumps({"question": "q", "answer": "a\n#### 1"}).encode()
  path = tmp_path / "train.jsonl"
  path.write_bytes(good + b"\n" + good + b"\n" + b'{"question": "caf\xe9"'
                   + b"}\n")
  with pytest.raises(ValueError, match=re.escape(f"{path}:3: not valid UTF-8")
                     + r" \(byte 0xe9 at column 18\): re-save"):
    tasks.get_task("gsm8k", data_dir=tmp_path).examples("train")


@pytest.mark.parametrize("name, content", [
    ("gsm8k", ""), ("gsm8k", "\n\n"), ("math", "")])
def test_empty_data_file_says_so(tmp_path, name, content):
  split = "train" if name == "gsm8k" else "test"
  path = tmp_path / f"{split}.jsonl"
  path.write_text(content)
  message = re.escape(f"file {path} has no examples")
  with pytest.raises(ValueError, match=message):
    tasks.get_task(name, data_dir=tmp_path).examples(split)
