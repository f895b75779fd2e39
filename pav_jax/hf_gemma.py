"""Gemma-2 checkpoints in the Hugging Face safetensors layout <-> pav_jax.

Import reads `config.json` plus either a single `model.safetensors` or the
shards listed in `model.safetensors.index.json`, one tensor at a time
(`safetensors.safe_open`), converts each to the engine's layout and dtype and
places it on device before the next one is read, so peak host memory stays
near one copy of the weights. Export writes the same layout back (optionally
sharded); import -> export -> import is bit-exact.

Layout map (torch Linear weights are [out, in]):

  model.embed_tokens.weight                 [V, D]   -> embed_VD
  model.layers.{i}.self_attn.q_proj.weight  [N*H, D] -> layer_i.attn.q_DNH
  model.layers.{i}.self_attn.k_proj.weight  [K*H, D] -> layer_i.attn.k_DKH
  model.layers.{i}.self_attn.v_proj.weight  [K*H, D] -> layer_i.attn.v_DKH
  model.layers.{i}.self_attn.o_proj.weight  [D, N*H] -> layer_i.attn.o_NHD
  model.layers.{i}.mlp.gate_proj.weight     [F, D]   -> layer_i.mlp.gate_DF
  model.layers.{i}.mlp.up_proj.weight       [F, D]   -> layer_i.mlp.up_DF
  model.layers.{i}.mlp.down_proj.weight     [D, F]   -> layer_i.mlp.down_FD
  model.layers.{i}.input_layernorm.weight            -> pre_attn_norm.scale
  model.layers.{i}.post_attention_layernorm.weight   -> post_attn_norm.scale
  model.layers.{i}.pre_feedforward_layernorm.weight  -> pre_ffw_norm.scale
  model.layers.{i}.post_feedforward_layernorm.weight -> post_ffw_norm.scale
  model.norm.weight                                  -> final_norm.scale

Both sides store the Gemma norm weight w of x * (1 + w), so norms copy as is.

Public API:
  load_model(path, dtype) -> (cfg, graphdef, params)
  load_hf_params(path, cfg, dtype, shardings) -> params (shard by shard on a
    mesh: shardings=mesh_shardings(cfg, mesh))
  save_model(path, cfg, params, dtype, max_shard_bytes)
  config_from_hf(hf_config, dtype) / config_to_hf(cfg, dtype)
  read_hf_config(path)
  save_orbax(path, cfg, params) / load_orbax(path, dtype, shardings): the
    engine-side copy (orbax StandardCheckpointer params + ModelConfig JSON)
    that tools/convert_hf_gemma.py writes and reads.
Every failure raises `HFCheckpointError` naming the file or tensor at fault.
"""

import contextlib
import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import safetensors
import safetensors.numpy

from pav_jax import config as config_lib
from pav_jax import transformer

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

_DTYPES = {"float32": np.dtype(np.float32),
           "bfloat16": np.dtype(ml_dtypes.bfloat16)}
# HF tensors that carry no information for us (old checkpoints saved RoPE
# buffers).
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")
_ROWS_PER_CHUNK = 8192
_NORMS = {
    "input_layernorm": "pre_attn_norm",
    "post_attention_layernorm": "post_attn_norm",
    "pre_feedforward_layernorm": "pre_ffw_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
}


# transformers' Gemma2Config defaults for the optional keys we read.
_HF_DEFAULTS = {
    "query_pre_attn_scalar": 256,
    "attn_logit_softcapping": 50.0,
    "final_logit_softcapping": 30.0,
    "sliding_window": 4096,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
}


class HFCheckpointError(ValueError):
  """A checkpoint that is missing, corrupt, or not representable here."""


# Config ----------------------------------------------------------------------


