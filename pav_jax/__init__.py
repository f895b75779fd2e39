"""pav_jax: Process Advantage Verifiers (Setlur et al., 2024) in JAX/Flax NNX."""

__version__ = "0.1.0"
