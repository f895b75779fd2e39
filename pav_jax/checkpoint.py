"""Orbax checkpoints: train state, data position, RNG and config metadata.

One `Checkpointer` per training stage directory. Restoring always starts from
an abstract, sharded target. A step that fails to restore (a truncated or
corrupt file) is skipped with a warning and the previous step is tried; if a
directory holds checkpoints but none restores, `CheckpointError` is raised:
a run never silently starts fresh over the user's work.
"""

import json
import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """A checkpoint directory that cannot be used."""


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with args.Composite items.

  Items: 'state' (pytree of arrays: params, opt_state, rng ...), 'meta'
  (JSON: step, data position, anything small), 'config' (JSON, as metadata).
  """

  def __init__(self, directory: str | Path, *, max_to_keep: int = 3,
               save_interval_steps: int = 1, async_save: bool = True):
    self.directory = Path(directory).absolute()
    self._mgr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            save_interval_steps=save_interval_steps,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        ),
    )

  def all_steps(self) -> list[int]:
    return sorted(self._mgr.all_steps())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: Any, meta: dict, config: dict | None = None,
           force: bool = False) -> bool:
    items = {
        "state": ocp.args.StandardSave(state),
        "meta": ocp.args.JsonSave(meta),
    }
    if config is not None:
      items["config"] = ocp.args.JsonSave(json.loads(json.dumps(config, default=str)))
    return self._mgr.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, abstract_state: Any, step: int | None = None
              ) -> tuple[int, Any, dict] | None:
    """Restores the given (default: latest good) step into abstract_state.

    Returns (step, state, meta), or None when the directory has no
    checkpoint at all. Falls back to older steps when one is corrupt.
    """
    steps = self.all_steps() if step is None else [step]
    if not steps:
      return None
    errors = []
    for s in reversed(steps):
      try:
        out = self._mgr.restore(
            s, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                meta=ocp.args.JsonRestore()))
        if errors:
          log.warning("restored step %d after skipping unreadable steps: %s",
                      s, "; ".join(errors))
        return s, out["state"], dict(out["meta"])
      except Exception as e:  # noqa: BLE001 -- any failure means "unusable".
        msg = f"step {s}: {type(e).__name__}: {str(e)[:300]}"
        log.warning("checkpoint %s is unreadable (%s); trying an older one",
                    self.directory / str(s), msg)
        errors.append(msg)
    raise CheckpointError(
        f"{self.directory} holds checkpoints {steps} but none could be "
        f"restored:\n  " + "\n  ".join(errors) + "\nMove the directory away "
        "to start fresh, or fix/restore the files; refusing to overwrite it.")

  def wait(self) -> None:
    self._mgr.wait_until_finished()

  def close(self) -> None:
    self._mgr.wait_until_finished()
    self._mgr.close()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a tree of arrays."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree)


def save_params(path: str | Path, params: Any) -> None:
  """Params-only export (hands a policy/prover/verifier to the next stage)."""
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(Path(path).absolute(), params, force=True)
  ckptr.wait_until_finished()


def load_params(path: str | Path, abstract_params: Any) -> Any:
  path = Path(path).absolute()
  if not path.exists():
    raise CheckpointError(f"no params checkpoint at {path}: run the stage that "
                          "writes it first, or fix the path")
  try:
    return ocp.StandardCheckpointer().restore(path, abstract_params)
  except Exception as e:  # noqa: BLE001
    raise CheckpointError(f"params checkpoint {path} is unreadable: {e}") from e
