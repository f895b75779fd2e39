"""The Gemma-2 accelerator configs, checked on CPU without any weights.

Parameter counts match the published Gemma-2 sizes; every parameter and
AdamW-state leaf gets a valid NamedSharding on 8-device meshes (the configs'
meshes scaled down, plus data=2,fsdp=2,tensor=2 and fsdp=8); the big matrices
are really sharded; and on the configs' full-size meshes (as abstract meshes)
params + optimizer state + grads fit the devices' memory. Everything is
abstract (`nnx.eval_shape` / `jax.eval_shape`), so the test is fast.
"""

import functools
import importlib.util
import math
from pathlib import Path
from types import ModuleType

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, AxisType, NamedSharding

from pav_jax import config as config_lib
from pav_jax import defaults
from pav_jax import sharding
from pav_jax import train_lib
from pav_jax import transformer

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

# Published parameter counts (HF safetensors metadata / keras-hub presets).
PUBLISHED = {
    "gemma2_2b": 2_614_341_888,
    "gemma2_9b": 9_241_705_984,
    "gemma2_27b": 27_227_128_320,
}
PEAK_LR = {"gemma2_2b": 5e-6, "gemma2_9b": 5e-6, "gemma2_27b": 5e-7}
PRESETS = tuple(PUBLISHED)
BIG = 1 << 20  # Leaves with at least this many elements must be sharded.