def read_hf_config(path: str) -> dict[str, Any]:
  """The parsed `config.json` of an HF checkpoint directory."""
  fname = os.path.join(path, CONFIG_FILE)
  if not os.path.isdir(path):
    raise HFCheckpointError(
        f"{path!r} is not a directory; pass the directory that holds "
        f"{CONFIG_FILE} and the *.safetensors files"
    )
  try:
    with open(fname) as f:
      return json.load(f)
  except FileNotFoundError:
    raise HFCheckpointError(
        f"{fname} not found: an HF checkpoint directory needs its "
        f"{CONFIG_FILE}"
    ) from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise HFCheckpointError(f"{fname} is not valid JSON: {e}") from e


def _rope_theta(hf: dict[str, Any]) -> float:
  """rope_theta from a v4 (`rope_theta`) or v5 (`rope_parameters`) config."""
  scaling = hf.get("rope_scaling")
  if scaling:
    raise HFCheckpointError(
        f"rope_scaling={scaling!r} is set; pav_jax only implements plain "
        "RoPE. Remove it or convert a checkpoint without RoPE scaling."
    )
  params = hf.get("rope_parameters") or {}
  rope_type = params.get("rope_type", params.get("type", "default"))
  if rope_type != "default" or set(params) - {"rope_type", "type",
                                              "rope_theta"}:
    raise HFCheckpointError(
        f"rope_parameters={params!r}: only rope_type 'default' (plain RoPE "
        "with rope_theta) is supported"
    )
  theta = params.get("rope_theta", hf.get("rope_theta", 10_000.0))
  if "rope_theta" in params and "rope_theta" in hf and (
      float(hf["rope_theta"]) != float(params["rope_theta"])):
    raise HFCheckpointError(
        f"config.json has rope_theta={hf['rope_theta']} but "
        f"rope_parameters.rope_theta={params['rope_theta']}; make them agree"
    )
  return float(theta)


def config_from_hf(
    hf: dict[str, Any], dtype: str = "float32"
) -> config_lib.ModelConfig:
  """Maps an HF Gemma-2 `config.json` dict onto `ModelConfig`.

  Args:
    hf: the parsed config.json.
    dtype: compute dtype of the returned config ("float32"/"bfloat16").

  Raises:
    HFCheckpointError: for anything the pav_jax model cannot represent.
  """
  model_type = hf.get("model_type")
  if model_type != "gemma2":
    raise HFCheckpointError(
        f"model_type={model_type!r} is not supported: this loader reads "
        "Gemma-2 checkpoints (model_type 'gemma2') only"
    )
  act = hf.get("hidden_activation") or hf.get("hidden_act")
  if act != "gelu_pytorch_tanh":
    raise HFCheckpointError(
        f"hidden_activation={act!r}: pav_jax's MLP is gated GELU with the "
        "tanh approximation ('gelu_pytorch_tanh') only"
    )
  for key in ("attention_bias", "use_bidirectional_attention"):
    if hf.get(key):
      raise HFCheckpointError(f"{key}={hf[key]!r} is not supported")
  required = ("vocab_size", "hidden_size", "num_hidden_layers",
              "intermediate_size", "num_attention_heads",
              "num_key_value_heads", "head_dim")
  missing = [k for k in required if k not in hf]
  if missing:
    raise HFCheckpointError(f"config.json lacks required key(s) {missing}")
  # Optional keys take transformers' Gemma2Config defaults, so an absent key
  # means what it means to HF (an explicit null switches a feature off).
  hf = {**_HF_DEFAULTS, **hf}
  num_layers = int(hf["num_hidden_layers"])
  num_heads = int(hf["num_attention_heads"])
  window = hf["sliding_window"]
  layer_types = hf.get("layer_types")
  if window is not None and layer_types is not None:
    # pav_jax hard-wires Gemma 2's pattern: even layers local, odd global.
    want = ["sliding_attention" if i % 2 == 0 else "full_attention"
            for i in range(num_layers)]
    if list(layer_types) != want:
      raise HFCheckpointError(
          f"layer_types={layer_types} is not Gemma 2's alternation "
          f"(expected {want}); pav_jax cannot represent other patterns"
      )
  scalar = hf["query_pre_attn_scalar"]
  try:
    return config_lib.ModelConfig(
        vocab_size=int(hf["vocab_size"]),
        num_layers=num_layers,
        embed_dim=int(hf["hidden_size"]),
        hidden_dim=int(hf["intermediate_size"]),
        num_heads=num_heads,
        num_kv_heads=int(hf["num_key_value_heads"]),
        head_dim=int(hf["head_dim"]),
        query_pre_attn_scalar=None if scalar is None else float(scalar),
        attn_logits_soft_cap=_opt_float(hf.get("attn_logit_softcapping")),
        final_logit_soft_cap=_opt_float(hf.get("final_logit_softcapping")),
        sliding_window=None if window is None else int(window),
        rope_base=_rope_theta(hf),
        norm_eps=float(hf["rms_norm_eps"]),
        dtype=dtype,
        max_seq_len=int(hf["max_position_embeddings"]),
    )
  except ValueError as e:
    if isinstance(e, HFCheckpointError):
      raise
    raise HFCheckpointError(f"config.json is inconsistent: {e}") from e


