"""Shared training machinery: optimizer, sharded state, jitted step, loop.

Every trainer (SFT policy, verifiers) is a loss function plus a batch
function handed to `fit`. The state is a plain pytree
  {'params': ..., 'opt_state': ..., 'step': int32 [], 'rng': uint32 key data}
created sharded by `init_state`, updated by a jitted, donated pure step, and
checkpointed by `fit` with automatic resume from the stage directory.
"""

import dataclasses
import json
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx

from pav_jax import checkpoint as ckpt_lib
from pav_jax import sharding as sharding_lib

log = logging.getLogger(__name__)

LossFn = Callable[[Any, Any, dict, jax.Array], tuple[jax.Array, dict]]


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  learning_rate: float = 1e-3
  warmup_steps: int = 100
  total_steps: int = 1000
  end_lr_fraction: float = 0.1
  weight_decay: float = 0.01
  b1: float = 0.9
  b2: float = 0.98
  grad_clip: float = 1.0


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
  """AdamW with linear warmup then cosine decay, and global-norm clipping."""
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.learning_rate,
      warmup_steps=max(cfg.warmup_steps, 1),
      decay_steps=max(cfg.total_steps, cfg.warmup_steps + 1),
      end_value=cfg.learning_rate * cfg.end_lr_fraction)
  return optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip),
      optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay))


def init_state(make_model: Callable[[], nnx.Module], tx, mesh, seed: int):
  """Creates (state, state_shardings, graphdef) directly sharded on the mesh."""
  abstract_model = nnx.eval_shape(make_model)
  graphdef, _ = nnx.split(abstract_model, nnx.Param)
  axes = sharding_lib.logical_axes(abstract_model)

  def init():
    params = nnx.to_pure_dict(nnx.state(make_model(), nnx.Param))
    return {
        "params": params,
        "opt_state": tx.init(params),
        "step": jnp.zeros((), jnp.int32),
        "rng": jax.random.key_data(jax.random.key(seed)),
    }

  abstract = jax.eval_shape(init)
  params_sh = sharding_lib.param_shardings(axes, abstract["params"], mesh)
  rep = sharding_lib.replicated(mesh)
  shardings = {
      "params": params_sh,
      "opt_state": sharding_lib.opt_state_shardings(tx, abstract["params"], params_sh, mesh),
      "step": rep,
      "rng": rep,
  }
  state = jax.jit(init, out_shardings=shardings)()
  return state, shardings, graphdef


def load_params(path, make_model: Callable[[], nnx.Module], mesh):
  """(graphdef, params) exported by a stage, restored sharded on `mesh`.

  The abstract tree of `nnx.eval_shape` has no concrete sharding (under
  `jax.set_mesh` it carries an AbstractMesh, which orbax cannot restore
  onto); every leaf gets the NamedSharding its logical axes map to.
  """
  abstract_model = nnx.eval_shape(make_model)
  graphdef, state = nnx.split(abstract_model, nnx.Param)
  abstract = nnx.to_pure_dict(state)
  shardings = sharding_lib.param_shardings(
      sharding_lib.logical_axes(abstract_model), abstract, mesh)
  concrete = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      abstract, shardings)
  return graphdef, ckpt_lib.load_params(path, concrete)


