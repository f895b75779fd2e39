"""SFT and policy-gradient RL with the effective reward Q^pi + alpha A^mu.

Every jitted function is pure: `step(graphdef, state, batch, rng) -> (state,
metrics)`, with the static environment and config bound by functools.partial
before `jax.jit`. Runs (prover gamma x seed) are vmapped, iterations scanned.

Per-step weight of step h of response b (Eq. 5 of the paper, minus a
baseline):

  w_bh = (Qhat^pi(s_h, a_h) - b_b)
         + alpha (A^mu(s_h, a_h) - E_{a~pi} A^mu(s_h, a))

* Qhat^pi is either the sampled return R_b (an unbiased one-rollout MC
  estimate, `q_estimator='return'`) or the mean of n fresh rollouts after
  step h (`q_estimator='mc'`).
* b_b is the leave-one-out mean return of the other responses in the batch.
* A^mu is exact (DP table lookup). Its pi-expectation at s_h is exact too,
  since the table gives A^mu for all actions, so subtracting it is a free
  state-dependent baseline. Together the baseline approximates the paper's
  learned baseline E_{a~pi}[Q^pi + alpha A^mu].

Shapes: B batch, L positions, V vocabulary, K automaton states, R remaining
lengths, S runs, T iterations.
"""

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from pav_jax.didactic import env as env_lib
from pav_jax.didactic import policy


class TrainState(NamedTuple):
  params: Any
  opt_state: Any


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """Static RL hyper-parameters (hashable)."""

  batch_size: int = 64
  learning_rate: float = 1e-3
  q_estimator: str = "return"  # 'return' | 'mc'
  n_mc: int = 100


def init_state(params, tx: optax.GradientTransformation) -> TrainState:
  return TrainState(params, tx.init(params))


# ----------------------------------------------------------------------------
# SFT.
# ----------------------------------------------------------------------------


def sft_loss(graphdef, params, env: env_lib.Env, tokens_BL: jax.Array):
  """Next-token NLL over real steps (up to and including the first EOS)."""
  logp_BL, _ = policy.log_probs(graphdef, params, tokens_BL)
  mask_BL = env_lib.alive_mask(env, tokens_BL)
  return -jnp.sum(logp_BL * mask_BL) / jnp.sum(mask_BL)