def _opt_float(x) -> float | None:
  return None if x is None else float(x)


def _num(x: float) -> int | float:
  """JSON-friendly: integral floats as ints (HF writes 24, not 24.0)."""
  return int(x) if float(x).is_integer() else float(x)


def config_to_hf(
    cfg: config_lib.ModelConfig, dtype: str = "float32"
) -> dict[str, Any]:
  """An HF `config.json` dict for `cfg`, readable by transformers 4.4x-5.x.

  Args:
    cfg: the model config.
    dtype: the dtype the weights are stored in (recorded as `torch_dtype`
      and `dtype`).
  """
  scalar = cfg.query_pre_attn_scalar
  return {
      "architectures": ["Gemma2ForCausalLM"],
      "model_type": "gemma2",
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.embed_dim,
      "intermediate_size": cfg.hidden_dim,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim,
      "query_pre_attn_scalar": _num(scalar or cfg.head_dim),
      "attn_logit_softcapping": cfg.attn_logits_soft_cap,
      "final_logit_softcapping": cfg.final_logit_soft_cap,
      "sliding_window": cfg.sliding_window,
      "layer_types": [
          "sliding_attention" if cfg.is_local(i) else "full_attention"
          for i in range(cfg.num_layers)
      ],
      "rope_theta": cfg.rope_base,
      "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_base},
      "rms_norm_eps": cfg.norm_eps,
      "max_position_embeddings": cfg.max_seq_len,
      "hidden_activation": "gelu_pytorch_tanh",
      "hidden_act": "gelu_pytorch_tanh",
      "attention_bias": False,
      "attention_dropout": 0.0,
      "tie_word_embeddings": True,
      "torch_dtype": dtype,
      "dtype": dtype,
      "pad_token_id": 0,
      "eos_token_id": 1,
      "bos_token_id": 2,
  }


# Layout map ------------------------------------------------------------------

# A conversion: (HF tensor name, path into our params dict, expected HF shape,
# HF array -> ours, ours -> HF array).
_Conv = tuple[str, tuple[str, ...], tuple[int, ...],
              Callable[[np.ndarray], np.ndarray],
              Callable[[np.ndarray], np.ndarray]]


