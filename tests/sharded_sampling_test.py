"""Sampling on a mesh of the 8 fake devices: rows split, results unchanged."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pav_jax import config as config_lib
from pav_jax import kv_cache
from pav_jax import sampler as sampler_lib
from pav_jax import sharding
from pav_jax import transformer as tr

EOS, STEP, PAD = 1, 2, 0
MESHES = [{"data": 8}, {"data": 2, "fsdp": 2, "tensor": 2}]


@pytest.fixture(scope="module")
def model():
  cfg = config_lib.ModelConfig.tiny(vocab_size=48).replace(
      num_layers=2, embed_dim=32, hidden_dim=64, num_heads=4, num_kv_heads=2,
      head_dim=8, sliding_window=8)
  graphdef, params = tr.split(tr.create(cfg, seed=3))
  return cfg, graphdef, params


def _sampler(model, mesh=None):
  cfg, graphdef, _ = model
  return sampler_lib.Sampler(
      graphdef, cfg, cache_size=32, eos_id=EOS, step_id=STEP, pad_id=PAD,
      buckets=(8,), mesh=mesh,
      sampling=sampler_lib.SamplingConfig(temperature=1.0))


def _prompts(n, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(3, 48, int(rng.integers(1, 8))).tolist()
          for _ in range(n)]


def _rows_per_device(x) -> set[int]:
  """Distinct row counts of the addressable shards (one per device)."""
  assert len(x.addressable_shards) == 8
  return {s.data.shape[0] for s in x.addressable_shards}


def _assert_rows_split(tree, rows, mesh_shape):
  n = sharding.batch_devices(sharding.make_mesh(mesh_shape))
  for path, x in jax.tree_util.tree_leaves_with_path(tree):
    if x.ndim:
      assert x.shape[0] == rows, path
      assert _rows_per_device(x) == {rows // n}, path


@pytest.mark.parametrize("mesh_shape", MESHES)
def test_generate_splits_rows_and_matches_one_device(model, mesh_shape):
  cfg, _, params = model
  prompts = _prompts(16)
  key = jax.random.key(4)
  ref = _sampler(model).generate(params, prompts, key, max_new_tokens=6)
  mesh = sharding.make_mesh(mesh_shape)
  s = _sampler(model, mesh)
  out = s.generate(params, prompts, key, max_new_tokens=6)
  _assert_rows_split(out.tokens_BN, 16, mesh_shape)
  _assert_rows_split(out.state, 16, mesh_shape)
  k = out.state.cache["layers"]["layer_0"]["k"]
  heads = {s.data.shape[1] for s in k.addressable_shards}
  assert heads == {cfg.num_kv_heads // mesh_shape.get("tensor", 1)}
  # Params follow the training rules (embed over tensor x fsdp when set).
  emb = s.place_params(params)["embed_VD"]
  assert emb.sharding.spec == sharding.spec(
      ("vocab", "embed"), emb.shape, mesh)
  np.testing.assert_array_equal(out.tokens_BN, ref.tokens_BN)
  np.testing.assert_allclose(out.logprobs_BN, ref.logprobs_BN, atol=1e-5)
  np.testing.assert_array_equal(out.stop_B, ref.stop_B)


def test_entered_mesh_is_used_and_fork_select_keep_rows(model):
  _, _, params = model
  mesh_shape = {"data": 2, "fsdp": 2, "tensor": 2}
  prompts = _prompts(4)
  key = jax.random.key(5)
  ref_s = _sampler(model)
  ref = ref_s.prefill(params, prompts, key)
  ref_f = sampler_lib.fork(ref, 4)
  ref_sel = sampler_lib.select_rows(ref_f, jnp.arange(15, -1, -1))
  ref_out = ref_s.decode(params, ref_sel, 5)
  with jax.set_mesh(sharding.make_mesh(mesh_shape)):
    s = _sampler(model)  # no mesh argument: the entered one
    st = s.prefill(params, prompts, key)
    _assert_rows_split(st, 4, mesh_shape)
    forked = sampler_lib.fork(st, 4)
    _assert_rows_split(forked, 16, mesh_shape)
    sel = sampler_lib.select_rows(forked, jnp.arange(15, -1, -1))
    _assert_rows_split(sel, 16, mesh_shape)
    out = s.decode(params, sel, 5)
    _assert_rows_split(out.tokens_BN, 16, mesh_shape)
    # The sources survive the donated decode (own buffers), even n=1 forks.
    again = s.decode(params, sampler_lib.fork(forked, 1, forked.key_B), 5)
    assert int(forked.cache["index"]) == int(st.cache["index"])
    np.testing.assert_array_equal(again.tokens_BN[::-1], out.tokens_BN)
  np.testing.assert_array_equal(out.tokens_BN, ref_out.tokens_BN)
  np.testing.assert_allclose(out.logprobs_BN, ref_out.logprobs_BN, atol=1e-5)


def test_indivisible_batch_is_replicated_and_correct(model):
  _, _, params = model
  prompts = _prompts(3)
  key = jax.random.key(6)
  ref = _sampler(model).generate(params, prompts, key, max_new_tokens=4)
  s = _sampler(model, sharding.make_mesh({"data": 8}))
  assert s.row_multiple() == 8
  out = s.generate(params, prompts, key, max_new_tokens=4)
  assert _rows_per_device(out.tokens_BN) == {3}
  np.testing.assert_array_equal(out.tokens_BN, ref.tokens_BN)


def test_decode_compiles_once_per_bucket_on_a_mesh(model):
  _, _, params = model
  s = _sampler(model, sharding.make_mesh({"data": 8}))
  for i in range(3):
    s.generate(params, _prompts(8, seed=i), jax.random.key(i),
               max_new_tokens=4)
  assert s.trace_counts == {"prefill": 1, "decode": 1}
  # A per-call cache size is one more compilation of each, not an error.
  s.generate(params, _prompts(8), jax.random.key(0), 4, cache_size=16)
  assert s.trace_counts == {"prefill": 2, "decode": 2}


def test_kv_cache_create_fork_take_sharded(model):
  cfg, _, _ = model
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  cache = kv_cache.create(cfg, 8, 16, mesh=mesh)
  k = cache["layers"]["layer_1"]["v"]
  assert k.shape == (8, 2, 16, 8)  # heads-major [B, K, S, H]
  # Each device allocates a quarter of the rows and half of the KV heads.
  assert {s.data.shape for s in k.addressable_shards} == {(2, 1, 16, 8)}
  assert cache["index"].sharding.is_fully_replicated
  forked = kv_cache.fork(cache, 2)
  assert {s.data.shape for s in
          forked["layers"]["layer_1"]["v"].addressable_shards} == {
              (4, 1, 16, 8)}
  taken = kv_cache.take(forked, jnp.arange(4))
  assert {s.data.shape[0] for s in taken["pos"].addressable_shards} == {1}
  # Unsharded: the same values as the single-device cache.
  plain = kv_cache.create(cfg, 8, 16)
  jax.tree.map(np.testing.assert_array_equal, plain, cache)
