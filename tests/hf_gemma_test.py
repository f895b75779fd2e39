"""Parity and round-trip tests of the HF Gemma-2 checkpoint bridge.

The fixture (tests/fixtures/gemma2_tiny, made by tools/make_gemma2_fixture.py)
holds a random tiny Gemma-2 in the HF layout and HF's eager-attention logits;
these tests never import torch or transformers.
"""

import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx

from pav_jax import hf_gemma
from pav_jax import transformer

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "gemma2_tiny")
TOL_FP32 = 1e-4


@functools.cache
def _reference() -> dict[str, np.ndarray]:
  with np.load(os.path.join(FIXTURE, "reference_logits.npz")) as z:
    return dict(z)


@functools.cache
def _model(dtype: str = "float32"):
  return hf_gemma.load_model(FIXTURE, dtype=dtype)


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, params, tokens_BT, pos_BT, valid_BT, cache=None):
  return transformer.forward(graphdef, params, tokens_BT, pos_BT, valid_BT,
                             cache)


def _full_logits(graphdef, params, tokens_BT, valid_BT) -> np.ndarray:
  pos_BT = transformer.positions_from_mask(jnp.asarray(valid_BT))
  logits_BTV, _ = _forward(graphdef, params, tokens_BT, pos_BT, valid_BT)
  return np.asarray(logits_BTV)


def _decode_logits(cfg, graphdef, params, tokens_BT, valid_BT, prefill):
  """Prefill `prefill` tokens, then feed the rest one token at a time."""
  b, t = tokens_BT.shape
  pos_BT = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t))
  cache = transformer.init_cache(cfg, b, t + 8)
  out_BTV, cache = _forward(graphdef, params, tokens_BT[:, :prefill],
                            pos_BT[:, :prefill], valid_BT[:, :prefill], cache)
  outs = [np.asarray(out_BTV)]
  for i in range(prefill, t):
    s = slice(i, i + 1)
    out_BTV, cache = _forward(graphdef, params, tokens_BT[:, s], pos_BT[:, s],
                              valid_BT[:, s], cache)
    outs.append(np.asarray(out_BTV))
  return np.concatenate(outs, axis=1)


def _flat(params) -> dict[str, np.ndarray]:
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves}


def _assert_bit_exact(a, b) -> None:
  fa, fb = _flat(a), _flat(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    assert fa[k].dtype == fb[k].dtype, k
    assert fa[k].shape == fb[k].shape, k
    assert fa[k].tobytes() == fb[k].tobytes(), k


# Parity with HF ---------------------------------------------------------------


def test_config_maps_every_field():
  cfg, _, _ = _model()
  assert (cfg.vocab_size, cfg.num_layers, cfg.embed_dim, cfg.hidden_dim) == (
      256, 4, 48, 96)
  assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (4, 2, 16)
  assert cfg.query_pre_attn_scalar == 24
  assert cfg.attn_logits_soft_cap == 5.0 and cfg.final_logit_soft_cap == 8.0
  assert cfg.sliding_window == 8 and cfg.rope_base == 10_000.0
  assert cfg.norm_eps == 1e-6 and cfg.max_seq_len == 64


def test_full_forward_matches_hf():
  ref = _reference()
  _, graphdef, params = _model()
  tokens_BT = ref["tokens"]
  got_BTV = _full_logits(graphdef, params, tokens_BT, np.ones_like(tokens_BT,
                                                                   bool))
  err = np.abs(got_BTV - ref["logits"]).max()
  assert err < TOL_FP32, f"max |logit diff| vs HF = {err}"


def test_right_padded_batch_matches_hf():
  ref = _reference()
  _, graphdef, params = _model()
  valid_BT = ref["pad_valid"]
  got_BTV = _full_logits(graphdef, params, ref["pad_tokens"], valid_BT)
  got_BTV = np.where(valid_BT[..., None], got_BTV, 0.0)
  err = np.abs(got_BTV - ref["pad_logits"]).max()
  assert err < TOL_FP32, f"max |logit diff| vs HF = {err}"


@pytest.mark.parametrize("case", ["full", "ragged"])
def test_cached_decode_matches_hf(case):
  """Prefill 6 tokens (< window), then decode past the window, one by one."""
  ref = _reference()
  cfg, graphdef, params = _model()
  if case == "full":
    tokens_BT, want_BTV = ref["tokens"], ref["logits"]
    valid_BT = np.ones_like(tokens_BT, bool)
  else:  # Right-padded rows stop decoding at different steps.
    tokens_BT, want_BTV = ref["pad_tokens"], ref["pad_logits"]
    valid_BT = ref["pad_valid"]
  got_BTV = _decode_logits(cfg, graphdef, params, tokens_BT, valid_BT, 6)
  got_BTV = np.where(valid_BT[..., None], got_BTV, 0.0)
  err = np.abs(got_BTV - want_BTV).max()
  assert err < TOL_FP32, f"max |decode logit diff| vs HF = {err}"


def test_bf16_load_is_the_rounded_fp32_load():
  ref = _reference()
  _, _, params32 = _model()
  cfg16, graphdef, params16 = _model("bfloat16")
  assert cfg16.dtype == "bfloat16"
  rounded = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params32)
  _assert_bit_exact(params16, rounded)
  tokens_BT = ref["tokens"]
  got_BTV = _full_logits(graphdef, params16, tokens_BT,
                         np.ones_like(tokens_BT, bool))
  assert got_BTV.dtype == np.float32
  # bf16 compute through 4 layers: agreement at the level of bf16 precision.
  err = np.abs(got_BTV - ref["logits"]).max()
  assert err < 0.5, err
  assert np.mean(got_BTV.argmax(-1) == ref["logits"].argmax(-1)) > 0.9