def _conversions(cfg: config_lib.ModelConfig, prefix: str) -> list[_Conv]:
  """Every tensor of the checkpoint, in file order of a typical export."""
  d, f, n, k, h = (cfg.embed_dim, cfg.hidden_dim, cfg.num_heads,
                   cfg.num_kv_heads, cfg.head_dim)

  def ident(x):
    return x

  def heads_in(num):  # [num*H, D] -> [D, num, H]
    return (lambda x: x.reshape(num, h, d).transpose(2, 0, 1),
            lambda y: y.transpose(1, 2, 0).reshape(num * h, d))

  o_in = (lambda x: x.T.reshape(n, h, d), lambda y: y.reshape(n * h, d).T)
  t = (lambda x: x.T, lambda y: y.T)
  out = [(f"{prefix}embed_tokens.weight", ("embed_VD",), (cfg.vocab_size, d),
          ident, ident)]
  for i in range(cfg.num_layers):
    hf, us = f"{prefix}layers.{i}.", f"layer_{i}"
    out += [
        (hf + "self_attn.q_proj.weight", (us, "attn", "q_DNH"), (n * h, d),
         *heads_in(n)),
        (hf + "self_attn.k_proj.weight", (us, "attn", "k_DKH"), (k * h, d),
         *heads_in(k)),
        (hf + "self_attn.v_proj.weight", (us, "attn", "v_DKH"), (k * h, d),
         *heads_in(k)),
        (hf + "self_attn.o_proj.weight", (us, "attn", "o_NHD"), (d, n * h),
         *o_in),
        (hf + "mlp.gate_proj.weight", (us, "mlp", "gate_DF"), (f, d), *t),
        (hf + "mlp.up_proj.weight", (us, "mlp", "up_DF"), (f, d), *t),
        (hf + "mlp.down_proj.weight", (us, "mlp", "down_FD"), (d, f), *t),
    ]
    out += [(f"{hf}{hf_norm}.weight", (us, ours, "scale"), (d,), ident, ident)
            for hf_norm, ours in _NORMS.items()]
  out.append((f"{prefix}norm.weight", ("final_norm", "scale"), (d,), ident,
              ident))
  return out


# Reading ---------------------------------------------------------------------


def _weight_map(path: str) -> dict[str, str]:
  """HF tensor name -> file name, from the index or the single file."""
  index = os.path.join(path, INDEX_FILE)
  single = os.path.join(path, SINGLE_FILE)
  if os.path.exists(index):
    try:
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError,
            TypeError) as e:
      raise HFCheckpointError(
          f"{index} is not a valid safetensors index (needs a JSON "
          f"'weight_map' of tensor name -> file): {e!r}"
      ) from e
    for fname in sorted(set(weight_map.values())):
      if not os.path.exists(os.path.join(path, fname)):
        raise HFCheckpointError(
            f"shard {os.path.join(path, fname)} listed in {index} is "
            "missing; re-download or re-export the checkpoint"
        )
    return dict(weight_map)
  if os.path.exists(single):
    with _open(single) as f:
      return {name: SINGLE_FILE for name in f.keys()}
  raise HFCheckpointError(
      f"no weights in {path!r}: expected {SINGLE_FILE} or {INDEX_FILE} "
      "(other formats such as pytorch_model.bin are not supported; "
      "re-save with safe_serialization=True)"
  )


@contextlib.contextmanager
def _open(fname: str) -> Iterator[Any]:
  """`safetensors.safe_open` (numpy) that names the file in any error."""
  try:
    handle = safetensors.safe_open(fname, framework="numpy")
  except FileNotFoundError:
    raise HFCheckpointError(f"{fname} not found") from None
  except Exception as e:  # SafetensorError is not importable portably.
    raise HFCheckpointError(
        f"{fname} is not a readable safetensors file (truncated or corrupt? "
        f"re-download or re-export it): {e}"
    ) from e
  with handle as f:
    yield f


def _detect_prefix(names) -> str:
  """'model.' for Gemma2ForCausalLM checkpoints, '' for bare Gemma2Model."""
  if "model.embed_tokens.weight" in names:
    return "model."
  if "embed_tokens.weight" in names:
    return ""
  raise HFCheckpointError(
      "no embedding tensor: expected 'model.embed_tokens.weight'; is this a "
      "Gemma-2 checkpoint?"
  )


def _set(tree: dict, keys: tuple[str, ...], value) -> None:
  for key in keys[:-1]:
    tree = tree.setdefault(key, {})
  tree[keys[-1]] = value


