"""Run identity: compare what a run was made from with what it is given now.

Pure helpers (no JAX state, no I/O beyond reading the file being hashed) used
on resume and skip: a checkpoint, a finished stage or a labelled set records
the settings and input hashes it was made from; a rerun compares them with
its own and stops, listing every difference, instead of silently mixing.

    diffs = diff(stored_config, config)   # ["sft.steps: 10 -> 20", ...]
    check(stored, wanted, what="sft checkpoints in runs/x/sft",
          how_to_fix="use a new --workdir, or delete runs/x/sft")
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

_MISSING = "<absent>"


class IdentityMismatchError(ValueError):
  """Stored and requested identities differ (see the message for keys)."""

  def __init__(self, message: str, diffs: list[str]):
    super().__init__(message)
    self.diffs = diffs


def normalize(tree: Any) -> Any:
  """A JSON round trip: tuples become lists, odd leaves become strings."""
  return json.loads(json.dumps(tree, default=str, sort_keys=True))


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested dicts -> {"a.b.c": leaf}; an empty dict is kept as a leaf."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping) and value:
      out.update(flatten(value, name + "."))
    else:
      out[name] = value
  return out


def _ignored(key: str, ignore: Iterable[str]) -> bool:
  return any(fnmatch.fnmatchcase(key, pattern) for pattern in ignore)


def diff(old: Mapping[str, Any], new: Mapping[str, Any],
         ignore: Iterable[str] = (),
         defaults: Mapping[str, Any] | None = None) -> list[str]:
  """Differences as sorted "dotted.key: old -> new" lines.

  Args:
    old: The stored identity (nested dicts).
    new: The requested identity.
    ignore: fnmatch patterns on dotted keys to leave out, e.g. "*.log_every".
    defaults: nested dicts of default values. A key absent on one side takes
      its default there, so a key added to pav_jax later, and left at its
      default, does not invalidate what an older version made; set to
      anything else, it does.
  """
  ignore = tuple(ignore)
  a, b = flatten(normalize(dict(old))), flatten(normalize(dict(new)))
  fill = flatten(normalize(dict(defaults or {})))
  lines = []
  for key in sorted(set(a) | set(b)):
    if _ignored(key, ignore):
      continue
    va = a.get(key, fill.get(key, _MISSING))
    vb = b.get(key, fill.get(key, _MISSING))
    if va != vb:
      lines.append(f"{key}: {_show(va)} -> {_show(vb)}")
  return lines


def _show(value: Any) -> str:
  return value if value is _MISSING else json.dumps(value)


def check(have: Mapping[str, Any], want: Mapping[str, Any], what: str,
          how_to_fix: str, ignore: Iterable[str] = (),
          defaults: Mapping[str, Any] | None = None) -> None:
  """Raises IdentityMismatchError listing `diff(have, want)`, if any.

  Args:
    have: What `what` was made with (stored).
    want: What this run asks for.
    what: Names the artefact, e.g. "checkpoints in runs/demo/sft".
    how_to_fix: The ways forward, e.g. "use a new --workdir, or delete ...".
    ignore, defaults: See `diff`.
  """
  diffs = diff(have, want, ignore, defaults)
  if diffs:
    raise IdentityMismatchError(
        f"{what} were made with different settings than this run "
        f"({len(diffs)} differ, stored -> now):\n  " + "\n  ".join(diffs)
        + f"\nRefusing to mix them. To proceed: {how_to_fix}.", diffs)


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
  """Hex sha256 of a file's bytes."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(chunk):
      h.update(block)
  return h.hexdigest()


def tree_sha256(tree: Any) -> str:
  """Content hash of a (nested dict/list) pytree of arrays.

  Covers every leaf's path, dtype, shape and bytes, so equal hashes mean
  bitwise-equal params. Device arrays are fetched to the host (call on
  fully addressable arrays, e.g. single-host or after a gather).
  """
  h = hashlib.sha256()

  def visit(node: Any, path: str) -> None:
    if isinstance(node, Mapping):
      for key in sorted(node, key=str):
        visit(node[key], f"{path}/{key}")
    elif isinstance(node, (list, tuple)):
      for i, item in enumerate(node):
        visit(item, f"{path}/{i}")
    else:
      arr = np.ascontiguousarray(np.asarray(node))
      h.update(f"{path}|{arr.dtype.str}|{arr.shape}|".encode())
      h.update(arr.tobytes())

  visit(tree, "")
  return h.hexdigest()
