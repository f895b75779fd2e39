"""Task registry: `get_task("arithmetic", num_ops=3)`."""

from __future__ import annotations

from typing import Any

from pav_jax.tasks import arithmetic
from pav_jax.tasks import base
from pav_jax.tasks import countdown
from pav_jax.tasks import gsm8k
from pav_jax.tasks import math_task

TASKS = {
    "arithmetic": arithmetic.ArithmeticTask,
    "countdown": countdown.CountdownTask,
    "gsm8k": gsm8k.GSM8KTask,
    "math": math_task.MathTask,
}


def get_task(name: str, **knobs: Any) -> base.Task:
  """Builds the task `name` with difficulty/data knobs.

  Args:
    name: One of `TASKS`.
    **knobs: Fields of the task's dataclass, e.g. `num_ops=3` or
      `data_dir="/data/gsm8k"`.

  Raises:
    ValueError: for an unknown task or knob.
  """
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}: expected one of {sorted(TASKS)}")
  cls = TASKS[name]
  fields = {f.name for f in cls.__dataclass_fields__.values()} - {"name"}
  unknown = set(knobs) - fields
  if unknown:
    raise ValueError(
        f"unknown knobs {sorted(unknown)} for task {name!r}: expected some"
        f" of {sorted(fields)}"
    )
  return cls(**knobs)
