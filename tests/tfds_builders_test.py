"""Tests for pav_jax.tasks.tfds_builders: build and read without TensorFlow."""

import json
import sys

import pytest

from pav_jax import tasks
from pav_jax.tasks import tfds_builders

_SMALL = {"num_train": 200, "num_validation": 0, "num_test": 40}


def _assert_no_tensorflow():
  assert "tensorflow" not in sys.modules, "TFDS path imported TensorFlow"


@pytest.mark.parametrize("name", ["arithmetic", "countdown"])
def test_synthetic_build_and_read_round_trip(tmp_path, name):
  train = tfds_builders.load_examples(name, "train", tmp_path, **_SMALL)
  test = tfds_builders.load_examples(name, "test", tmp_path, **_SMALL)
  _assert_no_tensorflow()
  task = tasks.get_task(name)
  assert train == task.examples("train", 200)
  assert test == task.examples("test", 40)
  assert all(task.grade(ex, ex.solution) == 1.0 for ex in train)
  builder = tfds_builders.get_builder(name, tmp_path, **_SMALL)
  assert builder.is_prepared()
  assert sorted(builder.info.splits) == ["test", "train"]
  source = builder.as_data_source("train")
  assert len(source) == 200
  assert source[7]["uid"].decode().startswith(f"{name}/train/0/")
  with pytest.raises(ValueError, match="has no split 'validation'"):
    tfds_builders.load_examples(name, "validation", tmp_path, **_SMALL)


def test_knobs_reach_the_task(tmp_path):
  knobs = dict(num_ops=2, noprogress_frac=1.0, seed=3, **_SMALL)
  examples = tfds_builders.load_examples(
      "arithmetic", "train", tmp_path, num=50, **knobs
  )
  assert len(examples) == 50
  task = tasks.get_task("arithmetic", num_ops=2, noprogress_frac=1.0)
  expected = task.examples("train", 200, seed=3)
  assert set(examples) <= set(expected)
  assert all(len(task.steps(ex.solution)) == 4 for ex in examples)
  _assert_no_tensorflow()


def test_predefined_configs_and_bad_knobs():
  builder = tfds_builders.get_builder("arithmetic", config="easy")
  assert dict(builder.builder_config.knobs) == {"num_ops": 2, "ops": "+-"}
  assert builder.name == "pav_arithmetic"
  with pytest.raises(ValueError, match=r"unknown knobs \['bogus'\]"):
    tfds_builders.get_builder("countdown", bogus=1)
  with pytest.raises(ValueError, match="not both"):
    tfds_builders.get_builder("countdown", config="easy", num_numbers=3)
  with pytest.raises(ValueError, match="unknown task 'chess'"):
    tfds_builders.get_builder("chess")


def test_gsm8k_from_manual_dir(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  rows = [
      {
          "question": f"What is {i} + 1?",
          "answer": f"{i}+1=<<{i}+1={i + 1}>>{i + 1}\n#### {i + 1}",
      }
      for i in range(30)
  ]
  (manual / "train.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in rows)
  )
  examples = tfds_builders.load_examples(
      "gsm8k", "train", tmp_path / "tfds", manual_dir=manual
  )
  task = tasks.get_task("gsm8k", data_dir=manual)
  assert examples == task.examples("train")
  assert examples[3].solution == "3+1=4\nAnswer: 4"
  assert all(task.grade(ex, ex.solution) == 1.0 for ex in examples)
  _assert_no_tensorflow()


def test_changed_source_file_is_prepared_again(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()

  def write(n):
    rows = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(n)]
    (manual / "train.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows))

  write(3)
  first = tfds_builders.load_examples(
      "gsm8k", "train", tmp_path / "tfds", manual_dir=manual)
  assert [ex.answer for ex in first] == ["0", "1", "2"]
  write(5)  # The file grew: the old prepared rows must not be served.
  grown = tfds_builders.load_examples(
      "gsm8k", "train", tmp_path / "tfds", manual_dir=manual)
  assert [ex.answer for ex in grown] == ["0", "1", "2", "3", "4"]
  write(3)  # Back to the first content: its prepared data is reused.
  again = tfds_builders.load_examples(
      "gsm8k", "train", tmp_path / "tfds", manual_dir=manual)
  assert again == first
  prepared = (tmp_path / "tfds" / "pav_gsm8k").glob("default_*")
  assert len(list(prepared)) == 2


def test_math_from_manual_dir(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  row = {
      "problem": "Half of one?",
      "solution": "It is $\\boxed{\\frac12}$.",
      "answer": "\\frac{1}{2}",
      "level": 1,
  }
  (manual / "test_part1.jsonl").write_text(json.dumps(row) + "\n")
  (manual / "test_part2.jsonl").write_text(json.dumps(row) + "\n")
  examples = tfds_builders.load_examples(
      "math", "test", tmp_path / "tfds", manual_dir=manual
  )
  uids = [ex.uid for ex in examples]
  assert uids == ["math/test_part1/1", "math/test_part2/1"]
  task = tasks.get_task("math")
  assert all(task.grade(ex, ex.solution) == 1.0 for ex in examples)
  with pytest.raises(ValueError, match="takes no knobs"):
    tfds_builders.load_examples("math", "test", tmp_path, data_dir2=1)


def test_file_builder_without_files_explains_where_to_get_them(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="grade-school-math"):
    tfds_builders.load_examples(
        "gsm8k", "train", tmp_path / "tfds", manual_dir=tmp_path / "empty"
    )


def test_load_examples_is_reexported():
  assert tasks.load_examples is tfds_builders.load_examples
