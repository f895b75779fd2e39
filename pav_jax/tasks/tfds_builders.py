"""TFDS builders for every task, written as array_record (no TensorFlow).

Builders: `pav_arithmetic` and `pav_countdown` (synthetic, difficulty via
`BuilderConfig`s), `pav_gsm8k` and `pav_math` (JSONL from a `manual_dir`).
They write `file_format="array_record"` and are read with
`builder.as_data_source(split)` (random access), so neither building nor
reading needs TensorFlow.

    examples = load_examples("arithmetic", "train", data_dir="/tmp/tfds",
                             num_ops=3, num_train=2000)
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from pav_jax import identity
from pav_jax.tasks import base
from pav_jax.tasks import registry

_TEXT_FIELDS = ("uid", "question", "solution", "answer")
_FILE_FORMAT = "array_record"


@dataclasses.dataclass(eq=False)
class TaskConfig(tfds.core.BuilderConfig):
  """A task's knobs plus, for synthetic tasks, split sizes and seed.

  Attributes:
    knobs: Task dataclass fields, as sorted (key, value) pairs.
    num_train: Synthetic training examples.
    num_validation: Synthetic validation examples.
    num_test: Synthetic test examples.
    seed: Generation seed.
  """

  knobs: tuple[tuple[str, Any], ...] = ()
  num_train: int = 10_000
  num_validation: int = 500
  num_test: int = 500
  seed: int = 0

  def split_sizes(self) -> dict[str, int]:
    return {
        "train": self.num_train,
        "validation": self.num_validation,
        "test": self.num_test,
    }


class _TaskBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared features and example generation."""

  TASK: ClassVar[str] = ""
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}
  # No checksum or metadata files live beside this code. Saying so also keeps
  # TFDS off its `importlib_resources` lookup, a package it declares only for
  # Python < 3.9 and which is not installed.
  code_path = None

  def _info(self) -> tfds.core.DatasetInfo:
    features = {k: tfds.features.Text() for k in _TEXT_FIELDS}
    features["index"] = tfds.features.Scalar(dtype=np.int64)
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"pav_jax task {self.TASK!r}: {self.__doc__}",
        features=tfds.features.FeaturesDict(features),
    )

  def task(self, **extra: Any) -> base.Task:
    knobs = dict(self.builder_config.knobs)
    return registry.get_task(self.TASK, **knobs, **extra)

  def _generate_examples(
      self, task: base.Task, split: str, num: int | None
  ) -> Iterator[tuple[str, dict[str, Any]]]:
    seed = self.builder_config.seed
    for i, ex in enumerate(task.examples(split, num=num, seed=seed)):
      yield ex.uid, {**dataclasses.asdict(ex), "index": i}


class _SyntheticBuilder(_TaskBuilder, skip_registration=True):
  """Generates every split procedurally from the config."""

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download.
    task = self.task()
    return {
        split: self._generate_examples(task, split, n)
        for split, n in self.builder_config.split_sizes().items()
        if n > 0
    }


class _FileBuilder(_TaskBuilder, skip_registration=True):
  """Reads `<manual_dir>/<split>.jsonl` (or `<split>_*.jsonl`) files."""

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    directory = pathlib.Path(dl_manager.manual_dir)
    task = self.task(data_dir=directory)
    splits = [s for s in base.SPLITS if _has_split(directory, s)]
    if not splits:
      raise FileNotFoundError(
          f"no <split>.jsonl files in {directory}.\n"
          + self.MANUAL_DOWNLOAD_INSTRUCTIONS
      )
    return {s: self._generate_examples(task, s, None) for s in splits}