def load_config_module(preset: str) -> ModuleType:
  path = CONFIG_DIR / f"{preset}.py"
  spec = importlib.util.spec_from_file_location(f"configs_{preset}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@functools.cache
def abstract_model(preset: str):
  """(logical axes, abstract params, abstract AdamW state, optimizer)."""
  cfg = config_lib.PRESETS[preset]()
  model = nnx.eval_shape(lambda: transformer.create(cfg))
  axes = sharding.logical_axes(model)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  tx = train_lib.make_optimizer(train_lib.OptimConfig(
      learning_rate=PEAK_LR[preset], warmup_steps=500, total_steps=5000,
      weight_decay=0.0))
  opt_state = jax.eval_shape(tx.init, params)
  return axes, params, opt_state, tx


def scaled_to_8(mesh: dict[str, int]) -> dict[str, int]:
  """A config mesh shrunk to 8 devices, keeping tensor (<= 4) and fsdp."""
  tensor = min(mesh["tensor"], 4)
  fsdp = min(mesh["fsdp"], 8 // tensor)
  return {"data": 8 // (tensor * fsdp), "fsdp": fsdp, "tensor": tensor}


def meshes_8(preset: str) -> list[dict[str, int]]:
  out = [{"data": 2, "fsdp": 2, "tensor": 2},
         {"data": 1, "fsdp": 8, "tensor": 1}]
  for mesh, *_ in load_config_module(preset).HARDWARE.values():
    m = scaled_to_8(mesh)
    if m not in out:
      out.append(m)
  return out


def shard_elems(shape, spec, mesh_shape) -> int:
  """Elements of one shard; asserts every sharded dimension divides."""
  n = 1
  for i, dim in enumerate(shape):
    ax = spec[i] if i < len(spec) else None
    names = () if ax is None else (ax if isinstance(ax, tuple) else (ax,))
    parts = math.prod(mesh_shape[a] for a in names)
    assert dim % parts == 0, (shape, spec)
    n *= dim // parts
  return n


def bytes_per_device(tree, shardings, mesh_shape) -> tuple[int, int]:
  """(bytes on one device, total bytes) of abstract arrays and shardings."""
  per, total = 0, 0
  for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
    itemsize = np.dtype(x.dtype).itemsize
    per += shard_elems(x.shape, s.spec, mesh_shape) * itemsize
    total += math.prod(x.shape) * itemsize
  return per, total


@pytest.mark.parametrize("preset", PRESETS)
def test_param_count_matches_published(preset):
  _, params, _, _ = abstract_model(preset)
  n_abstract = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
  n_formula = config_lib.PRESETS[preset]().num_params()
  assert n_abstract == n_formula
  assert abs(n_abstract - PUBLISHED[preset]) <= 0.01 * PUBLISHED[preset]


@pytest.mark.parametrize("preset", PRESETS)
def test_shardings_valid_on_8_devices(preset):
  axes, params, opt_state, tx = abstract_model(preset)
  for mesh_shape in meshes_8(preset):
    mesh = sharding.make_mesh(mesh_shape)
    params_sh = sharding.param_shardings(axes, params, mesh)
    opt_sh = sharding.opt_state_shardings(tx, params, params_sh, mesh)
    assert (jax.tree.structure(opt_sh, is_leaf=lambda x: x is None)
            == jax.tree.structure(opt_state, is_leaf=lambda x: x is None))
    for tree, shs in ((params, params_sh), (opt_state, opt_sh)):
      for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shs)):
        assert isinstance(s, NamedSharding) and s.mesh is mesh
        shard_elems(x.shape, s.spec, mesh.shape)  # Divisibility.
        s.shard_shape(x.shape)  # JAX agrees.
    # The big matrices are sharded, not replicated.
    for path, x in jax.tree_util.tree_leaves_with_path(params):
      s = _get(params_sh, path)
      if math.prod(x.shape) >= BIG:
        assert any(a is not None for a in s.spec), (mesh_shape, path)
    emb = params_sh["embed_VD"].spec
    if mesh_shape["fsdp"] > 1:
      assert "fsdp" in tuple(emb), emb
    if mesh_shape["tensor"] > 1:
      assert params_sh["layer_0"]["mlp"]["gate_DF"].spec[1] == "tensor"
    # Per-device memory of params + optimizer state.
    p_dev, p_tot = bytes_per_device(params, params_sh, mesh.shape)
    o_dev, o_tot = bytes_per_device(opt_state, opt_sh, mesh.shape)
    per, total = p_dev + o_dev, p_tot + o_tot
    if mesh_shape["fsdp"] >= 2:
      assert per < total / 2, (mesh_shape, per, total)
    model_shards = mesh_shape["fsdp"] * mesh_shape["tensor"]
    assert per <= 1.01 * total / model_shards, (mesh_shape, per, total)


@pytest.mark.parametrize("preset", PRESETS)
def test_full_size_meshes_fit_state(preset):
  """Params + Adam state + grads of each real mesh fit 90% of device HBM."""
  axes, params, opt_state, tx = abstract_model(preset)
  module = load_config_module(preset)
  for arg, (mesh_shape, _, devices, hbm_gib, _) in module.HARDWARE.items():
    sizes = tuple(mesh_shape[a] for a in sharding.MESH_AXES)
    assert math.prod(sizes) == devices, arg
    mesh = AbstractMesh(sizes, sharding.MESH_AXES,
                        axis_types=(AxisType.Auto,) * len(sizes))
    params_sh = sharding.param_shardings(axes, params, mesh)
    opt_sh = sharding.opt_state_shardings(tx, params, params_sh, mesh)
    p_dev, _ = bytes_per_device(params, params_sh, mesh.shape)
    o_dev, _ = bytes_per_device(opt_state, opt_sh, mesh.shape)
    grads_dev = p_dev
    assert p_dev + o_dev + grads_dev < 0.9 * hbm_gib * 2**30, (
        arg, (p_dev + o_dev + grads_dev) / 2**30)


@pytest.mark.parametrize("preset", PRESETS)
def test_config_loads_for_every_arg(preset):
  module = load_config_module(preset)
  args = [None, *module.HARDWARE]
  for arg in args:
    c = module.get_config(arg)
    mesh_shape, multi_host, devices, _, _ = module.HARDWARE[
        arg or module.DEFAULT_ARG]
    assert dict(c.mesh) == mesh_shape
    assert c.distributed == multi_host
    assert c.task.name in ("math", "gsm8k")
    assert c.sft.steps == 5_000 and c.sft.batch_size == 32
    assert c.sft.warmup_steps == 500 and c.sft.weight_decay == 0.0
    assert c.sft.learning_rate == PEAK_LR[preset]
    assert c.sft.batch_size % (mesh_shape["data"] * mesh_shape["fsdp"]) == 0
    assert c.sample.cache_size > c.sft.max_len >= 1024
    assert c.tokenizer.path and isinstance(c.init_checkpoint, str)
    model_cfg = defaults.model_config(c.model)
    assert model_cfg == config_lib.PRESETS[preset]().replace(dtype="bfloat16")
    assert model_cfg.num_params() == PUBLISHED[preset]
    c.lock()  # As main.py's config flag does: the overrides still apply.
    c.init_checkpoint = "/data/ckpt"
    c.tokenizer.path = "/data/tokenizer.model"
  with pytest.raises(ValueError, match="unknown hardware"):
    module.get_config("tpu_v1_1")


def _get(tree, path):
  for k in path:
    tree = tree[k.key]
  return tree
