"""Tests for pav_jax.identity: dotted diffs, checks, content hashes."""

import numpy as np
import pytest

from pav_jax import identity


def test_flatten_and_diff_list_dotted_keys_old_to_new():
  old = {"sft": {"steps": 10, "lr": 1e-3}, "task": {"knobs": {}}, "a": (1, 2)}
  new = {"sft": {"steps": 20, "lr": 1e-3}, "task": {"knobs": {"n": 3}},
         "a": [1, 2], "b": "x"}
  assert identity.flatten(old) == {"sft.steps": 10, "sft.lr": 1e-3,
                                   "task.knobs": {}, "a": (1, 2)}
  assert identity.diff(old, new) == [
      "b: <absent> -> \"x\"",
      "sft.steps: 10 -> 20",
      "task.knobs: {} -> <absent>",
      "task.knobs.n: <absent> -> 3",
  ]
  assert identity.diff(old, new, ignore=("sft.*", "task.*", "b")) == []
  assert identity.diff(old, old) == []


def test_check_raises_with_keys_and_how_to_fix():
  identity.check({"x": 1}, {"x": 1}, "things", "do nothing")
  with pytest.raises(identity.IdentityMismatchError) as e:
    identity.check({"sft": {"steps": 1}}, {"sft": {"steps": 2}},
                   "checkpoints in /w/sft", "use a new --workdir")
  msg = str(e.value)
  assert "checkpoints in /w/sft" in msg and "sft.steps: 1 -> 2" in msg
  assert "use a new --workdir" in msg
  assert e.value.diffs == ["sft.steps: 1 -> 2"]


def test_hashes(tmp_path):
  p = tmp_path / "f"
  p.write_bytes(b"abc")
  assert identity.file_sha256(p) == (
      "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
  a = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [np.zeros(2)]}
  same = {"b": [np.zeros(2)], "w": np.arange(6, dtype=np.float32).reshape(2, 3)}
  assert identity.tree_sha256(a) == identity.tree_sha256(same)
  changed = {"w": a["w"].copy(), "b": [np.zeros(2)]}
  changed["w"][1, 2] = np.nextafter(np.float32(5), np.float32(6))
  assert identity.tree_sha256(a) != identity.tree_sha256(changed)
  reshaped = {"w": a["w"].reshape(3, 2), "b": [np.zeros(2)]}
  assert identity.tree_sha256(a) != identity.tree_sha256(reshaped)
  renamed = {"v": a["w"], "b": [np.zeros(2)]}
  assert identity.tree_sha256(a) != identity.tree_sha256(renamed)


def test_key_added_later_at_its_default_is_not_a_difference():
  old = {"label": {"n_mc": 8}}  # made before label.first_pit existed
  defaults = {"label": {"n_mc": 8, "first_pit": "off"}}
  same = {"label": {"n_mc": 8, "first_pit": "off"}}
  assert identity.diff(old, same, defaults=defaults) == []
  assert identity.diff(old, same) == ['label.first_pit: <absent> -> "off"']
  other = {"label": {"n_mc": 8, "first_pit": "bisect"}}
  assert identity.diff(old, other, defaults=defaults) == [
      'label.first_pit: "off" -> "bisect"']
