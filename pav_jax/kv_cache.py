"""The KV cache: one API to create, shard, fork and gather per-row caches.

A cache is a plain pytree with static shapes:
  {'pos': int32 [B, S]  absolute position of each slot, -1 when empty,
   'index': int32 []    next slot to write (shared by all rows),
   'layers': {'layer_i': {'k': [B, K, S, H], 'v': [B, K, S, H]}}}
with k/v heads-major, and [B, S, H] (no head axis) when K == 1 (multi-query):
the decode attention reads these buffers as dots with no reshape in between,
which keeps XLA from copying them on every step (see layers._attend_one);
`write` and `heads_major` hide the difference.
Rows of different lengths share one write index: padding and tokens of rows
that are not decoding get position -1 and are never attended to. That keeps
every write a `dynamic_update_slice` at a scalar offset, and makes forking a
prefix into n rows a `repeat` along the batch axis. The cache size S is given
per call of `create`, so one model serves caches of any size.

Sharding (when a mesh with more than one device is given or entered with
`jax.set_mesh`): rows over the batch axes ('data', 'fsdp'), the KV heads of
the per-layer k/v over 'tensor' (the 'kv_heads' rule of sharding.RULES), the
scalar index replicated. A row count that the batch axes do not divide keeps
its rows replicated (see `sharding.rows_spec`); pad the rows to a multiple of
`sharding.batch_devices(mesh)` to get the split.

Ownership: `fork_rows` and `take_rows` return arrays that own their buffers
(scalars are copied, a 1-way fork is a copy), so a decode that donates the
result never deletes the source, e.g. a prefix forked again and again.

The row helpers work on any pytree whose leaves lead with the row axis
(scalars are shared): a cache, a sampler state, a verifier cache.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp

from pav_jax import config as config_lib
from pav_jax import sharding as sharding_lib

Cache = dict


def _is_kv(path) -> bool:
  keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
  return "layers" in keys and keys[-1] in ("k", "v")


def shardings(tree: Any, mesh) -> Any:
  """NamedShardings for a row pytree (arrays or ShapeDtypeStructs).

  Leaves lead with the row axis; 4-d 'k'/'v' leaves under 'layers' also
  split their KV-heads axis (1) over 'tensor'; scalars are replicated.
  """
  def one(path, x):
    kv = 1 if _is_kv(path) and len(x.shape) == 4 else None
    return sharding_lib.rows_sharding(x.shape, mesh, kv)
  return jax.tree_util.tree_map_with_path(one, tree)


def is_traced(tree) -> bool:
  return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree))


def constrain(tree: Any, mesh=None) -> Any:
  """Places (eagerly) or constrains (under jit) a row pytree on the mesh.

  A no-op without a mesh of more than one device. Eagerly, leaves that
  already have the target sharding are returned as they are.
  """
  mesh = sharding_lib.current_mesh(mesh)
  if mesh is None:
    return tree
  sh = shardings(tree, mesh)
  if is_traced(tree):
    return jax.lax.with_sharding_constraint(tree, sh)
  return jax.tree.map(
      lambda x, s: x if getattr(x, "sharding", None) == s
      else jax.device_put(x, s), tree, sh)


def create(cfg: config_lib.ModelConfig, batch: int, size: int, dtype=None,
           mesh=None) -> Cache:
  """An empty cache of `size` slots for `batch` rows.

  With a mesh (given, or entered with `jax.set_mesh`) each device allocates
  only its shard; under jit the result is constrained to the same layout.
  """
  key = (cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, int(batch),
         int(size), jnp.dtype(dtype or cfg.dtype).name)
  mesh = sharding_lib.current_mesh(mesh)
  if mesh is None:
    return _make(*key)
  # Under an outer jit this inlines; either way no device holds more than
  # its shard.
  return _sharded_maker(*key, mesh)()


def _make(num_layers, num_kv_heads, head_dim, batch, size, dtype) -> Cache:
  shape = ((batch, num_kv_heads, size, head_dim) if num_kv_heads > 1
           else (batch, size, head_dim))
  return {
      "pos": jnp.full((batch, size), -1, jnp.int32),
      "index": jnp.zeros((), jnp.int32),
      "layers": {
          f"layer_{i}": {"k": jnp.zeros(shape, dtype),
                         "v": jnp.zeros(shape, dtype)}
          for i in range(num_layers)
      },
  }


@functools.lru_cache(maxsize=32)
def _sharded_maker(num_layers, num_kv_heads, head_dim, batch, size, dtype,
                   mesh):
  """One compiled allocator per cache shape and mesh."""
  make = functools.partial(_make, num_layers, num_kv_heads, head_dim, batch,
                           size, dtype)
  return jax.jit(make, out_shardings=shardings(jax.eval_shape(make), mesh))


def write(buf: jax.Array, x_BTKH: jax.Array, index: jax.Array) -> jax.Array:
  """Writes T tokens' keys or values [B, T, K, H] at slots index..index+T-1
  of one layer's buffer (either layout)."""
  zero = jnp.zeros((), jnp.int32)
  if buf.ndim == 3:
    return jax.lax.dynamic_update_slice(
        buf, x_BTKH[:, :, 0].astype(buf.dtype), (zero, index, zero))
  return jax.lax.dynamic_update_slice(
      buf, jnp.swapaxes(x_BTKH, 1, 2).astype(buf.dtype),
      (zero, zero, index, zero))