class PavArithmetic(_SyntheticBuilder):
  """Synthetic multi-step arithmetic (pav_jax.tasks.arithmetic)."""

  name = "pav_arithmetic"
  TASK = "arithmetic"
  BUILDER_CONFIGS = [
      TaskConfig(name="default", description="Task defaults."),
      TaskConfig(
          name="easy",
          description="Two ops, + and - only.",
          knobs=(("num_ops", 2), ("ops", "+-")),
      ),
      TaskConfig(
          name="hard",
          description="Six ops with two-digit operands.",
          knobs=(("digits", 2), ("num_ops", 6)),
      ),
      TaskConfig(
          name="noprogress",
          description="Defaults, half the solutions with a no-progress step.",
          knobs=(("noprogress_frac", 0.5),),
      ),
  ]


class PavCountdown(_SyntheticBuilder):
  """Synthetic Countdown (pav_jax.tasks.countdown)."""

  name = "pav_countdown"
  TASK = "countdown"
  BUILDER_CONFIGS = [
      TaskConfig(name="default", description="Task defaults."),
      TaskConfig(
          name="easy",
          description="Three numbers up to 10.",
          knobs=(("max_number", 10), ("num_numbers", 3)),
      ),
      TaskConfig(
          name="hard",
          description="Five numbers up to 50.",
          knobs=(("max_number", 50), ("num_numbers", 5)),
      ),
  ]


