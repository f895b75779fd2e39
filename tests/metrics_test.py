"""Tests of pav_jax.metrics: weighted majority vote on hand-built cases."""

import numpy as np
import pytest

from pav_jax import metrics


def test_weighted_majority_pick_sums_scores_per_answer():
  # "3" has two votes (0.1 + 0.2 = 0.3); "5" one vote of 0.9: weighted
  # majority picks "5" where plain majority picks "3".
  answers = ["3", "5", "3", None]
  scores = [0.1, 0.9, 0.2, 5.0]  # the None sample's score never counts
  assert metrics.majority_pick(answers) == 0
  assert metrics.weighted_majority_pick(answers, scores) == 1
  # Equal weights: the same pick as majority vote.
  assert metrics.weighted_majority_pick(answers, [1.0] * 4) == 0


def test_weighted_majority_ties_and_none():
  # Tie (0.5 vs 0.5): the answer seen first; its first sample.
  assert metrics.weighted_majority_pick(["7", "8", "7"],
                                        [0.25, 0.5, 0.25]) == 0
  assert metrics.weighted_majority_pick(["8", "7", "7"],
                                        [0.5, 0.25, 0.25]) == 0
  assert metrics.weighted_majority_pick([None, None], [1.0, 2.0]) is None
  assert metrics.weighted_majority_pick([None, "4"], [9.0, 0.0]) == 1
  assert metrics.weighted_majority_pick([], []) is None


def test_weighted_majority_vote_accuracy_over_groups():
  answers = [["3", "5", "3", None], ["7", "8", "8", None]]
  correct = np.array([[0, 1, 0, 0], [1, 0, 0, 0]], float)
  scores = np.array([[0.1, 0.9, 0.2, 0.0], [0.8, 0.3, 0.3, 0.0]])
  # N=4: p0 "5" (0.9 > 0.3) right; p1 "7" (0.8 > 0.6) right.
  assert metrics.weighted_majority_vote(answers, scores, correct, 4) == 1.0
  assert metrics.majority_vote(answers, correct, 4) == 0.0
  # N=2 groups: p0 (3,5) -> 5 right, (3,None) -> 3 wrong; p1 (7,8) -> 7
  # right, (8,None) -> 8 wrong.
  assert metrics.weighted_majority_vote(answers, scores, correct, 2) == 0.5
  # A group with no answer counts as wrong.
  assert metrics.weighted_majority_vote([[None, None]], np.ones((1, 2)),
                                        np.ones((1, 2)), 2) == 0.0
  with pytest.raises(ValueError):
    metrics.weighted_majority_vote(answers, scores, correct, 8)