# Export ----------------------------------------------------------------------


def test_import_export_import_is_lossless(tmp_path):
  cfg, _, params = _model()
  out1, out2 = str(tmp_path / "a"), str(tmp_path / "b")
  assert hf_gemma.save_model(out1, cfg, params) == ["model.safetensors"]
  cfg1, _, params1 = hf_gemma.load_model(out1)
  assert cfg1 == cfg
  _assert_bit_exact(params1, params)
  hf_gemma.save_model(out2, cfg1, params1)
  cfg_a = hf_gemma.read_hf_config(out1)
  assert hf_gemma.read_hf_config(out2) == cfg_a
  # Every field the fixture's (transformers-written) config.json shares with
  # ours has the same value.
  orig = hf_gemma.read_hf_config(FIXTURE)
  skip = {"dtype", "torch_dtype", "transformers_version", "initializer_range",
          "use_cache", "use_bidirectional_attention"}
  for key in sorted(set(orig) & set(cfg_a) - skip):
    assert orig[key] == cfg_a[key], key
  # The HF tensors themselves round-trip bit for bit.
  a = safetensors.numpy.load_file(os.path.join(FIXTURE, "model.safetensors"))
  b = safetensors.numpy.load_file(os.path.join(out1, "model.safetensors"))
  assert a.keys() == b.keys()
  for k in a:
    assert a[k].tobytes() == b[k].tobytes(), k


def test_sharded_export_and_load(tmp_path):
  cfg, _, params = _model()
  out = str(tmp_path / "sharded")
  names = hf_gemma.save_model(out, cfg, params, max_shard_bytes=64 * 1024)
  assert len(names) > 2
  assert all(os.path.exists(os.path.join(out, n)) for n in names)
  assert not os.path.exists(os.path.join(out, "model.safetensors"))
  with open(os.path.join(out, hf_gemma.INDEX_FILE)) as f:
    assert set(json.load(f)["weight_map"].values()) == set(names)
  cfg2, _, params2 = hf_gemma.load_model(out)
  assert cfg2 == cfg
  _assert_bit_exact(params2, params)


def test_bf16_export_roundtrip(tmp_path):
  cfg, _, params16 = _model("bfloat16")
  out = str(tmp_path / "bf16")
  hf_gemma.save_model(out, cfg, params16)
  assert hf_gemma.read_hf_config(out)["torch_dtype"] == "bfloat16"
  st = safetensors.numpy.load_file(os.path.join(out, "model.safetensors"))
  assert {x.dtype for x in st.values()} == {np.dtype(ml_dtypes.bfloat16)}
  _, _, again = hf_gemma.load_model(out, dtype="bfloat16")
  _assert_bit_exact(again, params16)


def test_orbax_copy_roundtrip(tmp_path):
  """The engine-side copy written by tools/convert_hf_gemma.py."""
  cfg, _, params = _model()
  hf_gemma.save_orbax(str(tmp_path / "orbax"), cfg, params)
  cfg2, _, params2 = hf_gemma.load_orbax(str(tmp_path / "orbax"))
  assert cfg2 == cfg
  _assert_bit_exact(params2, params)
  cfg16, _, params16 = hf_gemma.load_orbax(str(tmp_path / "orbax"),
                                           "bfloat16")
  assert cfg16.dtype == "bfloat16"
  _assert_bit_exact(params16, _model("bfloat16")[2])


