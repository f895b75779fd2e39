"""Host-side (numpy) evaluation metrics: pass@k, AUROC, calibration, votes.

Evaluation, not training: none of these runs under `jax.jit`. Shapes: E =
problems, K = samples per problem (`correct_EK`, `scores_EK`).
"""

import collections
from typing import Sequence

import numpy as np


def pass_at_k(n: np.ndarray, c: np.ndarray, k: int) -> np.ndarray:
  """Unbiased pass@k from n samples with c correct (Chen et al., 2021).

  1 - C(n - c, k) / C(n, k), computed as a stable product.
  """
  n = np.asarray(n, dtype=np.int64)
  c = np.asarray(c, dtype=np.int64)
  if np.any(k > n):
    raise ValueError(
        f"pass@{k} needs at least {k} samples per problem; got {n.min()}")
  out = np.empty(np.broadcast(n, c).shape, dtype=np.float64)
  for idx in np.ndindex(out.shape):
    ni = int(np.broadcast_to(n, out.shape)[idx])
    ci = int(np.broadcast_to(c, out.shape)[idx])
    if ni - ci < k:
      out[idx] = 1.0
    else:
      out[idx] = 1.0 - np.prod(1.0 - k / np.arange(ni - ci + 1, ni + 1))
  return out


def binomial_ci(q: np.ndarray, n: int, z: float = 3.29) -> np.ndarray:
  """Half-width of a Wilson-style normal CI for a Bernoulli mean from n draws.

  z = 3.29 is two-sided 99.9%. Adds 1/n of continuity so q in {0, 1} gets a
  nonzero width.
  """
  q = np.asarray(q, dtype=np.float64)
  return z * np.sqrt(q * (1 - q) / n) + 1.0 / n


def auroc(score: np.ndarray, label: np.ndarray) -> float:
  """Area under the ROC curve (Mann-Whitney, tied ranks); nan if one class."""
  label = np.asarray(label) > 0.5
  n1, n0 = label.sum(), (~label).sum()
  if n1 == 0 or n0 == 0:
    return float("nan")
  order = np.argsort(score, kind="mergesort")
  ranks = np.empty(len(score))
  s = np.asarray(score)[order]
  i = 0
  while i < len(s):
    j = i
    while j + 1 < len(s) and s[j + 1] == s[i]:
      j += 1
    ranks[order[i:j + 1]] = (i + j) / 2 + 1
    i = j + 1
  return float((ranks[label].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def calibration(pred: np.ndarray, target: np.ndarray, bins: int = 10):
  """(bin centres, mean pred, mean target, counts, ECE): reliability plot."""
  edges = np.linspace(0, 1, bins + 1)
  b = np.clip(np.digitize(pred, edges) - 1, 0, bins - 1)
  cnt = np.bincount(b, minlength=bins)
  mp = np.bincount(b, pred, bins) / np.maximum(cnt, 1)
  mt = np.bincount(b, target, bins) / np.maximum(cnt, 1)
  ece = float(np.sum(cnt * np.abs(mp - mt)) / max(cnt.sum(), 1))
  return (edges[:-1] + edges[1:]) / 2, mp, mt, cnt, ece


def best_threshold_error(score_val, y_val, score_test, y_test) -> float:
  """Test error of `score >= thr`, thr tuned on the validation split."""
  if len(score_val) == 0 or len(score_test) == 0:
    return float("nan")
  u = np.unique(score_val)
  cands = np.concatenate([[-np.inf, np.inf], (u[1:] + u[:-1]) / 2])
  errs = [np.mean((score_val >= c) != (y_val > 0.5)) for c in cands]
  thr = cands[int(np.argmin(errs))]
  return float(np.mean((score_test >= thr) != (y_test > 0.5)))


# Best-of-n, majority vote, pass@n over K samples per problem ------------------


def groups(k: int, n: int) -> int:
  """Disjoint groups of n among k samples (each is one best-of-n run)."""
  if n > k:
    raise ValueError(f"best-of-{n} needs {n} samples per problem, got {k}")
  return k // n


def best_of_n(scores_EK: np.ndarray, correct_EK: np.ndarray, n: int) -> float:
  """Accuracy of best-of-n, averaged over the K // n disjoint groups.

  Ties go to the earlier sample.
  """
  p, k = correct_EK.shape
  g = groups(k, n)
  s_EGN = np.asarray(scores_EK)[:, : g * n].reshape(p, g, n)
  c_EGN = np.asarray(correct_EK)[:, : g * n].reshape(p, g, n)
  pick_EG = np.argmax(s_EGN, axis=2)
  return float(np.take_along_axis(c_EGN, pick_EG[..., None], 2).mean())


def majority_pick(answers: Sequence[str | None]) -> int | None:
  """Index of a sample holding the most frequent answer (None: no answer).

  Ties go to the answer that appears first.
  """
  counts = collections.Counter(a for a in answers if a is not None)
  if not counts:
    return None
  best = max(counts.values())
  for i, a in enumerate(answers):
    if a is not None and counts[a] == best:
      return i
  return None  # unreachable


def majority_vote(answers_EK: Sequence[Sequence[str | None]],
                  correct_EK: np.ndarray, n: int) -> float:
  """Accuracy of majority voting over n samples, averaged over groups."""
  correct_EK = np.asarray(correct_EK)
  p, k = correct_EK.shape
  g = groups(k, n)
  total = 0.0
  for i in range(p):
    for j in range(g):
      pick = majority_pick(answers_EK[i][j * n:(j + 1) * n])
      total += 0.0 if pick is None else float(correct_EK[i, j * n + pick])
  return total / (p * g)


def weighted_majority_pick(answers: Sequence[str | None],
                           scores: Sequence[float]) -> int | None:
  """Index of a sample of the answer with the largest summed score.

  Each distinct answer gets the sum of its samples' verifier scores (None:
  no answer, never picked; None if no sample has an answer). Ties go to the
  answer that appears first; the returned sample is that answer's first.
  """
  totals: dict[str, float] = {}
  first: dict[str, int] = {}
  for i, (a, s) in enumerate(zip(answers, scores)):
    if a is None:
      continue
    totals[a] = totals.get(a, 0.0) + float(s)
    first.setdefault(a, i)
  if not totals:
    return None
  best = max(totals.values())
  return min(first[a] for a, t in totals.items() if t == best)


def weighted_majority_vote(answers_EK: Sequence[Sequence[str | None]],
                           scores_EK: np.ndarray, correct_EK: np.ndarray,
                           n: int) -> float:
  """Accuracy of score-weighted majority voting over n samples (groups as
  in `majority_vote`)."""
  correct_EK = np.asarray(correct_EK)
  scores_EK = np.asarray(scores_EK, np.float64)
  p, k = correct_EK.shape
  g = groups(k, n)
  total = 0.0
  for i in range(p):
    for j in range(g):
      sl = slice(j * n, (j + 1) * n)
      pick = weighted_majority_pick(answers_EK[i][sl], scores_EK[i, sl])
      total += 0.0 if pick is None else float(correct_EK[i, j * n + pick])
  return total / (p * g)


def pass_at_n(correct_EK: np.ndarray, n: int) -> float:
  """Unbiased Pass@n (oracle grader) from K >= n samples per problem."""
  correct_EK = np.asarray(correct_EK)
  p, k = correct_EK.shape
  return float(pass_at_k(np.full(p, k), correct_EK.sum(1), n).mean())
