r"""MATH SFT of the Gemma-2 27B policy (Setlur et al. 2024, App. E), on TPU/GPU.

UNTESTED ON HARDWARE. Everything below about run time, memory and accuracy is
an estimate from arithmetic, not a measurement: this config has only been
loaded, converted to a ModelConfig and had its sharding checked on a CPU with
8 fake devices (tests/scale_configs_test.py).

Command (TPU v5p-64 slice, run on every worker; see tools/launch_tpu.sh):

  python -m pav_jax.main --config=configs/gemma2_27b.py:tpu_v5p_64 \
      --workdir=/gcs/BUCKET/pav/gemma2_27b_sft \
      --config.init_checkpoint=/data/gemma-2-27b \
      --config.tokenizer.path=/data/gemma-2-27b/tokenizer.model \
      --config.task.data_dir=/data/math

Command (4 hosts with 8 GPUs each, one process per host; see
docs/multihost.md for JAX_COORDINATOR_ADDRESS etc.):

  python -m pav_jax.main --config=configs/gemma2_27b.py:gpu_32 \
      --workdir=/shared/runs/gemma2_27b_sft --config.init_checkpoint=... \
      --config.tokenizer.path=... --config.task.data_dir=...

`init_checkpoint` is the Hugging Face `google/gemma-2-27b` directory
(config.json + *.safetensors; pav_jax.hf_gemma) or an orbax params directory;
`tokenizer.path` is the Gemma SentencePiece model (tokenizer.model in the
same HF directory). `task.data_dir` holds MATH `train.jsonl` / `test.jsonl`
(see pav_jax/tasks/math_task.py). The workdir is opened with pathlib: on a
multi-host slice use a filesystem every host sees (a gcsfuse mount such as
/gcs/BUCKET/...), not a gs:// URL.

Prover: the same config pointed at another checkpoint. The paper's provers
are policies of the same family (e.g. a Best-of-K of an SFT policy, or a
larger policy as the prover of a smaller base); to SFT a prover, run this
file (or the 2B/9B one) again with `--config.init_checkpoint=<prover start
checkpoint>` and a different `--workdir`. Rollouts then load the exported
`<workdir>/sft/params`.

Arguments (`:arg`; hardware, mesh, estimated GB per device, see Memory):
  tpu_v5p_64   32 x v5p (95 GiB), 8 hosts    fsdp=16 tensor=2   ~51 GB
  tpu_v5e_128  128 x v5e (16 GiB), 32 hosts  fsdp=32 tensor=4   ~13 GB
  gpu_32       4 hosts x 8 H100 80 GB        fsdp=16 tensor=2   ~51 GB
  gpu_8        8 x H100 80 GB, 1 process     fsdp=4  tensor=2  ~200 GB
(no arg = tpu_v5p_64). The global batch (32) is split over data x fsdp;
tensor splits heads, MLP and vocabulary. gpu_8 holds the sharded params,
Adam state and grads (54 GB/GPU) but not the activations of batch-32 SFT at
1,024 tokens by this estimate: it is the layout for sampling and evaluation
of a trained 27B policy or prover on one 8-GPU host; train on gpu_32 or
TPU. pav_jax does not rematerialise activations yet.

Hyper-parameters (paper): SFT 5,000 iterations, batch 32, Adam (weight
decay 0), peak learning rate 5e-7, 500 linear warm-up steps then cosine
decay (to 10% of the peak; Adam b2 = 0.98 and clipping at global norm 1
come from train_lib.OptimConfig); bf16 compute with float32 params and
optimizer state. Sequences are
at most 1,024 tokens; sampling uses a 1,536-slot KV cache (prompt bucket up
to 1,024 + 512 new tokens).

Memory (rough, probably pessimistic estimate): params + Adam moments +
grads are 16 B/param = 435 GB in total; the activations saved for the
backward pass (no rematerialisation) are ~37 GB per 1,024-token sequence
(~33 GB in the 46 blocks, ~3.5 GB of float32 logits), 1.2 TB for the batch.
Per device: (435 + 1,184) GB / devices, plus XLA's temporaries.

Run time (estimate): 5,000 x 32 x 1,024 = 164M tokens, 6 N tokens = 2.7e19
FLOPs: ~80 min on tpu_v5p_64, ~50 min on tpu_v5e_128, ~40 min on gpu_32 at
35-40% MFU (this code has no fused attention: expect lower MFU), plus
evaluation (500 MATH500 prompts x 16 samples x <= 512 tokens, memory-bound
decoding: tens of minutes) and loading the checkpoint.

Expected result (not measured here): pass@1 on MATH500 of the SFT policy in
the range the paper reports for its Gemma-2 27B SFT policy (above the
9B policy); compare `<workdir>/report.md` with the paper's figures before
trusting any downstream PAV experiment.
"""

import ml_collections

from pav_jax import defaults

PRESET = "gemma2_27b"
LEARNING_RATE = 5e-7
# Placeholders: set with --config.init_checkpoint / --config.tokenizer.path.
INIT_CHECKPOINT = "/path/to/gemma-2-27b"
TOKENIZER = "/path/to/gemma-2-27b/tokenizer.model"

# arg -> (mesh, multi-host, devices, HBM GiB per device, description).
HARDWARE = {
    "tpu_v5p_64": ({"data": 1, "fsdp": 16, "tensor": 2}, True, 32, 95,
                   "TPU v5p-64 slice: 32 chips on 8 hosts"),
    "tpu_v5e_128": ({"data": 1, "fsdp": 32, "tensor": 4}, True, 128, 16,
                    "TPU v5e-128 slice: 128 chips on 32 hosts"),
    "gpu_32": ({"data": 1, "fsdp": 16, "tensor": 2}, True, 32, 80,
               "4 hosts x 8 x H100 80 GB, one process per host"),
    "gpu_8": ({"data": 1, "fsdp": 4, "tensor": 2}, False, 8, 80,
              "one host, 8 x H100 80 GB, one process (sampling/eval)"),
}
DEFAULT_ARG = "tpu_v5p_64"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """MATH SFT of Gemma-2 27B; `arg` picks the hardware (see HARDWARE)."""
  return defaults.gemma_math_sft(
      preset=PRESET, arg=arg or DEFAULT_ARG, hardware=HARDWARE,
      learning_rate=LEARNING_RATE, init_checkpoint=INIT_CHECKPOINT,
      tokenizer=TOKENIZER, eval_batch_rows=32)
