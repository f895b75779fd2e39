r"""Converts Gemma-2 checkpoints between the HF layout and pav_jax's orbax copy.

HF -> pav_jax (orbax StandardCheckpointer params + model_config.json):

  .venv/bin/python tools/convert_hf_gemma.py \
      --hf_dir=/ckpt/gemma-2-2b --out=/ckpt/gemma2_2b_pav --dtype=bfloat16

pav_jax -> HF (config.json + model.safetensors, sharded if requested):

  .venv/bin/python tools/convert_hf_gemma.py \
      --from_orbax=/ckpt/gemma2_2b_pav --out=/ckpt/gemma-2-2b-hf \
      --max_shard_bytes=5000000000

Weights stream tensor by tensor, so host memory stays near one copy of the
model (about 5 GB for gemma-2-2b in bfloat16). All logic lives in
`pav_jax/hf_gemma.py`.
"""

from absl import app
from absl import flags
from absl import logging
import jax

from pav_jax import hf_gemma

_HF_DIR = flags.DEFINE_string(
    "hf_dir", None, "HF checkpoint directory to convert to pav_jax/orbax."
)
_FROM_ORBAX = flags.DEFINE_string(
    "from_orbax", None,
    "Reverse direction: a pav_jax/orbax directory (written by this tool) to "
    "convert to the HF layout.",
)
_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
_DTYPE = flags.DEFINE_enum(
    "dtype", None, ["float32", "bfloat16"],
    "Dtype of the converted weights (default: float32 for HF -> orbax, as "
    "saved for orbax -> HF).",
)
_MAX_SHARD_BYTES = flags.DEFINE_integer(
    "max_shard_bytes", None,
    "orbax -> HF only: shard model.safetensors into files of at most this "
    "many bytes (default: one file).",
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if (_HF_DIR.value is None) == (_FROM_ORBAX.value is None):
    raise app.UsageError("give exactly one of --hf_dir and --from_orbax")
  if _HF_DIR.value is not None:
    cfg, _, params = hf_gemma.load_model(
        _HF_DIR.value, dtype=_DTYPE.value or "float32")
    hf_gemma.save_orbax(_OUT.value, cfg, params)
  else:
    cfg, _, params = hf_gemma.load_orbax(_FROM_ORBAX.value, _DTYPE.value)
    hf_gemma.save_model(
        _OUT.value, cfg, params, max_shard_bytes=_MAX_SHARD_BYTES.value)
  n = sum(x.size for x in jax.tree.leaves(params))
  logging.info("wrote %s: %s, %d params (%s)", _OUT.value, cfg, n, cfg.dtype)


if __name__ == "__main__":
  app.run(main)
