"""Verifier-guided test-time search with compute accounting (paper Sec. 4).

Modules:
  beam.py            step-level beam search (PRM-Q or PAV), its state
  mc_scorer.py       the test-time Monte-Carlo scorer (no learned model)
  bon.py             best-of-N: samples, verifier scores, aggregations
  comparison.py      every method at every N (`compare`), settings
  compute.py         the compute-accounting type (tokens -> FLOPs)
  verifier_cache.py  the verifier read through a per-row KV cache
  report.py          summaries, tables, plots
  sweeps.py          the alpha / prover / seeds sweeps (config-driven)
  stage.py           the pipeline stage `run_search(run)`
The names below are re-exported for research code and tests.
"""

from pav_jax.metrics import best_of_n
from pav_jax.metrics import majority_pick
from pav_jax.metrics import majority_vote
from pav_jax.metrics import pass_at_n
from pav_jax.metrics import weighted_majority_pick
from pav_jax.metrics import weighted_majority_vote
from pav_jax.search.beam import BEAM_MODES
from pav_jax.search.beam import BEAM_STARTS
from pav_jax.search.beam import PROVERS
from pav_jax.search.beam import BeamConfig
from pav_jax.search.beam import BeamResult
from pav_jax.search.beam import BeamState
from pav_jax.search.beam import beam_scores
from pav_jax.search.beam import beam_search
from pav_jax.search.beam import distinct_mask
from pav_jax.search.beam import select_top
from pav_jax.search.bon import AGGREGATIONS
from pav_jax.search.bon import Samples
from pav_jax.search.bon import aggregate_steps
from pav_jax.search.bon import bon_compute
from pav_jax.search.bon import draw_samples
from pav_jax.search.bon import logprob_scores
from pav_jax.search.bon import mc_bon_compute
from pav_jax.search.bon import pav_min_scores
from pav_jax.search.bon import score_samples
from pav_jax.search.bon import tanh_from_sigmoid
from pav_jax.search.comparison import SearchSettings
from pav_jax.search.comparison import compare
from pav_jax.search.comparison import settings_from_config
from pav_jax.search.compute import Compute
from pav_jax.search.mc_scorer import MCScorer
from pav_jax.search.report import compute_to_match
from pav_jax.search.report import interp_log
from pav_jax.search.report import summarise
from pav_jax.search.verifier_cache import CachedVerifier

__all__ = [
    "aggregate_steps",
    "AGGREGATIONS",
    "BEAM_MODES",
    "BEAM_STARTS",
    "beam_scores",
    "beam_search",
    "BeamConfig",
    "BeamResult",
    "BeamState",
    "best_of_n",
    "bon_compute",
    "CachedVerifier",
    "compare",
    "distinct_mask",
    "Compute",
    "compute_to_match",
    "draw_samples",
    "interp_log",
    "logprob_scores",
    "majority_pick",
    "majority_vote",
    "mc_bon_compute",
    "MCScorer",
    "pass_at_n",
    "pav_min_scores",
    "PROVERS",
    "Samples",
    "score_samples",
    "SearchSettings",
    "select_top",
    "settings_from_config",
    "summarise",
    "tanh_from_sigmoid",
    "weighted_majority_pick",
    "weighted_majority_vote",
]
