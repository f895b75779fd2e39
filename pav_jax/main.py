"""Entry point: `python -m pav_jax.main --config=configs/NAME.py --workdir=DIR`.

Intentionally kept short: flags, logging, config validation, (multi-host)
initialisation, the mesh, a lock on the workdir, then the pipeline's stages
in order. Overrides: --config.sft.steps=10. `--list` prints the stages and
every config key with its default (and exits).

The workdir lock (`<workdir>/.lock`, see workdir_lock) is taken by process 0
only: multi-host runs share one workdir, and a lock per process on a shared
filesystem would refuse the run's own other processes.
"""

import contextlib
import logging
from pathlib import Path

import jax
from absl import app, flags
from ml_collections import config_flags

from pav_jax import config_checks
from pav_jax import defaults
from pav_jax import identity
from pav_jax import pipeline
from pav_jax import sharding
from pav_jax import workdir_lock

_CONFIG = config_flags.DEFINE_config_file("config", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Where outputs go; reruns resume.")
_LIST = flags.DEFINE_bool(
    "list", False, "Print the stages and every config key with its default "
    "(and the --config file's value where it differs), then exit.")


def list_text(config=None) -> str:
  """The stages and every config key of `defaults.base_config()`.

  Args:
    config: Optional loaded config; its values are shown where they differ
      from the defaults, and its extra keys are listed too.
  """
  lines = ["Stages (run in order of --config.stages, finished ones skipped):"]
  lines += [f"  {name}" for name in pipeline.STAGES]
  base = identity.flatten(defaults.base_config().to_dict())
  have = identity.flatten(config.to_dict()) if config is not None else {}
  lines.append("")
  lines.append("Config keys (--config.<key>=VALUE), default"
               + (" [this config's value]" if config is not None else "") + ":")
  for key in sorted(set(base) | set(have)):
    default = repr(base[key]) if key in base else "(not in the defaults)"
    line = f"  {key} = {default}"
    if key in have and (key not in base or have[key] != base[key]):
      line += f"  [{have[key]!r}]"
    lines.append(line)
  return "\n".join(lines)


def main(argv):
  del argv
  if _LIST.value:
    print(list_text(_CONFIG.value))
    return 0
  if _CONFIG.value is None or _WORKDIR.value is None:
    raise app.UsageError("--config and --workdir are required (or --list)")
  logging.basicConfig(level=logging.INFO,
                      format="%(asctime)s %(name)s: %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  config = _CONFIG.value
  config_checks.validate(config)
  sharding.maybe_initialize_distributed(config.distributed)
  logging.info("process %d/%d, devices: %s", jax.process_index(),
               jax.process_count(), jax.devices())
  mesh = sharding.make_mesh(dict(config.mesh))
  workdir = Path(_WORKDIR.value)
  lock = (workdir_lock.hold(workdir) if jax.process_index() == 0
          else contextlib.nullcontext())
  with lock, jax.set_mesh(mesh):
    pipeline.run(config, workdir, mesh)


if __name__ == "__main__":
  app.run(main)
