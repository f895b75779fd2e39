"""Shared training machinery: optimizer, sharded state, jitted step, loop.

Every trainer (SFT policy, verifiers) is a loss function plus a batch
function handed to `fit`. The state is a plain pytree
  {'params': ..., 'opt_state': ..., 'step': int32 [], 'rng': uint32 key data}
created sharded by `init_state`, updated by a jitted, donated pure step, and
checkpointed by `fit` with automatic resume from the stage directory.

`fit` never mixes or loses work: on resume it compares the config stored in
the checkpoint with the one it is given (`identity.IdentityMismatchError`
listing the differing keys), never saves a state whose params are not
finite, drops metrics rows of steps it is about to redo, and flags a dead
gradient (grad_norm exactly 0 or a constant loss over the first steps) in
`<stage_dir>/train_summary.json`.
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
from pav_jax import identity as identity_lib
from pav_jax import sharding as sharding_lib

log = logging.getLogger(__name__)

LossFn = Callable[[Any, Any, dict, jax.Array], tuple[jax.Array, dict]]

# Config keys (fnmatch patterns on dotted paths) that may change between a
# run and its resume: they steer the run, not what the trained state is.
DEFAULT_IDENTITY_IGNORE = (
    "stages", "distributed", "mesh", "mesh.*", "*.kill_at_step",
    "*.log_every", "*.ckpt_every", "*.eval_every", "*.batch_rows",
)
SUMMARY_FILE = "train_summary.json"


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
      optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2,
                  weight_decay=cfg.weight_decay))


def init_state(make_model: Callable[[], nnx.Module], tx, mesh, seed: int,
               init_params: Callable[[], dict] | None = None):
  """Creates (state, state_shardings, graphdef) directly sharded on the mesh.

  `init_params` (traced inside the init jit) replaces the model's own
  initialisers, e.g. a benchmark's PRNG-free fill of the same tree.
  """
  abstract_model = nnx.eval_shape(make_model)
  graphdef, _ = nnx.split(abstract_model, nnx.Param)
  axes = sharding_lib.logical_axes(abstract_model)

  def init():
    params = (init_params() if init_params is not None else
              nnx.to_pure_dict(nnx.state(make_model(), nnx.Param)))
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
      "opt_state": sharding_lib.opt_state_shardings(
          tx, abstract["params"], params_sh, mesh),
      "step": rep,
      "rng": rep,
  }
  state = jax.jit(init, out_shardings=shardings)()
  return state, shardings, graphdef


def load_model_params(path, make_model: Callable[[], nnx.Module], mesh):
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
  return graphdef, ckpt_lib.load_params_tree(path, concrete)


def make_train_step(graphdef, loss_fn: LossFn, tx, state_shardings, mesh):
  """Jitted `step(state, batch) -> (state, metrics)` with donated state."""

  def step(state, batch):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]),
                             state["step"])
    grad_fn = jax.value_and_grad(
        lambda p: loss_fn(graphdef, p, batch, rng), has_aux=True)
    (loss, metrics), grads = grad_fn(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                   params_finite=all_finite(params))
    new_state = dict(state, params=params, opt_state=opt_state,
                     step=state["step"] + 1)
    return new_state, metrics

  return jax.jit(
      step,
      in_shardings=(state_shardings, sharding_lib.batch_sharding(mesh)),
      out_shardings=(state_shardings, sharding_lib.replicated(mesh)),
      donate_argnums=(0,))


def all_finite(tree) -> jax.Array:
  """bool []: every floating leaf of `tree` is free of NaN and Inf."""
  flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
           if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


_all_finite_jit = jax.jit(all_finite)


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

  Only process 0 writes (multi-host runs share one workdir). With
  `resume_step`, rows of later steps (written by a run that was cut short
  and whose steps are now redone) are dropped first, from metrics.jsonl
  (rewritten atomically) and from TensorBoard (`purge_step`), so no step
  appears twice.
  """

  def __init__(self, directory: str | Path, resume_step: int | None = None):
    self.directory = Path(directory)
    self._jsonl = self._tb = None
    if jax.process_index() != 0:
      return
    self.directory.mkdir(parents=True, exist_ok=True)
    path = self.directory / "metrics.jsonl"
    if resume_step is not None and path.exists():
      _truncate_metrics(path, resume_step)
    self._jsonl = open(path, "a", encoding="utf-8")
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      purge = None if resume_step is None else resume_step + 1
      self._tb = SummaryWriter(str(self.directory / "tb"), purge_step=purge)
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


