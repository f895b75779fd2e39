"""Batched rollouts: k responses per prompt, forking each prompt's cache.

Prompts are processed in fixed-size chunks (padded with copies of the first
prompt) so the sampler compiles once per run, whatever the number of prompts.
`evaluate_policy` grades them: pass@k of a policy on held-out prompts (used by
SFT/RFT and, next, RL).
"""

import dataclasses
from typing import Sequence

import jax
import numpy as np

from pav_jax import metrics
from pav_jax import sampler as sampler_lib


@dataclasses.dataclass
class Rollouts:
  """Responses (token lists, EOS excluded) for each prompt: [E][K]."""

  responses: list[list[list[int]]]
  finished: np.ndarray  # bool [E, K]: ended with EOS (not truncated)
  logprob_sums: np.ndarray  # float [E, K]
  prefilled_tokens: int  # prompt tokens prefilled (once per prompt)
  generated_tokens: int


def sample(
    sampler: sampler_lib.Sampler,
    params,
    prompts: Sequence[Sequence[int]],
    k: int,
    rng: jax.Array,
    max_new_tokens: int,
    batch_rows: int = 512,
) -> Rollouts:
  """Draws k continuations of every prompt (prefill once, fork k)."""
  if k > batch_rows:
    raise ValueError(f"samples per prompt {k} exceed batch_rows {batch_rows}")
  per_chunk = max(batch_rows // k, 1)
  responses, finished, logps = [], [], []
  generated = 0
  for c, start in enumerate(range(0, len(prompts), per_chunk)):
    chunk = list(prompts[start:start + per_chunk])
    real = len(chunk)
    chunk += [chunk[0]] * (per_chunk - real)
    state = sampler.prefill(params, chunk, jax.random.fold_in(rng, c))
    out = sampler.decode(params, sampler_lib.fork(state, k), max_new_tokens)
    toks, lens, stops, lp = jax.device_get(
        (out.tokens_BN, out.length_B, out.stop_B, out.logprobs_BN))
    for p in range(real):
      rows = range(p * k, (p + 1) * k)
      resp = []
      for r in rows:
        seq = toks[r, : lens[r]].tolist()
        if seq and seq[-1] == sampler.eos_id:
          seq = seq[:-1]
        resp.append(seq)
        generated += int(lens[r])
      responses.append(resp)
      finished.append([stops[r] == sampler_lib.EOS for r in rows])
      logps.append([float(lp[r].sum()) for r in rows])
  return Rollouts(
      responses=responses,
      finished=np.asarray(finished, bool),
      logprob_sums=np.asarray(logps, np.float32),
      prefilled_tokens=sampler_lib.prefilled_tokens(prompts),
      generated_tokens=generated,
  )


@dataclasses.dataclass
class PolicyEval:
  metrics: dict[str, float]
  correct: np.ndarray  # [E, K]
  texts: list[list[str]]


def evaluate_policy(sampler, params, task, tok, examples, *, k: int,
                    max_new_tokens: int, rng, batch_rows: int) -> PolicyEval:
  """Samples k responses per held-out prompt: pass@1/4/16 and mean steps."""
  prompts = [tok.encode(task.prompt(ex), bos=True) for ex in examples]
  ro = sample(sampler, params, prompts, k, rng, max_new_tokens, batch_rows)
  texts = [[tok.decode(r) for r in rs] for rs in ro.responses]
  correct = np.array([[task.grade(ex, t) for t in ts]
                      for ex, ts in zip(examples, texts)], np.float64)
  c = correct.sum(1)
  scores = {
      f"pass@{j}": float(metrics.pass_at_k(np.full_like(c, k), c, j).mean())
      for j in (1, 4, 16, 64) if j <= k
  }
  scores["mean_steps"] = float(
      np.mean([len(task.steps(t)) for ts in texts for t in ts]))
  scores["truncated_frac"] = float(1.0 - ro.finished.mean())
  scores["generated_tokens"] = float(ro.generated_tokens)
  return PolicyEval(scores, correct, texts)
