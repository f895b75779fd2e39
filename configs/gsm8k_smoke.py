"""GSM8K smoke run: every stage on the shipped samples with the tiny model.

Command:  python -m pav_jax.main --config=configs/gsm8k_smoke.py \
              --workdir=runs/gsm8k_smoke
Hardware: 2 CPU cores, no accelerator.
Data:     tests/fixtures/data/gsm8k (12 train, 4 validation, 4 test problems
          from GSM8K, MIT licence); point `task.data_dir` at the full files to
          run the real data set.
Run time: ~2 min on 2 idle cores (tests/gsm8k_smoke_test.py runs it).
Result:   accuracy ~0 (a 0.8M-parameter model after 4 SFT steps); the run
          proves the GSM8K path (word-problem prompts, long sequences, the
          validation split, cache sizes) works through every stage.
"""

import pathlib

from pav_jax import defaults

_DATA = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / \
    "data" / "gsm8k"


def get_config(arg=None):
  del arg
  c = defaults.base_config()
  c.stages = "sft,label,verifiers,search"
  c.task.name = "gsm8k"
  c.task.data_dir = str(_DATA)
  c.task.num_train = 12
  c.task.num_eval = 4
  # Byte fallback needs 262 pieces and the samples have ~70 distinct chars.
  c.tokenizer.vocab_size = 384
  c.model = defaults.model_section("tiny", vocab_size=384)
  c.sft.steps = 4
  c.sft.batch_size = 4
  c.sft.max_len = 704  # word problems: ~630 tokens with a 384-piece vocab
  c.sft.warmup_steps = 1
  c.sft.ckpt_every = 2
  c.sft.log_every = 1
  c.sample.max_new_tokens = 24
  c.sample.cache_size = 288  # prompt bucket (<= 256) + 24 new tokens
  c.eval.num_prompts = 4
  c.eval.samples_per_prompt = 2
  c.label.num_prompts = 4
  c.label.num_eval_prompts = 4
  c.label.n_cov = 2
  c.label.n_mc = 2
  c.label.max_steps = 2
  c.label.max_step_tokens = 8
  c.label.prompts_per_chunk = 4
  c.label.cache_size = 544  # train prompts reach 281 tokens (bucket 512)
  c.verifier.steps = 2
  # The strong backbone is tested in tests/train_verifier_test.py; here the
  # policy itself is the backbone (its 704-token SFT step compiles once).
  c.verifier.strong_sft_steps = 0
  c.verifier.batch_size = 4
  c.verifier.ckpt_every = 1
  c.search.num_prompts = 4
  c.search.ns = "2"
  c.search.max_steps = 2
  c.search.max_step_tokens = 8
  c.search.logprob_bon = ""
  return c
