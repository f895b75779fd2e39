"""Tests for pav_jax.train_policy: initial params from an HF checkpoint."""

import os

import jax
import numpy as np

from pav_jax import hf_gemma
from pav_jax import sharding
from pav_jax import train_policy

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "gemma2_tiny")


def test_load_init_params_hf_lands_sharded_on_the_mesh():
  cfg = hf_gemma.config_from_hf(hf_gemma.read_hf_config(FIXTURE), "float32")
  want = hf_gemma.load_hf_params(FIXTURE, cfg, "float32")
  mesh = sharding.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
  with jax.set_mesh(mesh):
    got = train_policy.load_init_params(FIXTURE, cfg)
  leaves = jax.tree.leaves(got)
  # Bit-exact with the unsharded load, and really split over fsdp.
  for a, b in zip(leaves, jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert any(len({s.data.shape for s in x.addressable_shards}) == 1
             and x.addressable_shards[0].data.size < x.size for x in leaves)
  assert all(len(x.sharding.device_set) == 8 for x in leaves)


def test_load_init_params_orbax_dir_restores_under_an_entered_mesh(tmp_path):
  from pav_jax import checkpoint
  from pav_jax import config as config_lib
  from pav_jax import transformer
  cfg = config_lib.PRESETS["tiny"]().replace(vocab_size=64)
  _, params = transformer.split(transformer.create(cfg, seed=3))
  checkpoint.save_params(tmp_path / "params", params)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
  with jax.set_mesh(mesh):  # failed with "AbstractMesh" before
    got = train_policy.load_init_params(str(tmp_path / "params"), cfg)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert all(len(x.sharding.device_set) == 8 for x in jax.tree.leaves(got))
