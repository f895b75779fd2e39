"""Entry point: `python -m pav_jax.main --config=configs/NAME.py --workdir=DIR`.

Intentionally kept short: flags, logging, (multi-host) initialisation, the
mesh, then the pipeline's stages in order. Overrides: --config.sft.steps=10.
"""

import logging
from pathlib import Path

import jax
from absl import app, flags
from ml_collections import config_flags

from pav_jax import pipeline
from pav_jax import sharding

_CONFIG = config_flags.DEFINE_config_file("config", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where outputs go; reruns resume.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  config = _CONFIG.value
  sharding.maybe_initialize_distributed(config.distributed)
  logging.info("process %d/%d, devices: %s", jax.process_index(),
               jax.process_count(), jax.devices())
  mesh = sharding.make_mesh(dict(config.mesh))
  with jax.set_mesh(mesh):
    pipeline.run(config, Path(_WORKDIR.value), mesh)


if __name__ == "__main__":
  app.run(main)
