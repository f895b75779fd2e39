"""The ConfigDict schema shared by `configs/*.py` (entry-point layer only).

The library proper takes frozen dataclasses; only `main.py`, the config files
and this module know about ml_collections. Every key a run can set is
declared here, so `lock_config=True` turns a typo into an error naming it.
"""

import dataclasses

import ml_collections

from pav_jax import config as config_lib


def model_section(preset: str = "tiny", **overrides) -> ml_collections.ConfigDict:
  cfg = config_lib.PRESETS[preset]().replace(**overrides)
  d = dataclasses.asdict(cfg)
  # ConfigDict fields typed None accept nothing else from the command line;
  # 0 means "off" for the optional knobs.
  for k in ("query_pre_attn_scalar", "attn_logits_soft_cap",
            "final_logit_soft_cap", "sliding_window"):
    d[k] = d[k] or 0
  return ml_collections.ConfigDict(d)


def model_config(section) -> config_lib.ModelConfig:
  """ModelConfig from a config section (0 -> None for the optional knobs)."""
  d = dict(section)
  for k in ("query_pre_attn_scalar", "attn_logits_soft_cap",
            "final_logit_soft_cap", "sliding_window"):
    d[k] = d[k] or None
  return config_lib.ModelConfig.from_dict(d)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.stages = "sft"  # comma-separated, run in order; finished ones are skipped
  c.distributed = False  # jax.distributed.initialize() (multi-host)
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})

  c.task = ml_collections.ConfigDict()
  c.task.name = "arithmetic"
  c.task.num_train = 20_000
  c.task.num_eval = 128
  c.task.data_dir = ""  # GSM8K / MATH files; "" = $PAV_DATA_DIR or shared/
  c.task.knobs = ml_collections.ConfigDict()

  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.path = ""  # existing SentencePiece model; "" = train one
  c.tokenizer.vocab_size = 320

  c.model = model_section("tiny", vocab_size=320)
  # Start the policy from a checkpoint: an HF Gemma-2 directory (with
  # config.json) or an orbax params directory; "" = random init.
  c.init_checkpoint = ""

  c.sft = ml_collections.ConfigDict()
  c.sft.steps = 1500
  c.sft.batch_size = 64
  c.sft.max_len = 96
  c.sft.learning_rate = 3e-3
  c.sft.warmup_steps = 100
  c.sft.weight_decay = 0.01
  c.sft.grad_clip = 1.0
  c.sft.ckpt_every = 250
  c.sft.log_every = 25
  c.sft.eval_every = 0
  c.sft.kill_at_step = -1  # fault injection (tests only)

  c.sample = ml_collections.ConfigDict()
  c.sample.temperature = 1.0
  c.sample.top_k = 0  # 0 = off
  c.sample.top_p = 1.0  # 1.0 = off
  c.sample.cache_size = 192
  c.sample.max_new_tokens = 80

  c.eval = ml_collections.ConfigDict()
  c.eval.num_prompts = 128
  c.eval.samples_per_prompt = 16
  c.eval.batch_rows = 512

  # --- MC labelling under provers (labelling.py) ---
  c.label = ml_collections.ConfigDict()
  c.label.num_prompts = 96
  c.label.n_cov = 4  # seed rollouts per prompt
  c.label.n_mc = 8  # continuations per step-boundary prefix
  c.label.num_eval_prompts = 32  # held-out (test split) labelled set
  c.label.max_step_tokens = 32  # a longer seed step is truncated
  c.label.max_steps = 12  # most steps of a seed rollout
  c.label.prompts_per_chunk = 32  # one resumable shard per chunk
  c.label.mode = "fork"  # "fork" prefix caches or "reprefill" (baseline)
  c.label.cache_size = 192  # KV slots: prompt bucket + seed steps + response
  c.label.prover_checkpoint = ""  # params dir of a checkpoint prover mu
  c.label.first_pit_high = 0.0  # > 0: "first pit" prefixes of failing seeds

  # --- Verifiers: ORM, PRM-Q, PAV (train_verifier.py) ---
  c.verifier = ml_collections.ConfigDict()
  c.verifier.steps = 150
  c.verifier.batch_size = 32
  c.verifier.learning_rate = 1e-3
  c.verifier.a_direct = False  # also regress A^mu directly (beyond paper)

  # --- Search: best-of-N and step-level beam search (search.py) ---
  c.search = ml_collections.ConfigDict()
  c.search.num_prompts = 64
  c.search.alpha = 0.5
  c.search.prover_k = 4

  c.rft = ml_collections.ConfigDict()
  c.rft.enabled = False
  c.rft.num_prompts = 512
  c.rft.samples_per_prompt = 8
  c.rft.steps = 300
  c.rft.learning_rate = 1e-3
  return c
