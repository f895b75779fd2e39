"""Sharding in one place: the mesh, the logical-axis rules, and shardings.

Modules annotate parameters with logical axis names (see layers.py); this
module maps them onto the named mesh axes ('data', 'fsdp', 'tensor') with one
rules table. A dimension whose size the mesh axis does not divide is
replicated instead (and reported by `describe`), so every sharding is valid.
"""

from typing import Any, Mapping, Sequence

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis -> mesh axis (or None: replicated).
RULES: dict[str, str | None] = {
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "norm": None,
    "head_out": None,
}


def make_mesh(
    shape: Mapping[str, int] | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> jax.sharding.Mesh:
  """A ('data', 'fsdp', 'tensor') mesh; one axis may be -1 (all the rest)."""
  devices = list(devices if devices is not None else jax.devices())
  shape = dict(shape or {"data": -1, "fsdp": 1, "tensor": 1})
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"unknown mesh axes {sorted(unknown)}; use {MESH_AXES}")
  sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {shape}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"mesh {shape} does not divide {len(devices)} devices")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(
        f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} "
        f"devices but {len(devices)} are available")
  return jax.make_mesh(
      tuple(sizes), MESH_AXES, devices=devices,
      axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_axes(model: nnx.Module) -> dict:
  """Pure dict (same structure as the params) of logical axis-name tuples."""
  state = nnx.state(model, nnx.Param)
  flat = nnx.to_flat_state(state)
  out: dict = {}
  for path, var in flat:
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = tuple(getattr(var, "axes", None)
                           or (None,) * var.get_value().ndim)
  return out


def spec(axes: Sequence[str | None], shape: Sequence[int], mesh,
         rules: Mapping[str, str | None] = RULES) -> P:
  """PartitionSpec for one array; non-dividing dimensions are replicated."""
  parts, used = [], set()
  for name, dim in zip(axes, shape):
    mesh_axis = rules.get(name) if name else None
    if (mesh_axis is None or mesh_axis in used
        or dim % mesh.shape[mesh_axis] != 0 or mesh.shape[mesh_axis] == 1):
      parts.append(None)
    else:
      parts.append(mesh_axis)
      used.add(mesh_axis)
  return P(*parts)


def param_shardings(axes_tree: dict, params_tree: dict, mesh,
                    rules: Mapping[str, str | None] = RULES) -> dict:
  """NamedShardings for a params tree (arrays or ShapeDtypeStructs)."""
  return jax.tree.map(
      lambda ax, p: NamedSharding(mesh, spec(ax, p.shape, mesh, rules)),
      axes_tree, params_tree, is_leaf=lambda x: isinstance(x, tuple))


def opt_state_shardings(tx: optax.GradientTransformation, params_abstract,
                        params_sh, mesh):
  """Optimizer-state shardings: param-shaped leaves follow their param."""
  state_abstract = jax.eval_shape(tx.init, params_abstract)
  replicated = NamedSharding(mesh, P())
  return optax.tree_map_params(
      tx, lambda _, sh: sh, state_abstract, params_sh,
      transform_non_params=lambda _: replicated)


def batch_sharding(mesh) -> NamedSharding:
  """Shards the leading (batch) axis over data and fsdp (any rank >= 1)."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_devices(mesh) -> int:
  """How many ways `batch_sharding` splits the rows (data x fsdp)."""
  return int(np.prod([mesh.shape.get(a, 1) for a in BATCH_AXES]))


def rows_spec(shape: Sequence[int], mesh, kv_heads_dim: int | None = None) -> P:
  """PartitionSpec of a per-row array (tokens, keys, KV cache).

  The leading (row) dimension goes over the batch axes ('data', 'fsdp') when
  their product divides it; otherwise the rows are replicated (every device
  holds every row: correct, but no split). `kv_heads_dim`, when given, is
  split over 'tensor' like the 'kv_heads' rule of the parameters. Scalars
  are replicated.
  """
  if not shape:
    return P()
  parts: list[Any] = [None] * len(shape)
  n = batch_devices(mesh)
  if n > 1 and shape[0] % n == 0:
    axes = tuple(a for a in BATCH_AXES if mesh.shape.get(a, 1) > 1)
    parts[0] = axes if len(axes) > 1 else axes[0]
  if kv_heads_dim is not None:
    t = RULES["kv_heads"]
    if (t and mesh.shape.get(t, 1) > 1
        and shape[kv_heads_dim] % mesh.shape[t] == 0):
      parts[kv_heads_dim] = t
  return P(*parts)


def rows_sharding(shape: Sequence[int], mesh,
                  kv_heads_dim: int | None = None) -> NamedSharding:
  """NamedSharding of `rows_spec`."""
  return NamedSharding(mesh, rows_spec(shape, mesh, kv_heads_dim))


def current_mesh(mesh=None):
  """`mesh`, else the one entered with `jax.set_mesh`; None for 1 device.

  Under a jit trace the entered mesh is the abstract one.
  """
  if mesh is None:
    try:
      mesh = jax.sharding.get_mesh()
    except ValueError:  # tracing
      mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or mesh.size <= 1:
    return None
  return mesh


def describe(shardings: Any) -> list[str]:
  """Human-readable 'path: spec' lines, for logs."""
  return [f"{jax.tree_util.keystr(k)}: {s.spec}" for k, s in
          jax.tree_util.tree_leaves_with_path(shardings)]


def maybe_initialize_distributed(enabled: bool) -> None:
  """jax.distributed.initialize() for multi-host runs (TPU slices, GPU hosts).

  On TPU VMs and SLURM/Open MPI clusters the coordinator address and process
  ids are discovered automatically; elsewhere set JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES and JAX_PROCESS_ID.
  """
  if enabled:
    jax.distributed.initialize()
