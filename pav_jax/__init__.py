"""pav_jax: Process Advantage Verifiers (Setlur et al., 2024) in JAX/Flax NNX.

The public API: what research code imports. Pure math (`advantages`,
`losses`, `metrics`) takes arrays and masks; models are `(graphdef, params)`
pairs with params as plain nested dicts. Importing this package loads JAX and
Flax but not matplotlib, TFDS or orbax; the pipeline's stages and run set-up
(`run_lib`, `train_*`, `labelling`, `search`) are imported by name.

Shape letters: see `run_lib` (N rows, P prefixes, H steps, K samples ...).
"""

from pav_jax.advantages import bok_q
from pav_jax.advantages import bok_step_advantage
from pav_jax.advantages import class_balance_weights
from pav_jax.advantages import effective_reward
from pav_jax.advantages import effective_rewards
from pav_jax.advantages import first_pit
from pav_jax.advantages import first_pit_selection
from pav_jax.advantages import pav_rewards
from pav_jax.advantages import prefix_advantages
from pav_jax.advantages import prover_advantages
from pav_jax.advantages import step_advantages
from pav_jax.config import ModelConfig
from pav_jax.config import PRESETS
from pav_jax.losses import masked_mean
from pav_jax.losses import next_token_xent
from pav_jax.losses import sigmoid_bce
from pav_jax.losses import token_logprobs
from pav_jax.metrics import auroc
from pav_jax.metrics import binomial_ci
from pav_jax.metrics import calibration
from pav_jax.metrics import pass_at_k
from pav_jax.sampler import Sampler
from pav_jax.sampler import SamplingConfig
from pav_jax.tasks import Example
from pav_jax.tasks import Task
from pav_jax.tasks import get_task
from pav_jax.transformer import create as create_policy
from pav_jax.transformer import forward
from pav_jax.transformer import positions_from_mask
from pav_jax.transformer import split
from pav_jax.verifier import Verifier
from pav_jax.verifier import create as create_verifier
from pav_jax.verifier import prefix_values

__all__ = [
    "auroc",
    "binomial_ci",
    "bok_q",
    "bok_step_advantage",
    "calibration",
    "class_balance_weights",
    "create_policy",
    "create_verifier",
    "effective_reward",
    "effective_rewards",
    "Example",
    "first_pit",
    "first_pit_selection",
    "forward",
    "get_task",
    "masked_mean",
    "ModelConfig",
    "next_token_xent",
    "pass_at_k",
    "pav_rewards",
    "positions_from_mask",
    "prefix_advantages",
    "prefix_values",
    "PRESETS",
    "prover_advantages",
    "Sampler",
    "SamplingConfig",
    "sigmoid_bce",
    "split",
    "step_advantages",
    "Task",
    "token_logprobs",
    "Verifier",
]

__version__ = "0.1.0"