def sft_step(
    graphdef,
    state: TrainState,
    tokens_BL: jax.Array,
    rng: jax.Array,
    *,
    env: env_lib.Env,
    tx: optax.GradientTransformation,
) -> tuple[TrainState, dict[str, jax.Array]]:
  del rng  # Deterministic step; kept for the common signature.
  loss, grads = jax.value_and_grad(
      lambda p: sft_loss(graphdef, p, env, tokens_BL))(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return TrainState(params, opt_state), {"nll": loss}


def run_sft(
    graphdef,
    state: TrainState,
    data_NL: jax.Array,
    rng: jax.Array,
    *,
    env: env_lib.Env,
    tx: optax.GradientTransformation,
    batch_size: int,
    n_iters: int,
    it0: int | jax.Array = 0,
) -> tuple[TrainState, jax.Array]:
  """Steps it0 .. it0 + n_iters - 1 over shuffled mini-batches of data_NL.

  Epoch e uses the permutation fold_in(rng, e), so calling this in chunks
  (it0 = 0, n, 2n, ...) gives exactly the same parameters as one call.
  Pure; vmap over seeds. Returns the final state and the NLL of every step.
  """
  n = data_NL.shape[0]
  per_epoch = n // batch_size

  def body(state, it):
    perm = jax.random.permutation(
        jax.random.fold_in(rng, it // per_epoch), n)
    idx = jax.lax.dynamic_slice_in_dim(
        perm, (it % per_epoch) * batch_size, batch_size)
    state, m = sft_step(graphdef, state, data_NL[idx], rng, env=env, tx=tx)
    return state, m["nll"]

  return jax.lax.scan(body, state, it0 + jnp.arange(n_iters))


# ----------------------------------------------------------------------------
# RL.
# ----------------------------------------------------------------------------


def pg_weights(
    q_BL: jax.Array,
    r_B: jax.Array,
    adv_BL: jax.Array,
    adv_mean_BL: jax.Array,
    mask_BL: jax.Array,
    alpha: jax.Array,
) -> jax.Array:
  """Baselined effective reward of every step, zero on masked steps."""
  b = r_B.shape[0]
  loo_B = (jnp.sum(r_B) - r_B) / (b - 1)
  w_BL = (q_BL - loo_B[:, None]) + alpha * (adv_BL - adv_mean_BL)
  return w_BL * mask_BL


def rl_step(
    graphdef,
    state: TrainState,
    batch: dict[str, jax.Array],
    rng: jax.Array,
    *,
    env: env_lib.Env,
    tx: optax.GradientTransformation,
    cfg: RLConfig,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One on-policy REINFORCE step.

  batch: {'alpha': scalar, 'adv_KRV': exact A^mu table of this run's prover}.
  """
  rng_sample, rng_mc = jax.random.split(rng)
  tokens_BL = policy.sample(
      graphdef, state.params, env, rng_sample, cfg.batch_size)
  r_B = env_lib.reward(env, tokens_BL)
  mask_BL = env_lib.alive_mask(env, tokens_BL)
  if cfg.q_estimator == "return":
    q_BL = jnp.broadcast_to(r_B[:, None], tokens_BL.shape)
  elif cfg.q_estimator == "mc":
    q_BL = policy.mc_q(graphdef, state.params, env, rng_mc, tokens_BL,
                       cfg.n_mc)
  else:
    raise ValueError(f"unknown q_estimator {cfg.q_estimator!r}")
  adv_KRV = batch["adv_KRV"]
  adv_BL = env_lib.gather_step(env, adv_KRV, tokens_BL)
  adv_BLV = env_lib.gather_state(env, adv_KRV, tokens_BL)

  def loss_fn(params):
    logp_BL, probs_BLV = policy.log_probs(graphdef, params, tokens_BL)
    adv_mean_BL = jnp.sum(jax.lax.stop_gradient(probs_BLV) * adv_BLV, -1)
    w_BL = pg_weights(q_BL, r_B, adv_BL, adv_mean_BL, mask_BL,
                      batch["alpha"])
    loss = -jnp.sum(jax.lax.stop_gradient(w_BL) * logp_BL) / cfg.batch_size
    return loss, w_BL

  (loss, w_BL), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  n_steps = jnp.sum(mask_BL)
  metrics = {
      "accuracy": jnp.mean(r_B),
      "loss": loss,
      "adv_mu_abs": jnp.sum(jnp.abs(adv_BL)) / n_steps,
      "adv_mu": jnp.sum(adv_BL) / n_steps,
      "weight_abs": jnp.sum(jnp.abs(w_BL)) / n_steps,
      "length": jnp.mean(jnp.sum(mask_BL, 1)),
      "grad_norm": optax.tree.norm(grads),
  }
  return TrainState(params, opt_state), metrics


def rl_chunk(
    graphdef,
    state_S: TrainState,
    batch_S: dict[str, jax.Array],
    rng_S: jax.Array,
    it0: jax.Array,
    *,
    n_iters: int,
    env: env_lib.Env,
    tx: optax.GradientTransformation,
    cfg: RLConfig,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """n_iters RL steps of S runs at once: scan over iterations, vmap over runs.

  The RNG of iteration t of run s is fold_in(rng_S[s], t). Metrics are T x S.
  """
  step = functools.partial(rl_step, graphdef, env=env, tx=tx, cfg=cfg)

  def body(state_S, it):
    rngs_S = jax.vmap(jax.random.fold_in, in_axes=(0, None))(rng_S, it)
    return jax.vmap(step)(state_S, batch_S, rngs_S)

  return jax.lax.scan(body, state_S, it0 + jnp.arange(n_iters))


# ----------------------------------------------------------------------------
# Evaluation and the two terms of Theorem 3.1.
# ----------------------------------------------------------------------------


def success_counts(
    graphdef, params, env: env_lib.Env, rng: jax.Array, n: int
) -> jax.Array:
  """Number of successes among n temperature-1 samples of pi."""
  tokens_NL = policy.sample(graphdef, params, env, rng, n)
  return jnp.sum(env_lib.reward(env, tokens_NL)).astype(jnp.int32)


def theorem_terms(
    graphdef,
    params,
    env: env_lib.Env,
    rng: jax.Array,
    adv_GKRV: jax.Array,
    n: int,
) -> dict[str, jax.Array]:
  """Distinguishability and alignment of each prover g on the policy pi.

  With states s ~ d^pi (every real step of n on-policy responses):
    disting_G = E_s Var_{a~pi}[A^mu(s, a)]                   (exact per s)
    align_G   = E_s E_{a~pi}[A^mu(s, a) A^pi(s, a)]
              = E_s Cov_{a~pi}(A^mu(s, a), Q^pi(s, a)).
  The alignment uses that E[R - c | s_h, a_h] = Q^pi(s_h, a_h) - c, so
  (A^mu(s_h, a_h) - E_pi A^mu(s_h, .)) (R - c) is an unbiased one-rollout
  estimate for any constant c (c = mean R lowers its variance). align_se_G
  is its standard error over responses.
  """
  tokens_NL = policy.sample(graphdef, params, env, rng, n)
  r_N = env_lib.reward(env, tokens_NL)
  mask_NL = env_lib.alive_mask(env, tokens_NL)
  _, probs_NLV = policy.log_probs(graphdef, params, tokens_NL)
  n_states = jnp.sum(mask_NL)

  def one(adv_KRV):
    adv_NLV = env_lib.gather_state(env, adv_KRV, tokens_NL)
    adv_NL = env_lib.gather_step(env, adv_KRV, tokens_NL)
    mean_NL = jnp.sum(probs_NLV * adv_NLV, -1)
    var_NL = jnp.sum(probs_NLV * adv_NLV**2, -1) - mean_NL**2
    contrib_N = jnp.sum(
        (adv_NL - mean_NL) * mask_NL, 1) * (r_N - jnp.mean(r_N))
    return {
        "disting": jnp.sum(var_NL * mask_NL) / n_states,
        "align": jnp.sum(contrib_N) / n_states,
        "align_se": jnp.std(contrib_N) * jnp.sqrt(n * 1.0) / n_states,
        "adv_abs": jnp.sum(jnp.abs(adv_NL)) / n_states,
    }

  return jax.lax.map(one, adv_GKRV)
