"""Compute accounting of test-time search: one type, exact token counts.

Per problem, padding excluded:
  prefilled tokens: prompt tokens read by the policy before sampling;
  generated tokens: tokens sampled by the policy (each costs one forward);
  verifier tokens:  tokens read by the verifier(s).
Every method charges the prompt once per problem, to the policy and to each
verifier: beam search prefills the question once and forks both caches; a
best-of-N verifier is charged the same way (prompt once + all N responses),
since it too can prefill the question once and fork it per sample, even
where our implementation reads each sample in one pass for simplicity.
The test-time Monte-Carlo scorer (`mc_scorer`) has no verifier tokens: its
rollouts are policy compute (generated tokens, plus prefilled tokens where
a prefix is prefilled rather than forked from a cache).
  FLOPs = 2 * N_policy * (prefilled + generated) + 2 * N_verifier * verifier
where N_policy counts the policy's parameters (embedding once: it is the
output projection) and N_verifier the verifier's non-embedding parameters
plus its head (its embedding is a lookup). Attention over the context
(2 * 2 * layers * T * heads * head_dim per token) is left out: at these
lengths it is < 15% of the total for the tiny model and the same for all
methods per token.
"""

from __future__ import annotations

import dataclasses

from flax import nnx

from pav_jax import config as config_lib


@dataclasses.dataclass
class Compute:
  """Token counts of one method (totals or per problem)."""

  prefilled_tokens: float = 0.0
  generated_tokens: float = 0.0
  verifier_tokens: float = 0.0

  def flops(self, policy_params: int, verifier_params: int) -> float:
    policy_tokens = self.prefilled_tokens + self.generated_tokens
    return (2.0 * policy_params * policy_tokens
            + 2.0 * verifier_params * self.verifier_tokens)

  def scaled(self, f: float) -> Compute:
    return Compute(self.prefilled_tokens * f, self.generated_tokens * f,
                   self.verifier_tokens * f)

  def __add__(self, other: Compute) -> Compute:
    return Compute(*(getattr(self, f.name) + getattr(other, f.name)
                     for f in dataclasses.fields(self)))

  def as_dict(self) -> dict[str, float]:
    return dataclasses.asdict(self)



def policy_flop_params(cfg: config_lib.ModelConfig) -> int:
  """Parameters a policy token touches (tied embedding = output head)."""
  return cfg.num_params()


def verifier_flop_params(cfg: config_lib.ModelConfig) -> int:
  """Parameters a verifier token touches: backbone minus embedding, + head."""
  return cfg.num_params() - cfg.vocab_size * cfg.embed_dim + cfg.embed_dim + 1


def verifier_config(graphdef, params) -> config_lib.ModelConfig:
  """The backbone ModelConfig of a (graphdef, params) verifier."""
  return nnx.merge(graphdef, params).backbone.cfg