def _truncate_metrics(path: Path, last_step: int) -> None:
  """Keeps only rows with step <= last_step (and unparsable lines dropped)."""
  keep, dropped = [], 0
  for line in path.read_text(encoding="utf-8").splitlines():
    try:
      row = json.loads(line)
      ok = int(row["step"]) <= last_step
    except (ValueError, KeyError, TypeError):
      ok = False
    if ok:
      keep.append(line)
    else:
      dropped += 1
  if dropped:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
    os.replace(tmp, path)
    log.info("%s: dropped %d rows after step %d (they are redone)", path,
             dropped, last_step)


def write_json_atomic(path: str | Path, obj: Any) -> None:
  """Writes JSON to a temporary file then renames it over `path`."""
  path = Path(path)
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  tmp.write_text(json.dumps(obj, indent=2, default=float), encoding="utf-8")
  os.replace(tmp, path)


def read_train_summary(stage_dir: str | Path) -> dict | None:
  """The summary `fit` wrote in stage_dir (dead_gradient, losses), if any."""
  path = Path(stage_dir) / SUMMARY_FILE
  if not path.exists():
    return None
  return json.loads(path.read_text(encoding="utf-8"))


@dataclasses.dataclass
class LoopConfig:
  num_steps: int
  ckpt_every: int = 100
  log_every: int = 10
  eval_every: int = 0  # 0: no periodic evaluation.
  max_to_keep: int = 2
  kill_at_step: int = -1  # Fault injection for tests: SIGKILL self after it.
  # Flag a dead gradient when grad_norm is exactly 0 (or the loss does not
  # change) over the first this many steps; 0 disables the check.
  dead_check_steps: int = 10


def _check_finite(step: int, metrics: dict, ckpt) -> dict:
  """Host metrics of step; raises if its loss or updated params are not finite.

  Runs before any save of that step's state, so a non-finite state is never
  written and the newest checkpoint stays the last good one.
  """
  host = jax.device_get(metrics)
  loss = float(host["loss"])
  finite = bool(host.pop("params_finite", True))
  if not math.isfinite(loss) or not finite:
    what = (f"loss is {loss}" if not math.isfinite(loss) else
            f"the params are not finite after the update (loss {loss}, "
            f"grad_norm {float(host.get('grad_norm', float('nan')))})")
    last = ckpt.latest_step()
    raise FloatingPointError(
        f"{what} at step {step}: stopping before it is saved. The last "
        f"good checkpoint is step {last} in {ckpt.directory}. Lower the "
        "learning rate, check the data, or raise grad clipping; rerunning "
        "resumes from that checkpoint.")
  return host