def heads_major(buf: jax.Array) -> jax.Array:
  """One layer's buffer as [B, K, S, H] (a view for K == 1)."""
  return buf[:, None] if buf.ndim == 3 else buf


def _fork(tree, n: int = 1):
  return jax.tree.map(
      lambda x: jnp.repeat(x, n, axis=0) if x.ndim and n > 1 else jnp.copy(x),
      tree)


def _take(tree, rows_R):
  return jax.tree.map(
      lambda x: jnp.take(x, rows_R, axis=0) if x.ndim else jnp.copy(x), tree)


@functools.lru_cache(maxsize=64)
def _jitted(kind: str, mesh, out_sh_flat, treedef):
  fn = _fork if kind == "fork" else _take
  out_sh = jax.tree.unflatten(treedef, out_sh_flat)
  if kind == "fork":
    return jax.jit(fn, static_argnums=1, out_shardings=out_sh)
  return jax.jit(fn, out_shardings=out_sh)


def mesh_of(tree: Any, mesh=None):
  """The mesh to keep the result on: given, entered, or the inputs'."""
  mesh = sharding_lib.current_mesh(mesh)
  if mesh is not None:
    return mesh
  for x in jax.tree.leaves(tree):
    sh = getattr(x, "sharding", None)
    if isinstance(sh, jax.sharding.NamedSharding) and sh.mesh.size > 1:
      return sh.mesh
  return None


def _run(kind, tree, arg, mesh):
  fn = _fork if kind == "fork" else _take
  if is_traced(tree):
    return constrain(fn(tree, arg), mesh)
  mesh = mesh_of(tree, mesh)
  if mesh is None:
    return fn(tree, arg)
  abstract = (jax.eval_shape(functools.partial(fn, n=arg), tree)
              if kind == "fork" else jax.eval_shape(fn, tree, arg))
  out_sh = shardings(abstract, mesh)
  flat, treedef = jax.tree.flatten(out_sh)
  return _jitted(kind, mesh, tuple(flat), treedef)(tree, arg)


def fork_rows(tree: Any, n: int, mesh=None) -> Any:
  """Row b -> rows b*n .. b*n+n-1 of every leaf; scalars get own buffers.

  The result owns its buffers (n == 1 copies) and, on a mesh (given,
  entered, or that of the inputs), keeps rows over the batch axes and KV
  heads over 'tensor'.
  """
  return _run("fork", tree, int(n), mesh)


def take_rows(tree: Any, rows_R: jax.Array, mesh=None) -> Any:
  """Gathers rows (e.g. the surviving beams) of every leaf; see fork_rows."""
  return _run("take", tree, jnp.asarray(rows_R, jnp.int32), mesh)


# The cache-specific names.
fork = fork_rows
take = take_rows


def size(cache: Cache) -> int:
  """Slots per row."""
  return int(cache["pos"].shape[1])


def rows(cache: Cache) -> int:
  return int(cache["pos"].shape[0])
