"""Best-of-N: N full samples per problem, scored by a verifier.

Scores: an ORM (value at the final boundary), or a step verifier's
per-prefix values aggregated by `last` / `min` / `product` ("prm_last" reads
the PRM-Q/PAV model's Q^pi at the last prefix, i.e. uses it as an ORM), or
the PAV effective reward Q^pi + alpha A^mu aggregated by `min`, or the
policy's own log-probability of the sample (`logprob_scores`, mean or sum
over its tokens: a baseline with no verifier). Majority vote, weighted
majority vote (verifier scores summed per distinct answer) and Pass@N
(oracle) are in `metrics`.

Where a learned verifier reads a sample: the value at each step delimiter
and at EOS (`verifier.prefix_values`), not at an inserted scoring token:
the delimiter closes each prefix, so every prefix of a sample is scored in
one causal pass without adding tokens (docs/deviations.md).

Shapes: E problems, K samples per problem, P prefixes of a sample; B rows
(E * K flattened).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from pav_jax import advantages
from pav_jax import metrics
from pav_jax import rollouts
from pav_jax import sampler as sampler_lib
from pav_jax import steps
from pav_jax import verifier as verifier_lib
from pav_jax.search.compute import Compute

AGGREGATIONS = ("last", "min", "product")

def aggregate_steps(v_BP: jax.Array, mask_BP: jax.Array, how: str) -> jax.Array:
  """One score per trajectory from its prefix values (v_BP[:, 0] = V(s_1)).

  "last": the value of the last prefix (what an ORM reads); "min" / "product"
  over the steps' values v_BP[:, 1:] (V(s_1) alone if there is no step).
  """
  m_BP = mask_BP.astype(bool)
  if how == "last":
    last_B = jnp.maximum(jnp.sum(m_BP, axis=1) - 1, 0)
    return jnp.take_along_axis(v_BP, last_B[:, None], axis=1)[:, 0]
  steps_BP, smask_BP = v_BP[:, 1:], m_BP[:, 1:]
  has_B = jnp.any(smask_BP, axis=1)
  if how == "min":
    agg_B = jnp.min(jnp.where(smask_BP, steps_BP, jnp.inf), axis=1)
  elif how == "product":
    agg_B = jnp.prod(jnp.where(smask_BP, steps_BP, 1.0), axis=1)
  else:
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {how!r}")
  return jnp.where(has_B, agg_B, v_BP[:, 0])


def tanh_from_sigmoid(s: np.ndarray) -> np.ndarray:
  """tanh(x) from sigmoid(x): an a_direct verifier's A read as a value."""
  s = np.asarray(s, np.float64)
  with np.errstate(divide="ignore"):
    return np.tanh(np.log(s) - np.log1p(-s))


def pav_min_scores(v_BP: jax.Array, mask_BP: jax.Array, alpha: float,
                   prover_k: float, mu_BP: jax.Array | None = None,
                   prover: str = "bok") -> jax.Array:
  """min over steps of the effective reward Q^pi + alpha A^mu (PAV as ORM).

  prover "bok": A^mu from Q^pi in closed form; "q_mu": mu_BP holds a
  checkpoint prover's Q^mu per prefix, A = its step difference; "a_direct":
  mu_BP holds A^mu per prefix (index 0, the question, has none).
  """
  m_bool = mask_BP.astype(bool)
  if prover == "bok":
    r_BP = advantages.pav_rewards(v_BP, m_bool, alpha=alpha,
                                  prover_k=prover_k)
  else:
    if prover == "q_mu":
      a_BP = advantages.prover_advantages(v_BP, m_bool, q_mu_NP=mu_BP)
    elif prover == "a_direct":
      a_BP = jnp.asarray(mu_BP).at[:, 0].set(0.0)
    else:
      raise ValueError(f"unknown prover {prover!r}")
    r_BP = advantages.effective_rewards(v_BP, a_BP, m_bool, alpha)
  m_BP = mask_BP[:, 1:].astype(bool)
  agg_B = jnp.min(jnp.where(m_BP, r_BP[:, 1:], jnp.inf), axis=1)
  return jnp.where(jnp.any(m_BP, axis=1), agg_B, v_BP[:, 0])


@dataclasses.dataclass
class Samples:
  """K i.i.d. samples per problem with grades and per-sample token counts."""

  responses: list[list[list[int]]]  # [E][K], EOS excluded
  finished: np.ndarray  # bool [E, K]
  correct: np.ndarray  # float [E, K]
  answers: list[list[str | None]]  # [E][K]
  generated_EK: np.ndarray  # tokens sampled per sample (EOS included)
  prompt_len_E: np.ndarray
  logprob_EK: np.ndarray | None = None  # sum of log pi(token), EOS included