def make_train_step(graphdef, loss_fn: LossFn, tx, state_shardings, mesh):
  """Jitted `step(state, batch) -> (state, metrics)` with donated state."""

  def step(state, batch):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    grad_fn = jax.value_and_grad(
        lambda p: loss_fn(graphdef, p, batch, rng), has_aux=True)
    (loss, metrics), grads = grad_fn(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
    new_state = dict(state, params=params, opt_state=opt_state,
                     step=state["step"] + 1)
    return new_state, metrics

  return jax.jit(
      step,
      in_shardings=(state_shardings, sharding_lib.batch_sharding(mesh)),
      out_shardings=(state_shardings, sharding_lib.replicated(mesh)),
      donate_argnums=(0,))


def device_batch(batch: dict, sharding) -> dict:
  """Places a global host batch on the mesh (each process sends its rows).

  Single process: a plain `device_put`. Multi-host: process i contributes
  rows [i*B/n, (i+1)*B/n) via `jax.make_array_from_process_local_data`, so
  every host must compute the same global batch (batch_fn is deterministic).
  """
  n = jax.process_count()
  if n == 1:
    return jax.device_put(batch, sharding)
  i = jax.process_index()

  def put(x):
    rows = len(x) // n
    return jax.make_array_from_process_local_data(
        sharding, x[i * rows:(i + 1) * rows], (len(x),) + x.shape[1:])

  return jax.tree.map(put, batch)


class MetricWriter:
  """Appends metrics to `metrics.jsonl` and TensorBoard event files.

  Only process 0 writes (multi-host runs share one workdir).
  """

  def __init__(self, directory: str | Path):
    self.directory = Path(directory)
    self._jsonl = self._tb = None
    if jax.process_index() != 0:
      return
    self.directory.mkdir(parents=True, exist_ok=True)
    self._jsonl = open(self.directory / "metrics.jsonl", "a", encoding="utf-8")
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(str(self.directory / "tb"))
    except ImportError:  # pragma: no cover - tensorboardX is a dependency.
      self._tb = None

  def write(self, step: int, metrics: dict) -> None:
    if self._jsonl is None:
      return
    clean = {}
    for k, v in metrics.items():
      try:
        if np.ndim(v) == 0:
          clean[k] = float(v)
      except (TypeError, ValueError):
        continue
    self._jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in clean.items():
        self._tb.add_scalar(k.replace("@", "_at_"), v, int(step))

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


@dataclasses.dataclass
class LoopConfig:
  num_steps: int
  ckpt_every: int = 100
  log_every: int = 10
  eval_every: int = 0  # 0: no periodic evaluation.
  max_to_keep: int = 2
  kill_at_step: int = -1  # Fault injection for tests: SIGKILL self after it.


def _check_finite(step: int, metrics: dict, ckpt) -> dict:
  host = jax.device_get(metrics)
  loss = float(host["loss"])
  if not math.isfinite(loss):
    last = ckpt.latest_step()
    raise FloatingPointError(
        f"loss is {loss} at step {step}: stopping before it is saved. The last "
        f"good checkpoint is step {last} in {ckpt.directory}. Lower the "
        "learning rate, check the data, or raise grad clipping; rerunning "
        "resumes from that checkpoint.")
  return host


def fit(
    *,
    stage_dir: str | Path,
    state,
    state_shardings,
    train_step,
    batch_fn: Callable[[int], dict],
    loop: LoopConfig,
    eval_fn: Callable[[int, Any], dict] | None = None,
    config_dict: dict | None = None,
    desc: str = "train",
    batch_sharding=None,
):
  """Runs (or resumes) a training loop; returns the final state.

  `batch_fn(step)` must be a pure function of the step (deterministic data
  order), which makes the data position == step and resume exact. With
  `batch_sharding`, batches are placed through `device_batch` (multi-host).
  """
  stage_dir = Path(stage_dir)
  ckpt = ckpt_lib.Checkpointer(stage_dir / "checkpoints", max_to_keep=loop.max_to_keep)
  abstract = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      state, state_shardings)
  restored = ckpt.restore(abstract)
  start = 0
  if restored is not None:
    start, state, meta = restored
    if meta.get("data_position", start) != start:
      raise ckpt_lib.CheckpointError(
          f"checkpoint {start} has data position {meta['data_position']}")
    log.info("%s: resumed from step %d in %s", desc, start, ckpt.directory)
  writer = MetricWriter(stage_dir)
  pending = None
  t0 = time.time()
  try:
    with tqdm.tqdm(total=loop.num_steps, initial=start, desc=desc,
                   dynamic_ncols=True, mininterval=1.0) as pbar:
      for step in range(start, loop.num_steps):
        batch = batch_fn(step)
        if batch_sharding is not None:
          batch = device_batch(batch, batch_sharding)
        state, metrics = train_step(state, batch)
        if pending is not None:  # read step n-1 after dispatching step n
          _log_pending(pending, writer, pbar, loop, ckpt)
        pending = (step, metrics)
        pbar.update(1)
        done = step + 1 == loop.num_steps
        if (step + 1) % loop.ckpt_every == 0 or done:
          _log_pending(pending, writer, pbar, loop, ckpt, force=True)
          pending = None
          ckpt.save(step + 1, state, {"step": step + 1, "data_position": step + 1},
                    config_dict, force=True)
        if (eval_fn is not None and loop.eval_every
            and (step + 1) % loop.eval_every == 0):
          ev = eval_fn(step + 1, state["params"])
          writer.write(step + 1, {f"eval/{k}": v for k, v in ev.items()})
          log.info("%s step %d eval: %s", desc, step + 1, ev)
        if step + 1 == loop.kill_at_step:
          os.kill(os.getpid(), signal.SIGKILL)
      if pending is not None:
        _log_pending(pending, writer, pbar, loop, ckpt, force=True)
  finally:
    ckpt.close()
    writer.close()
  log.info("%s: %d steps in %.1fs", desc, loop.num_steps - start, time.time() - t0)
  return state


def _log_pending(pending, writer, pbar, loop, ckpt, force=False):
  step, metrics = pending
  if force or step % loop.log_every == 0:
    host = _check_finite(step, metrics, ckpt)
    writer.write(step + 1, host)
    pbar.set_postfix(loss=f"{float(host['loss']):.4f}")
  else:
    _check_finite(step, metrics, ckpt)