def test_load_onto_sharding():
  devices = jax.devices()
  sharding = jax.sharding.SingleDeviceSharding(devices[-1])
  _, _, params = hf_gemma.load_model(FIXTURE, shardings=sharding)
  assert all(x.sharding == sharding for x in jax.tree.leaves(params))


# Errors ----------------------------------------------------------------------


def _copy_fixture(tmp_path) -> str:
  path = str(tmp_path / "ckpt")
  shutil.copytree(FIXTURE, path)
  return path


def _edit_config(path: str, **changes) -> None:
  fname = os.path.join(path, "config.json")
  with open(fname) as f:
    cfg = json.load(f)
  cfg.update(changes)
  with open(fname, "w") as f:
    json.dump(cfg, f)


def _drop_config_key(path: str, key: str) -> None:
  fname = os.path.join(path, "config.json")
  with open(fname) as f:
    cfg = json.load(f)
  del cfg[key]
  with open(fname, "w") as f:
    json.dump(cfg, f)


def _edit_tensors(path: str, fn) -> None:
  fname = os.path.join(path, "model.safetensors")
  tensors = safetensors.numpy.load_file(fname)
  fn(tensors)
  safetensors.numpy.save_file(tensors, fname)


def _drop_tensor(path):
  _edit_tensors(
      path, lambda t: t.pop("model.layers.2.mlp.up_proj.weight"))


def _wrong_shape(path):
  def fn(t):
    t["model.layers.1.self_attn.k_proj.weight"] = np.zeros((16, 48),
                                                           np.float32)
  _edit_tensors(path, fn)


def _untied_head(path):
  def fn(t):
    t["lm_head.weight"] = t["model.embed_tokens.weight"] + 1.0
  _edit_tensors(path, fn)
  _edit_config(path, tie_word_embeddings=False)


def _tied_false_no_head(path):
  _edit_config(path, tie_word_embeddings=False)


