r"""MATH SFT of the Gemma-2 9B policy (Setlur et al. 2024, App. E), on TPU/GPU.

UNTESTED ON HARDWARE. Everything below about run time, memory and accuracy is
an estimate from arithmetic, not a measurement: this config has only been
loaded, converted to a ModelConfig and had its sharding checked on a CPU with
8 fake devices (tests/scale_configs_test.py).

Command (TPU v5p-32 slice, run on every worker; see tools/launch_tpu.sh):

  python -m pav_jax.main --config=configs/gemma2_9b.py:tpu_v5p_32 \
      --workdir=/gcs/BUCKET/pav/gemma2_9b_sft \
      --config.init_checkpoint=/data/gemma-2-9b \
      --config.tokenizer.path=/data/gemma-2-9b/tokenizer.model \
      --config.task.data_dir=/data/math

Command (one host with 8 GPUs, one process):

  python -m pav_jax.main --config=configs/gemma2_9b.py:gpu_8 \
      --workdir=runs/gemma2_9b_sft --config.sft.max_len=512 \
      --config.init_checkpoint=... \
      --config.tokenizer.path=... --config.task.data_dir=...

`init_checkpoint` is the Hugging Face `google/gemma-2-9b` directory
(config.json + *.safetensors; pav_jax.hf_gemma) or an orbax params directory;
`tokenizer.path` is the Gemma SentencePiece model (tokenizer.model in the
same HF directory). `task.data_dir` holds MATH `train.jsonl` / `test.jsonl`
(see pav_jax/tasks/math_task.py). The workdir is opened with pathlib: on a
multi-host slice use a filesystem every host sees (a gcsfuse mount such as
/gcs/BUCKET/...), not a gs:// URL.

Prover: the same config pointed at another checkpoint. The paper's provers
are policies of the same family (e.g. a Best-of-K of a 2B/9B SFT policy, or
the 9B policy as the prover of a 2B base); to SFT a prover, run this file
(or the 2B/27B one) again with `--config.init_checkpoint=<prover start
checkpoint>` and a different `--workdir`. Rollouts then load the exported
`<workdir>/sft/params`.

Arguments (`:arg`; hardware, mesh, estimated GB per device, see Memory):
  tpu_v5e_64  64 x v5e (16 GiB), 16 hosts  fsdp=32 tensor=2   ~11 GB
  tpu_v5p_32  16 x v5p (95 GiB), 4 hosts   fsdp=16            ~45 GB
  gpu_16      2 hosts x 8 H100 80 GB       fsdp=16            ~45 GB
  gpu_8       8 x H100 80 GB, 1 process    fsdp=8             ~90 GB
(no arg = tpu_v5p_32). The global batch (32) is split over data x fsdp.
gpu_8 is over budget at 1,024 tokens by this estimate: pass
--config.sft.max_len=512 (~50 GB; longer examples are dropped, with a
warning) or use gpu_16. pav_jax does not rematerialise activations yet.

Hyper-parameters (paper): SFT 5,000 iterations, batch 32, Adam (weight
decay 0), peak learning rate 5e-6, 500 linear warm-up steps then cosine
decay (to 10% of the peak; Adam b2 = 0.98 and clipping at global norm 1
come from train_lib.OptimConfig); bf16 compute with float32 params and
optimizer state. Sequences are
at most 1,024 tokens; sampling uses a 1,536-slot KV cache (prompt bucket up
to 1,024 + 512 new tokens).

Memory (rough, probably pessimistic estimate): params + Adam moments +
grads are 16 B/param = 148 GB in total; the activations saved for the
backward pass (no rematerialisation) are ~18 GB per 1,024-token sequence
(~15 GB in the 42 blocks, ~3.5 GB of float32 logits over the 256k vocabulary),
576 GB for the batch. Per device: (148 + 576) GB / devices, plus XLA's
temporaries.

Run time (estimate): 5,000 x 32 x 1,024 = 164M tokens, 6 N tokens = 9.1e18
FLOPs: ~55 min on tpu_v5p_32, ~35 min on tpu_v5e_64, ~30 min on gpu_16 at
35-40% MFU (this code has no fused attention: expect lower MFU), plus
evaluation (500 MATH500 prompts x 16 samples x <= 512 tokens, memory-bound
decoding: tens of minutes) and loading the checkpoint.

Expected result (not measured here): pass@1 on MATH500 of the SFT policy in
the range the paper reports for its Gemma-2 9B SFT policy (clearly above
the 2B policy); compare `<workdir>/report.md` with the paper's figures before
trusting any downstream PAV experiment.
"""

import ml_collections

from pav_jax import defaults

PRESET = "gemma2_9b"
LEARNING_RATE = 5e-6
# Placeholders: set with --config.init_checkpoint / --config.tokenizer.path.
INIT_CHECKPOINT = "/path/to/gemma-2-9b"
TOKENIZER = "/path/to/gemma-2-9b/tokenizer.model"

# arg -> (mesh, multi-host, devices, HBM GiB per device, description).
HARDWARE = {
    "tpu_v5e_64": ({"data": 1, "fsdp": 32, "tensor": 2}, True, 64, 16,
                   "TPU v5e-64 slice: 64 chips on 16 hosts"),
    "tpu_v5p_32": ({"data": 1, "fsdp": 16, "tensor": 1}, True, 16, 95,
                   "TPU v5p-32 slice: 16 chips on 4 hosts"),
    "gpu_16": ({"data": 1, "fsdp": 16, "tensor": 1}, True, 16, 80,
               "2 hosts x 8 x H100 80 GB, one process per host"),
    "gpu_8": ({"data": 1, "fsdp": 8, "tensor": 1}, False, 8, 80,
              "one host, 8 x H100 80 GB, one process"),
}
DEFAULT_ARG = "tpu_v5p_32"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """MATH SFT of Gemma-2 9B; `arg` picks the hardware (see HARDWARE)."""
  return defaults.gemma_math_sft(
      preset=PRESET, arg=arg or DEFAULT_ARG, hardware=HARDWARE,
      learning_rate=LEARNING_RATE, init_checkpoint=INIT_CHECKPOINT,
      tokenizer=TOKENIZER, eval_batch_rows=32)
