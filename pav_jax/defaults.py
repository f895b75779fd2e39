"""The ConfigDict schema shared by `configs/*.py` (entry-point layer only).

The library proper takes frozen dataclasses; only `main.py`, the config files
and this module know about ml_collections. Every key a run can set is
declared here, so `lock_config=True` turns a typo into an error naming it.
"""

import dataclasses
import importlib.util
import pathlib

import ml_collections

from pav_jax import config as config_lib


def config_file_module(name: str):
  """Imports `configs/<name>.py` (config files may build on each other)."""
  path = pathlib.Path(__file__).resolve().parents[1] / "configs" / f"{name}.py"
  if not path.exists():
    raise FileNotFoundError(f"no config file {path}")
  spec = importlib.util.spec_from_file_location(f"pav_configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def model_section(preset: str = "tiny",
                  **overrides) -> ml_collections.ConfigDict:
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

  # --- The PAV: Q^pi + alpha A^mu with mu = BoK(pi); read by every stage
  # that needs it (verifier evaluation, search, RL), not part of the label
  # set's identity (labels are Q^pi; A^mu is computed from them).
  c.pav = ml_collections.ConfigDict()
  c.pav.alpha = 0.5
  c.pav.prover_k = 4  # K of the Best-of-K(pi) prover

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
  # KV slots of the seeds (prompt bucket + response) and of the per-step
  # paths (reprefill, adaptive MC, provers); the pooled MC rollouts of
  # fork mode size their own ring cache (mc_pool.ring_size).
  c.label.cache_size = 192
  c.label.prover_checkpoint = ""  # params dir of a checkpoint prover mu
  c.label.first_pit_high = 0.0  # > 0: "first pit" prefixes of failing seeds
  # First pit (labelling.py): "off", "filter" (first Q=0 after Q >= pit_high,
  # existing labels only) or "bisect" (extra n_pit-rollout probes locate it).
  c.label.first_pit = "off"
  c.label.pit_high = 0.0
  c.label.n_pit = 32
  c.label.pit_topup = True  # n_pit more rollouts for zeros before the pit
  # Adaptive MC (beyond the paper): 0 < n_mc_min < n_mc samples in rounds of
  # n_mc_min; "stop" ends a prefix when a round agrees (or its 99.9% CI
  # half-width <= mc_tol), "neyman" spreads the fixed budget by sqrt(q(1-q)).
  c.label.n_mc_min = 0
  c.label.mc_tol = 0.0
  c.label.mc_alloc = "stop"

  # --- Verifiers: ORM, PRM-Q, PAV (train_verifier.py) ---
  c.verifier = ml_collections.ConfigDict()
  # "lp_features": question head + learned weights on the backbone LM's
  # response log-probs (sum, min); "head": a head at every step end.
  c.verifier.design = "lp_features"
  # The backbone: the policy trained this many more SFT steps on the
  # reference solutions (a stronger model, inside the verifiers stage, into
  # verifiers/strong/); 0 = the policy itself.
  c.verifier.strong_sft_steps = 300
  c.verifier.strong_learning_rate = 1e-3
  c.verifier.steps = 150
  c.verifier.batch_size = 32  # rows; whole questions with group_batches
  c.verifier.group_batches = True  # batches of questions with all rollouts
  c.verifier.learning_rate = 1e-2  # head and lp_w
  c.verifier.backbone_lr_scale = 0.03  # backbone lr = this * learning_rate
  c.verifier.rank_weight = 1.0  # pairwise ranking among a question's prefixes
  c.verifier.rank_margin = 0.25  # pairs whose targets differ by >= this
  c.verifier.a_direct = False  # also regress A^mu directly (beyond paper)
  c.verifier.ckpt_every = 100

  # --- Search: best-of-N and step-level beam search (search/) ---
  c.search = ml_collections.ConfigDict()
  c.search.num_prompts = 32
  c.search.split = "test"
  c.search.ns = "2,4,8,16"  # comma-separated N (beam size / samples)
  c.search.expansions = 3  # C: next steps sampled per beam
  c.search.max_steps = 8
  c.search.max_step_tokens = 16
  c.search.batch_rows = 768  # decode rows per chunk (beam: B * C per problem)
  c.search.beam_modes = "q,pav"  # PRM-Q beam, PAV beam
  c.search.beam_start = "beam"  # "beam": B copies of the question; "one"
  c.search.mc_rollouts = 0  # > 0: MC-scorer beams (mc_q/mc_pav_beam); 0 off
  c.search.logprob_bon = "mean"  # policy log-prob best-of-N: mean/sum/"" off
  c.search.weighted_majority = True  # wmaj_* rows (verifier-weighted votes)
  c.search.beam_ns = ""  # N of the beams ("" = ns), e.g. "2,4,8"
  c.search.mc_ns = ""  # N of the MC-scorer beams ("" = beam_ns)
  c.search.mc_bon = True  # mc_min_bon rows (with mc_rollouts > 0)
  # "0": beams keep copies of a prefix (recorded default); "1": the top B
  # among distinct prefixes only; "0,1": both (rows *_distinct).
  c.search.beam_distinct = "0"
  # Sweeps (search/sweeps.py). With seeds or sweeps set, the stage writes an
  # experiment record (results.json with alpha/main/prover parts, tables.md,
  # main_seed<s>.json, plots) into out_dir; otherwise one comparison.
  c.search.out_dir = ""  # "" = <workdir>/search
  c.search.seeds = ""  # sampling seeds of the main part, e.g. "0,1,2"
  c.search.sweeps = ""  # "alpha" and/or "prover", e.g. "alpha,prover"
  c.search.main = True  # run the main comparison (all methods, every N)
  c.search.sweep_alphas = "0,0.1,0.2,0.3,0.5,0.7,1.0"  # validation split
  c.search.sweep_n = 16  # beam size of the alpha sweep
  c.search.sweep_prompts = 64  # validation problems of the alpha sweep
  c.search.sweep_seeds = "0,1"  # seeds of the alpha and prover sweeps
  c.search.sweep_prover_ks = "1,2,4,8,16,32"  # Bo-K(pi) provers
  c.search.sweep_distinct = False  # sweeps over distinct-prefix beams
  c.search.sweep_prover_ns = "4,16"  # beam sizes of the prover sweep
  # The alpha sweep's choice replaces c.pav.alpha for the main and prover
  # parts (set False to keep c.pav.alpha).
  c.search.use_swept_alpha = True

  # --- Online RL with dense PAV rewards (rl_stage.py, train_rl.py) ---
  c.rl = ml_collections.ConfigDict()
  c.rl.init = "rft"  # "rft": SFT on label/train's correct seeds; "sft"
  c.rl.rft_steps = 150
  c.rl.rft_learning_rate = 1e-3
  c.rl.iterations = 30
  c.rl.prompts_per_iter = 8
  c.rl.samples_per_prompt = 4  # rollout batch = prompts_per_iter * this
  c.rl.num_prompts = 512  # train prompt pool (stream rl_prompts)
  c.rl.seed = 0  # RL seed: rollouts and prompt order (eval keys fixed)
  c.rl.alpha = 1.0  # dense weight (0 = ORM-RL); best of {1,3,5} on
  # validation in experiments/2026-11-26_rl_arithmetic (paper: 5 at 2B)
  c.rl.dense = "advantage"  # "advantage" (A^mu) or "q" (Q^mu, App. G)
  c.rl.scorer = "pav"  # "pav" (prm_q + BoK prover), "mc", "none"
  c.rl.estimator = "value"  # policy_gradient.ESTIMATORS key
  c.rl.kl_coef = 1e-3
  c.rl.value_coef = 1.0
  c.rl.policy_lr = 1e-4
  c.rl.value_lr = 1e-3
  c.rl.warmup_steps = 3
  c.rl.grad_clip = 1.0
  c.rl.temperature = 1.0
  c.rl.max_prompt_len = 48
  c.rl.max_new_tokens = 80  # response budget of rollouts and evaluation
  c.rl.max_steps = 12  # step slots; tokens of later steps get no gradient
  c.rl.mc_samples = 4  # continuations per prefix (scorer "mc")
  c.rl.eval_split = "test"
  c.rl.eval_prompts = 64
  c.rl.eval_samples = 4  # pass@1 from this many samples per prompt
  c.rl.eval_every = 10
  c.rl.passn_max = 16  # final pass@1..16, init vs final; 0 = off
  c.rl.passn_prompts = 64
  c.rl.val_prompts = 0  # > 0: final pass@1 on validation (choosing alpha)
  c.rl.ckpt_every = 10
  c.rl.log_every = 1
  c.rl.kill_at_step = -1  # fault injection (tests only)
  c.rl.out_dir = ""  # "" = <workdir>/rl

  c.rft = ml_collections.ConfigDict()
  c.rft.enabled = False
  c.rft.num_prompts = 512
  c.rft.samples_per_prompt = 8
  c.rft.steps = 300
  c.rft.learning_rate = 1e-3
  return c