def draw_samples(sampler: sampler_lib.Sampler, policy_params, task, tok,
                 examples, prompts, k: int, rng: jax.Array,
                 max_new_tokens: int, batch_rows: int) -> Samples:
  """K samples per problem (prefill once, fork K), graded by the oracle."""
  # Chunks of whole problems, no bigger than needed (rollouts pads a short
  # last chunk with copies, which would be wasted work).
  per_chunk = max(1, min(len(prompts), batch_rows // k))
  n_chunks = -(-len(prompts) // per_chunk)
  per_chunk = -(-len(prompts) // n_chunks)
  ro = rollouts.sample(sampler, policy_params, prompts, k, rng, max_new_tokens,
                       batch_rows=per_chunk * k)
  texts = [[tok.decode(r) for r in rs] for rs in ro.responses]
  correct = np.array([[task.grade(ex, t) for t in ts]
                      for ex, ts in zip(examples, texts)], np.float64)
  answers = [[task.extract_answer(t) for t in ts] for ts in texts]
  gen = np.array([[len(r) for r in rs] for rs in ro.responses], np.int64)
  gen = gen + ro.finished.astype(np.int64)
  return Samples(ro.responses, ro.finished, correct, answers, gen,
                 np.array([len(x) for x in prompts], np.int64),
                 np.asarray(ro.logprob_sums, np.float64))


LOGPROB_KINDS = ("mean", "sum")


def logprob_scores(samples: Samples, how: str = "mean") -> np.ndarray:
  """The policy's log-probability of each sample [E, K] (no verifier).

  "sum": log pi(response); "mean": per sampled token (does not favour short
  responses). The sampler's log-probs are at temperature 1.
  """
  if samples.logprob_EK is None:
    raise ValueError("samples carry no log-probs")
  if how == "sum":
    return samples.logprob_EK
  if how == "mean":
    return samples.logprob_EK / np.maximum(samples.generated_EK, 1)
  raise ValueError(f"log-prob score must be one of {LOGPROB_KINDS}, "
                   f"got {how!r}")


def trajectories(prompts, responses, finished, pad_id: int, eos_id: int,
                 multiple: int = 32):
  """Right-padded BOS + prompt + response (+ EOS): (tokens, valid, plen)."""
  rows = [list(pr) + list(r) + ([eos_id] if f else [])
          for pr, r, f in zip(prompts, responses, finished)]
  t = -(-max(len(x) for x in rows) // multiple) * multiple
  tok_BT = np.full((len(rows), t), pad_id, np.int32)
  for i, x in enumerate(rows):
    tok_BT[i, : len(x)] = x
  valid_BT = np.arange(t)[None, :] < np.array([len(x) for x in rows])[:, None]
  return tok_BT, valid_BT, np.array([len(x) for x in prompts], np.int32)


_PREFIX_FNS: dict = {}


def _prefix_values_fn(graphdef, step_id: steps.StepIds, eos_id: int,
                      num_prefixes: int):
  """One jitted `prefix_values` per verifier graph (compiled once per shape)."""
  step_id = steps.as_ids(step_id)
  key = (id(graphdef), step_id, eos_id, num_prefixes)
  if key not in _PREFIX_FNS:
    _PREFIX_FNS[key] = (graphdef, jax.jit(functools.partial(
        verifier_lib.prefix_values, graphdef, step_id=step_id, eos_id=eos_id,
        num_prefixes=num_prefixes)))
  return _PREFIX_FNS[key][1]


def score_samples(graphdef, params, samples: Samples, prompts, *, pad_id: int,
                  step_id: steps.StepIds, eos_id: int,
                  num_prefixes: int = 32,
                  batch_rows: int = 512) -> tuple[np.ndarray, np.ndarray]:
  """Prefix values of every sample in one pass each: (v [E,K,P], mask)."""
  p = len(prompts)
  k = samples.correct.shape[1]
  flat_prompts = [prompts[i] for i in range(p) for _ in range(k)]
  flat_resp = [r for rs in samples.responses for r in rs]
  flat_fin = samples.finished.reshape(-1).tolist()
  tok_BT, valid_BT, plen_B = trajectories(flat_prompts, flat_resp, flat_fin,
                                          pad_id, eos_id)
  fn = _prefix_values_fn(graphdef, step_id, eos_id, num_prefixes)
  n = len(flat_resp)
  rows = min(batch_rows, n)
  vs, ms = [], []
  for s in range(0, n, rows):
    sl = slice(s, min(s + rows, n))
    pad = rows - (sl.stop - sl.start)

    def padr(x, sl=sl, pad=pad):
      return np.concatenate([x[sl], np.repeat(x[sl][:1], pad, 0)])

    v, msk = fn(params, padr(tok_BT), padr(valid_BT), padr(plen_B))
    v, msk = jax.device_get((v, msk))
    vs.append(v[: rows - pad])
    ms.append(msk[: rows - pad])
  v = np.concatenate(vs).reshape(p, k, num_prefixes)
  msk = np.concatenate(ms).reshape(p, k, num_prefixes)
  return v, msk


def bon_compute(samples: Samples, n: int, verifiers: int) -> Compute:
  """Mean per-problem compute of one best-of-n run (over disjoint groups).

  Each run prefills its prompt once and samples n responses; each verifier
  reads the prompt once and every response (it prefills the question once
  and forks its cache, as beam search does; see `compute`).
  """
  p, k = samples.correct.shape
  g = metrics.groups(k, n)
  gen_EG = samples.generated_EK[:, : g * n].reshape(p, g, n).sum(2)
  gen = float(gen_EG.mean())
  plen = float(samples.prompt_len_E.mean())
  return Compute(prefilled_tokens=plen, generated_tokens=gen,
                 verifier_tokens=verifiers * (plen + gen))



def mc_bon_compute(samples: Samples, n: int, tokens_EK2: np.ndarray,
                   v1_tokens_E2: np.ndarray) -> Compute:
  """`bon_compute` (no verifier) plus the MC scorer's policy tokens: each
  sample's prefixes ([..., 0] prefilled, [..., 1] sampled; summed over a
  group of n, averaged) and V(s_1) once per problem."""
  p, k = samples.correct.shape
  g = metrics.groups(k, n)
  grp = tokens_EK2[:, : g * n].reshape(p, g, n, 2).sum(2).mean((0, 1))
  v1 = v1_tokens_E2.mean(0)
  c = bon_compute(samples, n, 0)
  return Compute(c.prefilled_tokens + grp[0] + v1[0],
                 c.generated_tokens + grp[1] + v1[1], 0.0)
