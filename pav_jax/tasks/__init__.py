"""Reasoning tasks with exact graders: arithmetic, countdown, GSM8K, MATH.

`get_task(name, **knobs)` returns a `Task`; `load_examples` (in
`pav_jax.tasks.tfds_builders`, re-exported lazily) reads the same examples
through TFDS array_record files.
"""

from typing import Any

from pav_jax.tasks.base import ANSWER_PREFIX
from pav_jax.tasks.base import Example
from pav_jax.tasks.base import find_data_dir
from pav_jax.tasks.base import join_steps
from pav_jax.tasks.base import split_steps
from pav_jax.tasks.base import STEP_DELIMITER
from pav_jax.tasks.base import Task
from pav_jax.tasks.registry import get_task
from pav_jax.tasks.registry import TASKS

# Re-exported API (`load_examples` is resolved lazily by `__getattr__`).
__all__ = [
    "ANSWER_PREFIX",
    "Example",
    "find_data_dir",
    "join_steps",
    "split_steps",
    "STEP_DELIMITER",
    "Task",
    "get_task",
    "TASKS",
]


def __getattr__(name: str) -> Any:
  # tensorflow_datasets is imported only when TFDS loading is used.
  if name == "load_examples":
    # pylint: disable-next=g-import-not-at-top
    from pav_jax.tasks import tfds_builders

    return tfds_builders.load_examples
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