def gemma_math_sft(*, preset: str, arg: str, hardware: dict,
                   learning_rate: float,
                   init_checkpoint: str, tokenizer: str, eval_batch_rows: int
                   ) -> ml_collections.ConfigDict:
  """MATH SFT of a real Gemma-2 shape with the paper's hyper-parameters.

  `hardware` maps an arg to (mesh, multi_host, devices, HBM GiB, text); see
  configs/gemma2_*.py, which document each preset's meshes.
  """
  if arg not in hardware:
    raise ValueError(f"unknown hardware {arg!r} for {preset}; one of "
                     f"{sorted(hardware)}")
  mesh, multi_host, _, _, _ = hardware[arg]
  c = base_config()
  c.stages = "sft"
  c.distributed = multi_host
  c.mesh = ml_collections.ConfigDict(mesh)
  c.init_checkpoint = init_checkpoint
  c.task.name = "math"
  c.task.num_train = 12_000  # All of MATH train (7,500) if the file is smaller.
  c.task.num_eval = 500
  c.tokenizer.path = tokenizer
  c.tokenizer.vocab_size = 256_000
  c.model = model_section(preset, dtype="bfloat16")
  c.sft.steps = 5_000
  c.sft.batch_size = 32
  c.sft.max_len = 1_024
  c.sft.learning_rate = learning_rate
  c.sft.warmup_steps = 500
  c.sft.weight_decay = 0.0  # Adam, as in the paper.
  c.sft.grad_clip = 1.0
  c.sft.ckpt_every = 500
  c.sft.log_every = 10
  c.sample.temperature = 1.0
  c.sample.cache_size = 1_536
  c.sample.max_new_tokens = 512
  c.eval.num_prompts = 500
  c.eval.samples_per_prompt = 16
  c.eval.batch_rows = eval_batch_rows
  return c