class _DeadGradientWatch:
  """Watches the first `n` steps for grad_norm == 0 or a constant loss."""

  def __init__(self, n: int, start: int, desc: str, previous: dict | None):
    self.n, self.start, self.desc = n, start, desc
    self.grad_norms, self.losses = [], []
    self.dead = bool(previous and previous.get("dead_gradient"))
    self.reason = previous.get("dead_reason", "") if previous else ""

  def observe(self, step: int, host: dict) -> bool:
    """Records step; returns True when it just decided "dead"."""
    if step >= self.n or self.n <= 0:
      return False
    self.grad_norms.append(float(host.get("grad_norm", float("nan"))))
    self.losses.append(float(host["loss"]))
    if step + 1 != self.n:
      return False
    seen = len(self.losses)
    if all(g == 0.0 for g in self.grad_norms):
      self.reason = f"grad_norm is exactly 0 at each of the first {seen} steps"
    elif seen >= 2 and max(self.losses) == min(self.losses):
      self.reason = (f"the loss is exactly {self.losses[0]} at each of the "
                     f"first {seen} steps")
    else:
      self.dead, self.reason = False, ""
      return False
    self.dead = True
    log.warning("%s: dead gradient: %s; this model is not learning (check "
                "the loss, its targets and a zero-initialised head)",
                self.desc, self.reason)
    return True


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
    identity: dict | None = None,
    identity_ignore: tuple[str, ...] = DEFAULT_IDENTITY_IGNORE,
):
  """Runs (or resumes) a training loop; returns the final state.

  `batch_fn(step)` must be a pure function of the step (deterministic data
  order), which makes the data position == step and resume exact. With
  `batch_sharding`, batches are placed through `device_batch` (multi-host).

  On resume, `config_dict` is compared with the config stored in the
  checkpoint (keys matching `identity_ignore` left out) and `identity`
  (extra entries, e.g. {"tokenizer_sha256": ...}) with the identity stored
  in its meta; any difference raises `identity.IdentityMismatchError`
  listing the keys. `<stage_dir>/train_summary.json` records the outcome
  (`dead_gradient`, final loss); see `read_train_summary`.
  """
  stage_dir = Path(stage_dir)
  ckpt = ckpt_lib.Checkpointer(stage_dir / "checkpoints",
                               max_to_keep=loop.max_to_keep)
  abstract = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      state, state_shardings)
  try:
    _check_resume_identity(ckpt, config_dict, identity, identity_ignore)
    restored = ckpt.restore(abstract)
  except Exception:
    ckpt.close()
    raise
  start = 0
  if restored is not None:
    start, state, meta = restored
    if meta.get("data_position", start) != start:
      raise ckpt_lib.CheckpointError(
          f"checkpoint {start} has data position {meta['data_position']}")
    _check_meta_identity(ckpt, start, meta, identity)
    log.info("%s: resumed from step %d in %s", desc, start, ckpt.directory)
  meta_extra = {} if identity is None else {
      "identity": identity_lib.normalize(identity)}
  writer = MetricWriter(stage_dir, resume_step=start)
  watch = _DeadGradientWatch(loop.dead_check_steps, start, desc,
                             read_train_summary(stage_dir) if start else None)
  last = {}
  pending = None
  t0 = time.time()

  def flush(force=False):
    host = _log_pending(pending, writer, pbar, loop, ckpt, force=force)
    last.update(host)
    if watch.observe(pending[0], host):
      writer.write(pending[0] + 1, {"dead_gradient": 1.0})

  try:
    with tqdm.tqdm(total=loop.num_steps, initial=start, desc=desc,
                   dynamic_ncols=True, mininterval=1.0) as pbar:
      for step in range(start, loop.num_steps):
        batch = batch_fn(step)
        if batch_sharding is not None:
          batch = device_batch(batch, batch_sharding)
        state, metrics = train_step(state, batch)
        if pending is not None:  # read step n-1 after dispatching step n
          flush()
        pending = (step, metrics)
        pbar.update(1)
        done = step + 1 == loop.num_steps
        if (step + 1) % loop.ckpt_every == 0 or done:
          flush(force=True)
          pending = None
          if not bool(_all_finite_jit(state["params"])):
            raise FloatingPointError(
                f"the params are not finite after step {step}: stopping "
                f"before they are saved; the last good checkpoint is step "
                f"{ckpt.latest_step()} in {ckpt.directory}.")
          ckpt.save(step + 1, state,
                    {"step": step + 1, "data_position": step + 1, **meta_extra},
                    config_dict, force=True)
        if (eval_fn is not None and loop.eval_every
            and (step + 1) % loop.eval_every == 0):
          ev = eval_fn(step + 1, state["params"])
          writer.write(step + 1, {f"eval/{k}": v for k, v in ev.items()})
          log.info("%s step %d eval: %s", desc, step + 1, ev)
        if step + 1 == loop.kill_at_step:
          os.kill(os.getpid(), signal.SIGKILL)
      if pending is not None:
        flush(force=True)
  finally:
    ckpt.close()
    writer.close()
  if jax.process_index() == 0:
    stage_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stage_dir / SUMMARY_FILE, {
        "desc": desc, "num_steps": loop.num_steps, "resumed_from": start,
        "dead_gradient": watch.dead, "dead_reason": watch.reason,
        "final_loss": float(last["loss"]) if "loss" in last else None,
        "final_grad_norm": (float(last["grad_norm"]) if "grad_norm" in last
                            else None)})
  log.info("%s: %d steps in %.1fs", desc, loop.num_steps - start,
           time.time() - t0)
  return state


def _how_to_fix(ckpt) -> str:
  return (f"restore the old settings to resume; or use a new --workdir; or "
          f"delete {ckpt.directory} to retrain this stage from scratch with "
          "the new settings")


def _check_resume_identity(ckpt, config_dict, identity, ignore) -> None:
  if config_dict is None or not ckpt.all_steps():
    return
  stored = ckpt.read_config()
  if stored is None:
    log.warning("%s has no stored config: cannot check that it was made with "
                "the same settings", ckpt.directory)
    return
  step, stored_config = stored
  identity_lib.check(
      stored_config, config_dict,
      what=f"checkpoints in {ckpt.directory} (step {step})",
      how_to_fix=_how_to_fix(ckpt), ignore=ignore)


def _check_meta_identity(ckpt, step, meta, identity) -> None:
  if identity is None:
    return
  stored = meta.get("identity")
  if stored is None:
    log.warning("checkpoint %d in %s has no stored identity to compare",
                step, ckpt.directory)
    return
  identity_lib.check(
      stored, identity,
      what=f"checkpoints in {ckpt.directory} (step {step})",
      how_to_fix=_how_to_fix(ckpt))


def _log_pending(pending, writer, pbar, loop, ckpt, force=False) -> dict:
  step, metrics = pending
  host = _check_finite(step, metrics, ckpt)
  if force or step % loop.log_every == 0:
    writer.write(step + 1, host)
    pbar.set_postfix(loss=f"{float(host['loss']):.4f}")
  return host