class PavGsm8k(_FileBuilder):
  """GSM8K word problems (pav_jax.tasks.gsm8k)."""

  name = "pav_gsm8k"
  TASK = "gsm8k"
  BUILDER_CONFIGS = [TaskConfig(name="default", description="All of GSM8K.")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put GSM8K's train.jsonl and test.jsonl (from
https://github.com/openai/grade-school-math, grade_school_math/data/) in the
manual_dir, e.g. <shared>/data/gsm8k/, and pass it as
tfds.download.DownloadConfig(manual_dir=...) (load_examples does this)."""


class PavMath(_FileBuilder):
  """MATH / MATH-500 competition problems (pav_jax.tasks.math_task)."""

  name = "pav_math"
  TASK = "math"
  BUILDER_CONFIGS = [TaskConfig(name="default", description="All files.")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put MATH JSONL files ({"problem", "solution", "answer"} per line) named
<split>.jsonl or <split>_*.jsonl in the manual_dir, e.g. MATH-500's test.jsonl
from https://huggingface.co/datasets/HuggingFaceH4/MATH-500 in
<shared>/data/math500/, and pass it as
tfds.download.DownloadConfig(manual_dir=...) (load_examples does this)."""


BUILDERS: dict[str, type[_TaskBuilder]] = {
    "arithmetic": PavArithmetic,
    "countdown": PavCountdown,
    "gsm8k": PavGsm8k,
    "math": PavMath,
}
_FILE_SUBDIRS = {"gsm8k": "gsm8k", "math": "math500"}
_CONFIG_FIELDS = ("num_train", "num_validation", "num_test", "seed")


def get_builder(
    task_name: str,
    data_dir: str | os.PathLike[str] | None = None,
    config: str | TaskConfig | None = None,
    **knobs: Any,
) -> _TaskBuilder:
  """The array_record builder of `task_name` (not yet prepared).

  Args:
    task_name: One of `BUILDERS`.
    data_dir: Where TFDS writes the prepared dataset (TFDS default if None).
    config: A predefined config name (e.g. "easy"); exclusive with `knobs`.
    **knobs: Task knobs and `TaskConfig` fields (`num_train`, ..., `seed`)
      for a custom config, named `custom_<hash>`.
  """
  if task_name not in BUILDERS:
    raise ValueError(
        f"unknown task {task_name!r}: expected one of {sorted(BUILDERS)}"
    )
  cls = BUILDERS[task_name]
  if config is not None and knobs:
    raise ValueError(
        f"pass either config={config!r} or knobs {sorted(knobs)}, not both"
    )
  if knobs:
    task_knobs = {k: v for k, v in knobs.items() if k not in _CONFIG_FIELDS}
    if task_name in _FILE_SUBDIRS and task_knobs:
      raise ValueError(
          f"task {task_name!r} takes no knobs {sorted(task_knobs)} here: pass"
          " the JSONL directory as manual_dir="
      )
    registry.get_task(task_name, **task_knobs)  # Fails early on bad knobs.
    config = _custom_config(knobs)
  return cls(
      data_dir=None if data_dir is None else str(data_dir),
      config=config or "default",
      file_format=_FILE_FORMAT,
  )


def load_examples(
    task_name: str,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    config: str | None = None,
    manual_dir: str | os.PathLike[str] | None = None,
    num: int | None = None,
    **knobs: Any,
) -> list[base.Example]:
  """Prepares (once) and reads a task split through TFDS, without TensorFlow.

  Args:
    task_name: "arithmetic", "countdown", "gsm8k" or "math".
    split: "train", "validation" or "test".
    data_dir: Where TFDS keeps prepared datasets (TFDS default if None).
    config: A predefined config name; exclusive with `knobs`.
    manual_dir: For gsm8k/math, the directory with the JSONL files; default
      `find_data_dir() / "gsm8k"` or `/ "math500"`.
    num: Take a seeded subset of this many examples (all if None).
    **knobs: See `get_builder`.

  Returns:
    The examples in generation (or file) order.
  """
  builder = get_builder(task_name, data_dir, config, **knobs)
  download_config = None
  if task_name in _FILE_SUBDIRS:
    directory = base.resolve_data_dir(manual_dir, _FILE_SUBDIRS[task_name])
    if not any(_has_split(directory, s) for s in base.SPLITS):
      raise FileNotFoundError(
          f"no <split>.jsonl files in {directory}.\n"
          + builder.MANUAL_DOWNLOAD_INSTRUCTIONS
      )
    # Prepared data is keyed on the source files' content: a grown or
    # different file is prepared anew, never served stale.
    digest = source_digest(directory)
    base_config = builder.builder_config
    builder = get_builder(task_name, data_dir, TaskConfig(
        name=f"{base_config.name}_{digest}",
        description=f"{base_config.description} (source sha256 {digest})",
        knobs=base_config.knobs))
    download_config = tfds.download.DownloadConfig(manual_dir=str(directory))
  builder.download_and_prepare(download_config=download_config)
  if split not in builder.info.splits:
    raise ValueError(
        f"{builder.name}/{builder.builder_config.name} has no split {split!r};"
        f" it has {sorted(builder.info.splits)}"
    )
  source = builder.as_data_source(split)
  records = [source[i] for i in range(len(source))]
  records.sort(key=lambda r: int(r["index"]))
  examples = [_to_example(r) for r in records]
  return base.subsample(examples, num, builder.builder_config.seed)


def source_digest(directory: str | os.PathLike[str]) -> str:
  """12 hex digits of sha256 over every split file's name and content."""
  directory = pathlib.Path(directory)
  h = hashlib.sha256()
  for split in base.SPLITS:
    for path in base.split_files(directory, split) if _has_split(
        directory, split) else ():
      h.update(f"{path.name}\0{identity.file_sha256(path)}\0".encode())
  return h.hexdigest()[:12]


def _custom_config(knobs: dict[str, Any]) -> TaskConfig:
  fields = {k: knobs[k] for k in _CONFIG_FIELDS if k in knobs}
  task_knobs = tuple(
      sorted((k, v) for k, v in knobs.items() if k not in _CONFIG_FIELDS)
  )
  key = repr((task_knobs, sorted(fields.items())))
  digest = hashlib.md5(key.encode()).hexdigest()[:10]
  return TaskConfig(
      name=f"custom_{digest}",
      description=f"Custom config: {key}",
      knobs=task_knobs,
      **fields,
  )


def _has_split(directory: pathlib.Path, split: str) -> bool:
  return any(directory.glob(f"{split}.jsonl")) or any(
      directory.glob(f"{split}_*.jsonl")
  )


def _to_example(record: dict[str, Any]) -> base.Example:
  def text(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)

  return base.Example(**{k: text(record[k]) for k in _TEXT_FIELDS})
