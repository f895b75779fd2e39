"""The test-time Monte-Carlo scorer: Q̂ from n forked policy rollouts.

No learned model: the value of a prefix is the fraction of n continuations
of the policy pi, forked from the prefix's KV cache, that the task's grader
marks correct -- the labeller's estimator (`mc_values`, the same code and,
with the same keys, the same values), run at search time. It is the ceiling
of a verifier trained on such labels, at a price: every rollout is policy
compute, charged to the method (`Compute.generated_tokens`, and
`prefilled_tokens` where a prefix must be prefilled).

Used by step-level beam search in place of the learned verifier (`beam.py`:
mode "q" scores Q̂^pi, mode "pav" Q̂^pi + alpha (BoK(Q̂) after - BoK(Q̂)
before), the same closed-form prover as the learned PAV). A step that ends
with EOS closes the trace: its value is the graded outcome (no rollouts).

Used by best-of-N as a process scorer (`bon_scores`): the min over a
sample's step prefixes of Q̂ -- every prefix closed by a step delimiter,
never the final EOS-closed one (that value is the graded outcome: the
oracle, i.e. Pass@N); V(s_1) where a sample has no such step. Each prefix
is prefilled once and forked n (its prefill and rollout tokens are charged
per sample).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from pav_jax import mc_values
from pav_jax import steps


@dataclasses.dataclass
class MCScorer:
  """Q̂^pi of prefixes from `n` rollouts of the policy (see module doc).

  Attributes:
    grade: grade(prompt index, response tokens without EOS) -> 0/1.
    n: rollouts per prefix.
    max_new_tokens: the response budget (prefix response + continuation).
    row_buckets: continuation batches padded to total_rows / row_buckets.
  """

  grade: mc_values.GradeFn
  n: int
  max_new_tokens: int
  row_buckets: int = 4

  @property
  def settings(self) -> mc_values.McSettings:
    return mc_values.McSettings(self.n, self.max_new_tokens, self.row_buckets)

  def q_rows(self, sampler, params, state, rows_A, resp_A: Sequence,
             prompt_A, keys: jax.Array, total_rows: int,
             budget: mc_values.Budget) -> np.ndarray:
    """Q̂ of the prefixes held by `state` rows `rows_A` (forked caches).

    `keys` are [A * n] continuation keys (`mc_values.mc_keys`).
    """
    succ = mc_values.continue_forked(
        sampler, params, state, np.asarray(rows_A), list(resp_A),
        np.asarray(prompt_A), keys, self.grade, self.settings, total_rows,
        budget)
    return succ / self.n

  def q_prefixes(self, sampler, params, prefixes_A: Sequence[Sequence[int]],
                 resp_A: Sequence, prompt_A, keys: jax.Array,
                 total_rows: int, budget: mc_values.Budget,
                 tokens_out: list | None = None) -> np.ndarray:
    """Q̂ of token-list prefixes (each prefilled once, then forked n)."""
    succ = mc_values.continue_prefilled(
        sampler, params, list(prefixes_A), list(resp_A), np.asarray(prompt_A),
        keys, self.grade, self.settings, total_rows, budget, repeat=False,
        tokens_out=tokens_out)
    return succ / self.n

  def bon_scores(self, sampler, params, prompts: Sequence[Sequence[int]],
                 responses: Sequence[Sequence[Sequence[int]]],
                 step_id: steps.StepIds,
                 rng: jax.Array, batch_prefixes: int = 64
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best-of-N scores of K samples per problem (see the module doc).

    Args:
      prompts: E token lists; responses: [E][K] (EOS excluded).
      step_id: the step delimiter id, or every id of a piece holding it
        (`Tokenizer.step_ids`).
      rng: key of the rollouts: prefix h of sample (e, k) uses
        mc_keys(fold_in(rng, e * (K + 1) + k), h, [0], n); V(s_1) of problem
        e uses k = K, h = 0.
      batch_prefixes: prefixes per decode batch (each forked n).

    Returns:
      (score_EK, tokens_EK2, v1_tokens_E2): scores; policy tokens spent on
      each sample's prefixes, [..., 0] prefilled and [..., 1] sampled; the
      same for each problem's V(s_1).
    """
    e_n, k_n = len(responses), len(responses[0])
    items = []  # (e, k or -1 for s_1, h, response prefix)
    for e in range(e_n):
      items.append((e, -1, 0, []))
      for k in range(k_n):
        r = list(responses[e][k])
        ends = steps.step_ends(r, step_id)
        items += [(e, k, h + 1, r[:end]) for h, end in enumerate(ends)]
    q, toks = np.zeros(len(items)), np.zeros((len(items), 2))
    budget = mc_values.Budget()
    for lo in range(0, len(items), batch_prefixes):
      part = items[lo:lo + batch_prefixes]
      keys = jax.numpy.concatenate([mc_values.mc_keys(
          jax.random.fold_in(rng, e * (k_n + 1) + (k_n if k < 0 else k)), h,
          np.array([0]), self.n) for e, k, h, _ in part])
      prefixes = [list(prompts[e]) + r for e, _, _, r in part]
      sampled = []
      q[lo:lo + len(part)] = self.q_prefixes(
          sampler, params, prefixes, [r for *_, r in part],
          [e for e, *_ in part], keys, batch_prefixes, budget, sampled)
      toks[lo:lo + len(part), 0] = [len(x) for x in prefixes]
      toks[lo:lo + len(part), 1] = sampled
    mc_values.check_cache_full(budget.cache_full_biased,
                               "MC scorer in best-of-N",
                               "sample.max_new_tokens (the search sampler's "
                               "cache)")
    score_EK = np.full((e_n, k_n), np.inf)
    tokens_EK = np.zeros((e_n, k_n, 2))
    v1_E, v1_tok_E = np.zeros(e_n), np.zeros((e_n, 2))
    for (e, k, _, _), qi, ti in zip(items, q, toks):
      if k < 0:
        v1_E[e], v1_tok_E[e] = qi, ti
      else:
        score_EK[e, k] = min(score_EK[e, k], qi)
        tokens_EK[e, k] += ti
    score_EK = np.where(np.isinf(score_EK), v1_E[:, None], score_EK)
    return score_EK, tokens_EK, v1_tok_E