def _get(tree: dict, keys: tuple[str, ...]):
  for key in keys:
    tree = tree[key]
  return tree


def _iter_by_file(
    weight_map: dict[str, str], names: list[str]
) -> Iterator[tuple[str, list[str]]]:
  """(file name, tensor names in it), so each file is opened once."""
  files: dict[str, list[str]] = {}
  for name in names:
    files.setdefault(weight_map[name], []).append(name)
  for fname in sorted(files):
    yield fname, files[fname]


def load_hf_params(
    path: str,
    cfg: config_lib.ModelConfig,
    dtype: str = "float32",
    shardings: Any = None,
    hf_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
  """Streams the weights of an HF Gemma-2 checkpoint into a params dict.

  Each tensor is read alone, checked, transposed to the engine's layout,
  cast to `dtype` and put on device before the next is read.

  Args:
    path: checkpoint directory.
    cfg: its config (see `config_from_hf`).
    dtype: "float32" or "bfloat16", the dtype of the returned params.
    shardings: None (default device), one `jax.sharding.Sharding` for all
      leaves, or a pytree of shardings matching the params dict (e.g.
      `sharding.param_shardings`). A sharding over several devices is
      filled shard by shard (`jax.make_array_from_callback` over lazily
      read `get_slice` blocks): no device, and not the host, ever holds a
      whole tensor, only its blocks.
    hf_config: the parsed config.json (read from `path` when None).

  Returns:
    The nested params dict of `transformer.split`.

  Raises:
    HFCheckpointError: missing/corrupt files, missing or unexpected tensors,
      shape mismatches, an untied lm_head.
  """
  if dtype not in _DTYPES:
    raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
  np_dtype = _DTYPES[dtype]
  hf_config = read_hf_config(path) if hf_config is None else hf_config
  weight_map = _weight_map(path)
  prefix = _detect_prefix(weight_map)
  convs = {c[0]: c for c in _conversions(cfg, prefix)}
  missing = [name for name in convs if name not in weight_map]
  if missing:
    raise HFCheckpointError(
        f"{path}: {len(missing)} tensor(s) missing from the checkpoint, "
        f"e.g. {missing[:3]}; does config.json (num_hidden_layers="
        f"{cfg.num_layers}) match the weights?"
    )
  lm_head = "lm_head.weight"
  unexpected = sorted(
      n for n in weight_map
      if n not in convs and n != lm_head and not _IGNORED.match(n))
  if unexpected:
    raise HFCheckpointError(
        f"{path}: {len(unexpected)} unexpected tensor(s), e.g. "
        f"{unexpected[:3]}; is this a Gemma-2 checkpoint whose config.json "
        "matches its weights?"
    )
  if lm_head in weight_map:
    _check_tied_head(path, weight_map, prefix)
  elif hf_config.get("tie_word_embeddings") is False:
    raise HFCheckpointError(
        f"{path}: tie_word_embeddings is false but there is no "
        "lm_head.weight; pav_jax ties the output projection to the embedding"
    )

  params: dict[str, Any] = {}
  for fname, names in _iter_by_file(weight_map, list(convs)):
    full = os.path.join(path, fname)
    with _open(full) as f:
      available = set(f.keys())
      for name in names:
        if name not in available:
          raise HFCheckpointError(
              f"tensor {name!r} is not in {full} although the index maps "
              "it there; the index and the shards disagree"
          )
        _, keys, shape, to_ours, _ = convs[name]
        got = tuple(f.get_slice(name).get_shape())
        if got != shape:
          raise HFCheckpointError(
              f"tensor {name!r} in {full} has shape {list(got)}, expected "
              f"{list(shape)} from config.json; the config and the weights "
              "disagree"
          )
        if shardings is None:
          sharding = None
        elif isinstance(shardings, jax.sharding.Sharding):
          sharding = shardings
        else:
          sharding = _get(shardings, keys)
        if sharding is not None and not _single_device(sharding):
          # Shard by shard: each device's block is read lazily from the
          # file, so neither the host nor a device holds the whole tensor.
          read = _block_reader(f.get_slice(name), keys[-1], cfg.head_dim,
                               np_dtype, full, name)
          # A zero-stride view: the layout change without allocating.
          ours = to_ours(np.broadcast_to(np.zeros((), np.bool_), shape)).shape
          _set(params, keys,
               jax.make_array_from_callback(ours, sharding, read))
          continue
        try:
          x = f.get_tensor(name)
        except Exception as e:
          raise HFCheckpointError(
              f"cannot read tensor {name!r} from {full}: {e}") from e
        x = np.ascontiguousarray(to_ours(x).astype(np_dtype, copy=False))
        _set(params, keys, jax.device_put(x, sharding))
        del x
  return params


def mesh_shardings(cfg: config_lib.ModelConfig, mesh=None) -> Any:
  """The training rules' param shardings on `mesh` (default: the mesh
  entered with `jax.set_mesh`); None without a multi-device mesh.

  For `load_hf_params(path, cfg, dtype, shardings=mesh_shardings(cfg))`.
  """
  from flax import nnx  # noqa: PLC0415
  from pav_jax import sharding  # noqa: PLC0415
  mesh = sharding.current_mesh(mesh)
  if mesh is None:
    return None
  model = nnx.eval_shape(lambda: transformer.create(cfg))
  _, abstract = transformer.abstract_params(cfg)
  return sharding.param_shardings(sharding.logical_axes(model), abstract, mesh)


def _single_device(sharding: jax.sharding.Sharding) -> bool:
  return len(sharding.device_set) == 1


def _block_reader(handle, ours: str, head_dim: int, np_dtype, fname: str,
                  name: str) -> Callable[[tuple[slice, ...]], np.ndarray]:
  """index (slices into our layout) -> that block, read from the HF tensor.

  Only the rows/columns of the block are read (`get_slice`); the layout
  change of `_conversions` is applied to the block alone.
  """
  hf_shape = tuple(handle.get_shape())
  h = head_dim

  def bounds(idx, shape):
    return [s.indices(n)[:2] for s, n in zip(idx, shape)]

  def read(idx: tuple[slice, ...]) -> np.ndarray:
    try:
      if ours in ("q_DNH", "k_DKH", "v_DKH"):  # HF [num*H, D]
        num = hf_shape[0] // h
        (d0, d1), (n0, n1), (h0, h1) = bounds(idx, (hf_shape[1], num, h))
        x = handle[n0 * h:n1 * h, d0:d1]
        x = x.reshape(n1 - n0, h, d1 - d0).transpose(2, 0, 1)[:, :, h0:h1]
      elif ours == "o_NHD":  # HF [D, N*H]
        num = hf_shape[1] // h
        (n0, n1), (h0, h1), (d0, d1) = bounds(idx, (num, h, hf_shape[0]))
        x = handle[d0:d1, n0 * h:n1 * h]
        x = x.T.reshape(n1 - n0, h, d1 - d0)[:, h0:h1, :]
      elif ours in ("gate_DF", "up_DF", "down_FD"):  # torch Linear [out, in]
        (a0, a1), (b0, b1) = bounds(idx, hf_shape[::-1])
        x = handle[b0:b1, a0:a1].T
      else:  # embedding, norms: same layout
        x = handle[tuple(slice(a, b) for a, b in bounds(idx, hf_shape))]
    except Exception as e:
      raise HFCheckpointError(
          f"cannot read tensor {name!r} from {fname}: {e}") from e
    return np.ascontiguousarray(x.astype(np_dtype, copy=False))

  return read


def _check_tied_head(path: str, weight_map: dict[str, str],
                     prefix: str) -> None:
  """An lm_head.weight is only acceptable if it equals the embedding."""
  embed = f"{prefix}embed_tokens.weight"
  with _open(os.path.join(path, weight_map["lm_head.weight"])) as fh, \
      _open(os.path.join(path, weight_map[embed])) as fe:
    head, table = fh.get_slice("lm_head.weight"), fe.get_slice(embed)
    same = head.get_shape() == table.get_shape()
    rows = head.get_shape()[0] if same else 0
    for start in range(0, rows, _ROWS_PER_CHUNK):  # Bounded host memory.
      stop = min(start + _ROWS_PER_CHUNK, rows)
      if not np.array_equal(head[start:stop], table[start:stop]):
        same = False
        break
  if not same:
    raise HFCheckpointError(
        f"{path}: lm_head.weight differs from {embed} (untied output "
        "projection); pav_jax only supports tied embeddings"
    )


def load_model(
    path: str, dtype: str = "float32", shardings: Any = None
) -> tuple[config_lib.ModelConfig, Any, dict[str, Any]]:
  """Loads an HF Gemma-2 checkpoint directory.

  Args:
    path: directory with config.json and model.safetensors (or shards).
    dtype: "float32" or "bfloat16": dtype of the params and of compute.
    shardings: see `load_hf_params`.

  Returns:
    (cfg, graphdef, params), ready for `transformer.forward`.
  """
  hf_config = read_hf_config(path)
  cfg = config_from_hf(hf_config, dtype=dtype)
  graphdef, _ = transformer.abstract_params(cfg)
  params = load_hf_params(path, cfg, dtype, shardings, hf_config)
  return cfg, graphdef, params


# Writing ---------------------------------------------------------------------


def save_model(
    path: str,
    cfg: config_lib.ModelConfig,
    params: dict[str, Any],
    dtype: str | None = None,
    max_shard_bytes: int | None = None,
) -> list[str]:
  """Exports params to the HF layout (config.json + safetensors).

  Args:
    path: output directory (created; existing checkpoint files replaced).
    cfg: the model config.
    params: nested params dict (as from `load_model`/`transformer.split`).
    dtype: storage dtype, "float32" or "bfloat16" (None: that of embed_VD).
    max_shard_bytes: None writes one model.safetensors; otherwise shards of
      at most this many bytes (a larger single tensor gets its own shard)
      plus model.safetensors.index.json.

  Returns:
    The names of the weight files written.
  """
  if dtype is None:
    dtype = np.dtype(params["embed_VD"].dtype).name
  if dtype not in _DTYPES:
    raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
  np_dtype = _DTYPES[dtype]
  convs = _conversions(cfg, "model.")
  _, expected = transformer.abstract_params(cfg)
  for name, keys, _, _, _ in convs:
    where = "params" + "".join(f"[{k!r}]" for k in keys)
    try:
      ours = tuple(_get(params, keys).shape)
    except (KeyError, TypeError):
      raise HFCheckpointError(
          f"{where} is missing (needed for {name})") from None
    want = tuple(_get(expected, keys).shape)
    if ours != want:
      raise HFCheckpointError(
          f"{where} has shape {list(ours)}, expected {list(want)} for this "
          "config"
      )
  os.makedirs(path, exist_ok=True)
  for old in os.listdir(path):
    if old == INDEX_FILE or re.fullmatch(r"model.*\.safetensors", old):
      os.remove(os.path.join(path, old))

  # Group tensors into shards by size, then write shard by shard so that only
  # one shard's worth of host copies exists at a time.
  shards: list[list[_Conv]] = [[]]
  size = 0
  for conv in convs:
    nbytes = int(np.prod(conv[2])) * np_dtype.itemsize
    if (max_shard_bytes is not None and shards[-1]
        and size + nbytes > max_shard_bytes):
      shards.append([])
      size = 0
    shards[-1].append(conv)
    size += nbytes
  if max_shard_bytes is None:
    fnames = [SINGLE_FILE]
  else:
    fnames = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
              for i in range(len(shards))]
  weight_map, total = {}, 0
  for fname, shard in zip(fnames, shards, strict=True):
    tensors = {}
    for name, keys, _, _, to_hf in shard:
      x = np.asarray(jax.device_get(_get(params, keys)))
      tensors[name] = np.ascontiguousarray(to_hf(x.astype(np_dtype)))
      weight_map[name] = fname
      total += tensors[name].nbytes
    safetensors.numpy.save_file(
        tensors, os.path.join(path, fname), metadata={"format": "pt"})
    del tensors
  if max_shard_bytes is not None:
    with open(os.path.join(path, INDEX_FILE), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map},
                f, indent=2, sort_keys=True)
  with open(os.path.join(path, CONFIG_FILE), "w") as f:
    json.dump(config_to_hf(cfg, dtype), f, indent=2, sort_keys=True)
  return fnames


