"""Orbax checkpoints: train state, data position, RNG and config metadata.

One `Checkpointer` per training stage directory. Restoring always starts from
an abstract, sharded target. A step that fails to restore (a truncated or
corrupt file) is skipped with a warning and the previous step is tried; the
damaged step directories are then moved aside to `<directory>/../corrupt/
<step>-<time>` (never deleted) so training can save those steps again. If a
directory holds checkpoints but none restores, `CheckpointError` is raised:
a run never silently starts fresh over the user's work. A checkpoint whose
arrays have other shapes than the model (a changed model config) raises
`CheckpointShapeError` naming the leaves, not a corruption warning.
"""

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """A checkpoint directory that cannot be used."""


class CheckpointShapeError(CheckpointError):
  """A readable checkpoint whose tree or shapes differ from the target."""


def _path_str(path) -> str:
  """Dotted leaf path; a namedtuple field (GetAttrKey) reads like a dict key,
  as orbax's metadata stores it."""
  def part(k):
    for attr in ("key", "idx", "name"):
      if hasattr(k, attr):
        return str(getattr(k, attr))
    return str(k)
  return ".".join(part(k) for k in path)


def _leaf_shapes(tree: Any) -> dict[str, tuple]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_path_str(p): tuple(getattr(x, "shape", ())) for p, x in leaves}


def shape_mismatches(stored: Any, target: Any) -> list[str]:
  """"leaf: stored shape -> target shape" lines (missing/extra leaves too)."""
  a, b = _leaf_shapes(stored), _leaf_shapes(target)
  out = []
  # Params first: they name what changed in the model most directly.
  keys = sorted(set(a) | set(b), key=lambda k: (not k.startswith("params"), k))
  for key in keys:
    if key not in b:
      out.append(f"{key}: {a[key]} -> <not in the model>")
    elif key not in a:
      out.append(f"{key}: <not in the checkpoint> -> {b[key]}")
    elif a[key] != b[key]:
      out.append(f"{key}: {a[key]} -> {b[key]}")
  return out


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
      items["config"] = ocp.args.JsonSave(
          json.loads(json.dumps(config, default=str)))
    return self._mgr.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, abstract_state: Any, step: int | None = None
              ) -> tuple[int, Any, dict] | None:
    """Restores the given (default: latest good) step into abstract_state.

    Returns (step, state, meta), or None when the directory has no
    checkpoint at all. Falls back to older steps when one is corrupt and
    then moves the corrupt ones aside (see `quarantine`).

    Raises:
      CheckpointShapeError: a step's arrays do not match abstract_state's
        tree or shapes (the model changed), naming the leaves.
      CheckpointError: there are checkpoints but none restores.
    """
    steps = self.all_steps() if step is None else [step]
    if not steps:
      return None
    errors, bad = [], []
    for s in reversed(steps):
      self._check_shapes(s, abstract_state)
      try:
        out = self._mgr.restore(
            s, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                meta=ocp.args.JsonRestore()))
      except Exception as e:  # noqa: BLE001 -- any failure means "unusable".
        msg = f"step {s}: {type(e).__name__}: {str(e)[:300]}"
        log.warning("checkpoint %s is unreadable (%s); trying an older one",
                    self.directory / str(s), msg)
        errors.append(msg)
        bad.append(s)
        continue
      if errors:
        log.warning("restored step %d after skipping unreadable steps: %s",
                    s, "; ".join(errors))
        if step is None:
          for b in bad:
            self.quarantine(b)
      return s, out["state"], dict(out["meta"])
    raise CheckpointError(
        f"{self.directory} holds checkpoints {steps} but none could be "
        f"restored:\n  " + "\n  ".join(errors) + "\nMove the directory away "
        "to start fresh, or fix/restore the files; refusing to overwrite it.")

  def _check_shapes(self, step: int, abstract_state: Any) -> None:
    try:
      meta = ocp.StandardCheckpointer().metadata(
          self.directory / str(step) / "state")
      meta = getattr(meta, "item_metadata", meta)
      stored = getattr(meta, "tree", meta)
    except Exception:  # noqa: BLE001 -- unreadable: restore will say so.
      return
    if not stored:
      return
    diffs = shape_mismatches(stored, abstract_state)
    if diffs:
      raise CheckpointShapeError(
          f"checkpoint {self.directory / str(step)} does not fit this model "
          f"(shape mismatch; {len(diffs)} leaves, checkpoint -> model):\n  "
          + "\n  ".join(diffs[:20])
          + ("\n  ..." if len(diffs) > 20 else "")
          + "\nThe model config changed since it was saved: restore the old "
          "model settings, or use a new --workdir (or delete "
          f"{self.directory}) to train the new model from scratch.")

  def read_config(self, step: int | None = None
                  ) -> tuple[int, dict] | None:
    """(step, stored config) of the newest (or given) step that has one."""
    steps = self.all_steps() if step is None else [step]
    for s in reversed(steps):
      try:
        out = self._mgr.restore(
            s, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
      except Exception:  # noqa: BLE001 -- no config item, or unreadable.
        continue
      return s, dict(out["config"])
    return None

  def quarantine(self, step: int) -> Path | None:
    """Moves step's directory to `<directory>/../corrupt/<step>-<time>`.

    Never deletes: the files stay for inspection. Only process 0 moves
    (all processes then reload the step list). Returns the new path.
    """
    src = self.directory / str(step)
    dst = None
    if jax.process_index() == 0 and src.exists():
      root = self.directory.parent / "corrupt"
      root.mkdir(parents=True, exist_ok=True)
      dst = root / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
      n = 0
      while dst.exists():
        n += 1
        dst = root / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
      shutil.move(str(src), str(dst))
      log.warning("moved unreadable checkpoint %s aside to %s (not deleted)",
                  src, dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"quarantine-{step}")
    self._mgr.reload()
    return dst

  def wait(self) -> None:
    self._mgr.wait_until_finished()

  def close(self) -> None:
    self._mgr.wait_until_finished()
    self._mgr.close()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a tree of arrays."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(
          x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree)


def save_params(path: str | Path, params: Any) -> None:
  """Params-only export (hands a policy/prover/verifier to the next stage)."""
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(Path(path).absolute(), params, force=True)
  ckptr.wait_until_finished()


def load_params_tree(path: str | Path, abstract_params: Any) -> Any:
  path = Path(path).absolute()
  if not path.exists():
    raise CheckpointError(f"no params checkpoint at {path}: run the stage that "
                          "writes it first, or fix the path")
  try:
    return ocp.StandardCheckpointer().restore(path, abstract_params)
  except Exception as e:  # noqa: BLE001
    raise CheckpointError(f"params checkpoint {path} is unreadable: {e}") from e