def _truncate(path):
  fname = os.path.join(path, "model.safetensors")
  with open(fname, "rb") as f:
    data = f.read()
  with open(fname, "wb") as f:
    f.write(data[: len(data) // 2])


def _garbage(path):
  with open(os.path.join(path, "model.safetensors"), "wb") as f:
    f.write(b"\x00\x01not a safetensors file" * 7)


def _bad_json(path):
  with open(os.path.join(path, "config.json"), "w") as f:
    f.write("{not json")


def _missing(name):
  return lambda path: os.remove(os.path.join(path, name))


def _missing_shard(path):
  cfg, _, params = _model()
  shutil.rmtree(path)
  names = hf_gemma.save_model(path, cfg, params, max_shard_bytes=64 * 1024)
  os.remove(os.path.join(path, names[1]))


_ERROR_CASES = {
    "missing_tensor": (_drop_tensor,
                       r"missing.*model\.layers\.2\.mlp\.up_proj\.weight"),
    "wrong_shape": (_wrong_shape,
                    r"k_proj\.weight.*shape \[16, 48\], expected \[32, 48\]"),
    "model_type": (lambda p: _edit_config(p, model_type="llama"),
                   r"model_type='llama'.*gemma2"),
    "activation": (lambda p: _edit_config(p, hidden_activation="gelu"),
                   r"hidden_activation='gelu'"),
    "rope_scaling": (lambda p: _edit_config(
        p, rope_scaling={"type": "linear", "factor": 2.0}), r"rope_scaling"),
    "rope_type": (lambda p: _edit_config(
        p, rope_parameters={"rope_type": "yarn", "rope_theta": 1e4}),
                  r"rope_type 'default'"),
    "layer_types": (
        lambda p: _edit_config(p, layer_types=["full_attention"] * 4),
        r"layer_types"),
    "untied_head": (_untied_head, r"lm_head\.weight differs"),
    "tied_false_no_head": (_tied_false_no_head, r"tie_word_embeddings"),
    "more_layers_in_config": (
        lambda p: _edit_config(p, num_hidden_layers=5, layer_types=None),
        r"missing.*layers\.4"),
    "fewer_layers_in_config": (
        lambda p: _edit_config(p, num_hidden_layers=3,
                               layer_types=["sliding_attention",
                                            "full_attention",
                                            "sliding_attention"]),
        r"unexpected.*layers\.3"),
    "missing_config_key": (lambda p: _drop_config_key(p, "head_dim"),
                           r"lacks required key\(s\) \['head_dim'\]"),
    "missing_config": (_missing("config.json"), r"config\.json not found"),
    "bad_config": (_bad_json, r"config\.json is not valid JSON"),
    "missing_weights": (_missing("model.safetensors"),
                        r"expected model\.safetensors"),
    "truncated": (_truncate, r"model\.safetensors is not a readable"),
    "garbage": (_garbage, r"model\.safetensors is not a readable"),
    "missing_shard": (_missing_shard,
                      r"shard .*model-00002-of-\d+\.safetensors.* missing"),
}


@pytest.mark.parametrize("case", sorted(_ERROR_CASES))
def test_bad_checkpoints_raise_clear_errors(tmp_path, case):
  corrupt, pattern = _ERROR_CASES[case]
  path = _copy_fixture(tmp_path)
  corrupt(path)
  with pytest.raises(hf_gemma.HFCheckpointError, match=pattern):
    hf_gemma.load_model(path)


def test_tied_head_copy_is_accepted(tmp_path):
  """Some exports store lm_head.weight even though it equals the embedding."""
  path = _copy_fixture(tmp_path)

  def fn(t):
    t["lm_head.weight"] = t["model.embed_tokens.weight"].copy()
  _edit_tensors(path, fn)
  _edit_config(path, tie_word_embeddings=False)
  _, _, params = hf_gemma.load_model(path)
  _assert_bit_exact(params, _model()[2])


def test_absent_optional_keys_take_hf_defaults():
  hf = hf_gemma.read_hf_config(FIXTURE)
  for key in ("query_pre_attn_scalar", "attn_logit_softcapping",
              "sliding_window", "layer_types"):
    del hf[key]
  cfg = hf_gemma.config_from_hf(hf)
  assert cfg.query_pre_attn_scalar == 256
  assert cfg.attn_logits_soft_cap == 50.0 and cfg.sliding_window == 4096
  hf["final_logit_softcapping"] = None  # Explicit null: off.
  assert hf_gemma.config_from_hf(hf).final_logit_soft_cap is None


def test_not_a_directory(tmp_path):
  with pytest.raises(hf_gemma.HFCheckpointError, match="not a directory"):
    hf_gemma.load_model(str(tmp_path / "nope"))


def test_export_rejects_params_of_another_config(tmp_path):
  cfg, _, params = _model()
  with pytest.raises(hf_gemma.HFCheckpointError, match=r"q_DNH.*shape"):
    hf_gemma.save_model(str(tmp_path / "x"), cfg.replace(head_dim=8), params)


@pytest.mark.parametrize("mesh_shape,dtype", [
    ({"data": 2, "fsdp": 2, "tensor": 2}, "float32"),
    ({"fsdp": 8}, "bfloat16"),
])
def test_load_straight_to_the_mesh_shard_by_shard(mesh_shape, dtype):
  from pav_jax import sharding  # noqa: PLC0415 (keeps the header light)
  cfg, graphdef, ref = _model(dtype)
  mesh = sharding.make_mesh(mesh_shape)
  model = nnx.eval_shape(lambda: transformer.create(cfg))
  param_sh = sharding.param_shardings(sharding.logical_axes(model), ref, mesh)
  with jax.set_mesh(mesh):
    assert hf_gemma.mesh_shardings(cfg) == param_sh
  params = hf_gemma.load_hf_params(FIXTURE, cfg, dtype, shardings=param_sh)
  jax.tree.map(lambda x, s: x.sharding == s or pytest.fail(str(s)),
               params, param_sh)
  _assert_bit_exact(params, ref)
  # Bytes each device holds: the sum of its addressable shards.
  per_device: dict = {}
  for x in jax.tree.leaves(params):
    for shard in x.addressable_shards:
      per_device[shard.device] = (per_device.get(shard.device, 0)
                                  + shard.data.nbytes)
  total = sum(x.nbytes for x in jax.tree.leaves(params))
  budget = total // 3  # the full params would not fit one device
  assert len(per_device) == 8
  assert max(per_device.values()) <= budget, (per_device, total)
  if dtype == "float32":  # (bf16 sums in another order differ by ~0.1)
    tokens = jnp.asarray([[2, 5, 9, 11]])
    valid = jnp.ones_like(tokens, bool)
    np.testing.assert_allclose(
        _full_logits(graphdef, params, tokens, valid),
        _full_logits(graphdef, ref, tokens, valid), atol=1e-5)