# Orbax (engine-side) copy -----------------------------------------------------

ORBAX_PARAMS = "params"
ORBAX_CONFIG = "model_config.json"


def save_orbax(
    path: str, cfg: config_lib.ModelConfig, params: dict[str, Any]
) -> None:
  """Saves params (orbax StandardCheckpointer) and cfg (JSON) under `path`.

  Writes `path/params/` and `path/model_config.json`; an existing params
  checkpoint there is replaced.
  """
  path = os.path.abspath(path)
  os.makedirs(path, exist_ok=True)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.join(path, ORBAX_PARAMS), params, force=True)
  ckptr.wait_until_finished()
  ckptr.close()
  with open(os.path.join(path, ORBAX_CONFIG), "w") as f:
    json.dump(dataclasses.asdict(cfg), f, indent=2, sort_keys=True)


def load_orbax(
    path: str, dtype: str | None = None, shardings: Any = None
) -> tuple[config_lib.ModelConfig, Any, dict[str, Any]]:
  """Restores what `save_orbax` wrote: (cfg, graphdef, params).

  Args:
    path: directory holding params/ and model_config.json.
    dtype: restore params as this dtype (None: as saved); cfg.dtype follows.
    shardings: None (first device), one Sharding, or a matching pytree.
  """
  path = os.path.abspath(path)
  fname = os.path.join(path, ORBAX_CONFIG)
  try:
    with open(fname) as f:
      cfg = config_lib.ModelConfig.from_dict(json.load(f))
  except FileNotFoundError:
    raise HFCheckpointError(
        f"{fname} not found; is {path!r} a save_orbax directory?") from None
  except (json.JSONDecodeError, ValueError, TypeError) as e:
    raise HFCheckpointError(f"{fname} is not a valid ModelConfig: {e}") from e
  ckpt = os.path.join(path, ORBAX_PARAMS)
  if not os.path.isdir(ckpt):
    raise HFCheckpointError(f"{ckpt} not found; is {path!r} a save_orbax "
                          "directory?")
  ckptr = ocp.StandardCheckpointer()
  if dtype is None:
    meta = ckptr.metadata(ckpt)
    meta = getattr(meta, "item_metadata", meta)
    dtype = np.dtype(_get(meta, ("embed_VD",)).dtype).name
  if dtype not in _DTYPES:
    raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
  cfg = cfg.replace(dtype=dtype)
  graphdef, abstract = transformer.abstract_params(cfg)
  default = jax.sharding.SingleDeviceSharding(jax.devices()[0])

  def target(keys, x):
    if shardings is None:
      sharding = default
    elif isinstance(shardings, jax.sharding.Sharding):
      sharding = shardings
    else:
      sharding = _get(shardings, tuple(k.key for k in keys))
    return jax.ShapeDtypeStruct(x.shape, _DTYPES[dtype], sharding=sharding)

  abstract = jax.tree_util.tree_map_with_path(target, abstract)
  params = ckptr.restore(ckpt, abstract)
  ckptr.close()
  return cfg, graphdef, params
