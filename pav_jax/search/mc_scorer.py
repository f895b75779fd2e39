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
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from pav_jax import mc_values


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
                 total_rows: int, budget: mc_values.Budget) -> np.ndarray:
    """Q̂ of token-list prefixes (each prefilled once, then forked n)."""
    succ = mc_values.continue_prefilled(
        sampler, params, list(prefixes_A), list(resp_A), np.asarray(prompt_A),
        keys, self.grade, self.settings, total_rows, budget, repeat=False)
    return succ / self.n
