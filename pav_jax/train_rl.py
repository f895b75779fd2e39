"""Online RL of the policy with dense process-advantage rewards (paper Sec. 5).

One iteration is

  rollout   k samples per prompt at temperature 1 with the current params:
            one jitted prefill -> fork(k) -> decode, rows split over the
            mesh's data axes (each device decodes its share of the rows);
  grade     exact outcome, `task.grade` on the decoded text (host);
  score     every step of every rollout scored by the frozen PAV (a `prm_q`
            verifier: Q̂^pi of every prefix in one pass), Q^mu by the
            closed-form Best-of-K(pi) prover, A^mu (or Q^mu for the App. G
            ablation); or, as the verifier-free control, Q̂^pi of every
            prefix from Monte-Carlo continuations (`mc_prefix_values`);
  update    REINFORCE with an advantage estimator (default: the paper's
            learned token-level value baseline) + beta * KL(pi || ref) +
            the value model's squared loss, in one jitted, donated step with
            explicit shardings (params over fsdp/tensor, rows over data).

The state is a plain pytree
  {'params': {'policy': ..., 'value': ...}, 'opt_state': ..., 'step': int32,
   'rng': uint32 key data}
and the reference policy (the frozen initial RL iterate) is passed beside it.
The value model is a `verifier.Verifier` (backbone + linear scalar head)
initialised from the policy with a zero head; its raw head output at the
position before token t is V(s_t), regressed onto the token's step weight.

The stage wrapper (config section, checkpoints, report) builds a
`RLContext` with `make_context` and calls `iteration` in a loop.
"""

import dataclasses
import functools
import inspect
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pav_jax import config as config_lib
from pav_jax import losses
from pav_jax import policy_gradient as pg
from pav_jax import rollouts as rollouts_lib
from pav_jax import sampler as sampler_lib
from pav_jax import sharding as sharding_lib
from pav_jax import train_lib
from pav_jax import transformer
from pav_jax import verifier as verifier_lib

SCORERS = ("pav", "mc", "none")
PARTS = ("policy", "value")


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """Hyper-parameters of the RL core (hashable; bound into the jitted fns).

  Attributes:
    alpha: weight of the dense term; 0 is ORM-RL. Must be >= 0.
    prover_k: K of the Best-of-K(pi_base) prover (closed form).
    dense: 'advantage' (A^mu, PAV-RL) or 'q' (Q^mu, the App. G ablation).
    scorer: 'pav' (frozen prm_q verifier), 'mc' (verifier-free MC control)
      or 'none' (no dense term; needs alpha == 0).
    estimator: a key of policy_gradient.ESTIMATORS.
    kl_coef: beta of the k3 KL penalty to the initial RL iterate.
    value_coef: weight of the value model's squared loss.
    prompts_per_iter, samples_per_prompt: rollout batch = their product.
    max_prompt_len: fixed prompt width (tokens, BOS included).
    max_new_tokens: response budget (EOS included).
    max_steps: step slots H per response; tokens of later steps get no
      reward and no gradient (counted in the `dropped_tokens` metric).
    temperature: rollout sampling temperature (1 = on-policy REINFORCE).
    mc_samples: continuations per prefix of the MC control.
  """

  alpha: float = 5.0
  prover_k: float = 4.0
  dense: str = "advantage"
  scorer: str = "pav"
  estimator: str = "value"
  kl_coef: float = 1e-3
  value_coef: float = 1.0
  prompts_per_iter: int = 8
  samples_per_prompt: int = 4
  max_prompt_len: int = 64
  max_new_tokens: int = 64
  max_steps: int = 16
  temperature: float = 1.0
  policy_lr: float = 1e-6
  value_lr: float = 1e-5
  warmup_steps: int = 10
  total_steps: int = 100
  grad_clip: float = 1.0
  weight_decay: float = 0.0
  mc_samples: int = 4

  @property
  def batch_rows(self) -> int:
    return self.prompts_per_iter * self.samples_per_prompt

  @property
  def seq_len(self) -> int:
    return self.max_prompt_len + self.max_new_tokens


def check_config(cfg: RLConfig) -> None:
  """Raises ValueError naming the first wrong key (rl.<key>)."""
  pg.get_estimator(cfg.estimator)
  if not cfg.alpha >= 0:
    raise ValueError(f"rl.alpha must be >= 0 (0 is ORM-RL), got {cfg.alpha}")
  if cfg.dense not in pg.DENSE_KINDS:
    raise ValueError(f"unknown rl.dense {cfg.dense!r}; known: {pg.DENSE_KINDS}")
  if cfg.scorer not in SCORERS:
    raise ValueError(f"unknown rl.scorer {cfg.scorer!r}; known: {SCORERS}")
  if cfg.scorer == "none" and cfg.alpha != 0:
    raise ValueError(f"rl.scorer 'none' has no dense term: set rl.alpha = 0 "
                     f"(got {cfg.alpha})")
  if not cfg.prover_k >= 1:
    raise ValueError(f"rl.prover_k must be >= 1, got {cfg.prover_k}")
  if cfg.estimator == "rloo" and cfg.samples_per_prompt < 2:
    raise ValueError("rl.estimator 'rloo' needs rl.samples_per_prompt >= 2")
  for key in ("prompts_per_iter", "samples_per_prompt", "max_prompt_len",
              "max_new_tokens", "max_steps", "mc_samples"):
    if getattr(cfg, key) < 1:
      raise ValueError(f"rl.{key} must be >= 1, got {getattr(cfg, key)}")
  if cfg.kl_coef < 0 or cfg.value_coef < 0:
    raise ValueError("rl.kl_coef and rl.value_coef must be >= 0")


# State and shardings ----------------------------------------------------------


def _has_designs() -> bool:
  return "design" in inspect.signature(verifier_lib.create).parameters


def create_value_model(model_cfg: config_lib.ModelConfig):
  """The value model: a verifier of the plain "head" design (one scalar per
  position from the backbone's hidden state; no LM logits computed)."""
  if _has_designs():
    return verifier_lib.create(model_cfg, design="head")
  return verifier_lib.create(model_cfg)


def _create_like(model_cfg: config_lib.ModelConfig, params: dict):
  """A verifier of the design `params` were made with (the frozen PAV)."""
  if _has_designs():
    return verifier_lib.create(model_cfg,
                               design=verifier_lib.design_of(params))
  return verifier_lib.create(model_cfg)


def value_params_from_policy(policy_params: dict,
                             model_cfg: config_lib.ModelConfig) -> dict:
  """Value-model params: the policy's backbone, zero head (V = 0 at init)."""
  if _has_designs():
    return verifier_lib.params_from_policy(policy_params, model_cfg,
                                           design="head")
  return verifier_lib.params_from_policy(policy_params, model_cfg)


def make_optimizer(cfg: RLConfig) -> dict[str, optax.GradientTransformation]:
  """{'policy': tx, 'value': tx}: warmup-cosine AdamW, each clipped alone.

  Unlike train_lib.make_optimizer the first update already has a nonzero
  learning rate (lr / (warmup + 1)): an RL iteration's rollouts are never
  wasted on a zero step. warmup_steps = 0 gives cosine decay from the peak.
  """
  d = train_lib.OptimConfig()

  def one(lr):
    total = max(cfg.total_steps, cfg.warmup_steps + 1)
    if cfg.warmup_steps > 0:
      sched = optax.warmup_cosine_decay_schedule(
          init_value=lr / (cfg.warmup_steps + 1), peak_value=lr,
          warmup_steps=cfg.warmup_steps, decay_steps=total,
          end_value=lr * d.end_lr_fraction)
    else:
      sched = optax.cosine_decay_schedule(lr, total, alpha=d.end_lr_fraction)
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.adamw(sched, b1=d.b1, b2=d.b2, weight_decay=cfg.weight_decay))

  return {"policy": one(cfg.policy_lr), "value": one(cfg.value_lr)}


def param_shardings(make_model, mesh) -> dict:
  """NamedShardings of a model's params from its logical axes."""
  abstract_model = nnx.eval_shape(make_model)
  _, state = nnx.split(abstract_model, nnx.Param)
  return sharding_lib.param_shardings(
      sharding_lib.logical_axes(abstract_model), nnx.to_pure_dict(state), mesh)


def init_state(policy_params: dict, model_cfg: config_lib.ModelConfig,
               tx: dict, mesh, seed: int):
  """(state, state_shardings, ref_params) on `mesh`.

  The value model starts from the policy (verifier.params_from_policy: same
  backbone, zero head, so V = 0 at init). `ref_params` is an own copy of the
  initial policy (the state is donated by the update step).
  """
  pol_sh = param_shardings(lambda: transformer.create(model_cfg), mesh)
  val_sh = param_shardings(lambda: create_value_model(model_cfg), mesh)
  params_sh = {"policy": pol_sh, "value": val_sh}
  rep = sharding_lib.replicated(mesh)

  def init(policy):
    params = {"policy": policy,
              "value": value_params_from_policy(policy, model_cfg)}
    return {
        "params": params,
        "opt_state": {k: tx[k].init(params[k]) for k in PARTS},
        "step": jnp.zeros((), jnp.int32),
        "rng": jax.random.key_data(jax.random.key(seed)),
    }

  abstract = jax.eval_shape(init, policy_params)
  shardings = {
      "params": params_sh,
      "opt_state": {k: sharding_lib.opt_state_shardings(
          tx[k], abstract["params"][k], params_sh[k], mesh) for k in PARTS},
      "step": rep,
      "rng": rep,
  }
  state = jax.jit(init, in_shardings=(pol_sh,), out_shardings=shardings)(
      policy_params)
  ref_params = jax.jit(lambda p: jax.tree.map(jnp.copy, p),
                       in_shardings=(pol_sh,),
                       out_shardings=pol_sh)(policy_params)
  return state, shardings, ref_params


# Rollouts ---------------------------------------------------------------------


@dataclasses.dataclass
class RolloutBatch:
  """Static-shape rollouts: B = prompts * k rows (k consecutive per prompt).

  tokens_BT: BOS + prompt + response (EOS included when emitted), padded;
  the response of row b starts at prompt_len_B[b].
  """

  tokens_BT: jax.Array  # int32 [B, T], on the mesh (rows over data axes)
  valid_BT: jax.Array  # bool [B, T]
  response_mask_BT: jax.Array  # bool [B, T]
  prompt_len_B: jax.Array  # int32 [B]
  response_len_B: np.ndarray  # host int [B], EOS included
  finished_B: np.ndarray  # host bool [B]: stopped at EOS
  outcome_B: np.ndarray  # host float32 [B]: task.grade of the decoded text
  texts: list[str]  # decoded responses, [B]
  example_index_B: np.ndarray  # host int [B]: which example each row answers
  sampled_tokens: int
  prefilled_tokens: int


def _batch_spec(mesh, x):
  """Rows over the data axes when they divide, else replicated."""
  n = int(np.prod([mesh.shape[a] for a in sharding_lib.BATCH_AXES]))
  if np.ndim(x) >= 1 and x.shape[0] % n == 0:
    return sharding_lib.batch_sharding(mesh)
  return sharding_lib.replicated(mesh)


def _constrain_rows(tree, mesh):
  return jax.tree.map(
      lambda x: jax.lax.with_sharding_constraint(x, _batch_spec(mesh, x)), tree)


def _rollout_core(graphdef, model_cfg, params, prompt_PW, plen_P, key_P, *,
                  k, cache_size, max_new_tokens, eos_id, step_id, pad_id,
                  sampling, mesh, fork):
  """prefill -> fork(k) (or re-prefill k copies) -> decode -> sequences."""
  if fork:
    state = sampler_lib._prefill(  # pylint: disable=protected-access
        graphdef, model_cfg, params, prompt_PW, plen_P, key_P, cache_size)
    state = sampler_lib.fork(state, k)
  else:  # naive reference: prefill every row (k copies of each prompt)
    p = key_P.shape[0]
    key_B = jax.vmap(lambda key: jax.vmap(
        lambda j: jax.random.fold_in(key, j))(jnp.arange(k)))(key_P)
    key_B = key_B.reshape((p * k,) + key_P.shape[1:])
    state = sampler_lib._prefill(  # pylint: disable=protected-access
        graphdef, model_cfg, params, jnp.repeat(prompt_PW, k, axis=0),
        jnp.repeat(plen_P, k), key_B, cache_size)
  state = _constrain_rows(state, mesh)
  out = sampler_lib._decode(  # pylint: disable=protected-access
      graphdef, params, state, max_new_tokens=max_new_tokens,
      stop_at_step=False, eos_id=eos_id, step_id=step_id, pad_id=pad_id,
      sampling=sampling)
  resp_BN, len_B = out.tokens_BN, out.length_B
  b, n = resp_BN.shape
  w = prompt_PW.shape[1]
  plen_B = jnp.repeat(plen_P, k)
  seq_BT = jnp.full((b, w + n), pad_id, jnp.int32)
  seq_BT = seq_BT.at[:, :w].set(jnp.repeat(prompt_PW, k, axis=0))
  col_BT = jnp.arange(w)[None, :]
  seq_BT = seq_BT.at[:, :w].set(
      jnp.where(col_BT < plen_B[:, None], seq_BT[:, :w], pad_id))
  ncol_BN = jnp.arange(n)[None, :]
  dest_BN = jnp.where(ncol_BN < len_B[:, None], plen_B[:, None] + ncol_BN,
                      w + n)
  rows_BN = jnp.broadcast_to(jnp.arange(b)[:, None], (b, n))
  seq_BT = seq_BT.at[rows_BN, dest_BN].set(resp_BN, mode="drop")
  tcol_BT = jnp.arange(w + n)[None, :]
  valid_BT = tcol_BT < (plen_B + len_B)[:, None]
  resp_BT = valid_BT & (tcol_BT >= plen_B[:, None])
  res = dict(tokens_BT=seq_BT, valid_BT=valid_BT, response_mask_BT=resp_BT,
             prompt_len_B=plen_B, response_len_B=len_B,
             finished_B=out.stop_B == sampler_lib.EOS)
  return _constrain_rows(res, mesh)


def make_rollout_fn(sampler: sampler_lib.Sampler, cfg: RLConfig, mesh,
                    policy_shardings, *, fork: bool = True):
  """Jitted `fn(params, prompt_PW, plen_P, key_P) -> dict of [B, ...]`.

  The prompt batch is split over the data axes when P divides by them; the
  forked (or re-prefilled) rows always are, so each device decodes its own
  share of the B = P * k rows.
  """
  if sampler.cache_size < cfg.seq_len:
    raise ValueError(
        f"sampler cache_size {sampler.cache_size} < rl.max_prompt_len + "
        f"rl.max_new_tokens = {cfg.seq_len}: raise sample.cache_size")
  core = functools.partial(
      _rollout_core, sampler.graphdef, sampler.model_cfg,
      k=cfg.samples_per_prompt, cache_size=sampler.cache_size,
      max_new_tokens=cfg.max_new_tokens, eos_id=sampler.eos_id,
      step_id=sampler.step_ids, pad_id=sampler.pad_id,
      sampling=sampler_lib.SamplingConfig(temperature=cfg.temperature),
      mesh=mesh, fork=fork)
  p = cfg.prompts_per_iter
  in_p = _batch_spec(mesh, np.zeros((p,)))
  out_sh = _batch_spec(mesh, np.zeros((cfg.batch_rows,)))
  return jax.jit(core, in_shardings=(policy_shardings, in_p, in_p, in_p),
                 out_shardings=out_sh)


def encode_prompts(tok, task, examples,
                   width: int) -> tuple[np.ndarray, np.ndarray]:
  """BOS + task.prompt(ex) token ids, right-padded to `width`."""
  ids = [tok.encode(task.prompt(ex), bos=True) for ex in examples]
  too_long = [len(i) for i in ids if len(i) > width]
  if too_long:
    raise ValueError(f"a prompt has {max(too_long)} tokens > rl.max_prompt_len "
                     f"= {width}: raise rl.max_prompt_len")
  out = np.full((len(ids), width), tok.pad_id, np.int32)
  for r, i in enumerate(ids):
    out[r, :len(i)] = i
  return out, np.array([len(i) for i in ids], np.int32)


def rollout(rollout_fn, params, task, tok, examples: Sequence[Any],
            rng: jax.Array, cfg: RLConfig) -> RolloutBatch:
  """k samples per example with `params`, graded exactly on decoded text."""
  if len(examples) != cfg.prompts_per_iter:
    raise ValueError(f"got {len(examples)} examples; rl.prompts_per_iter is "
                     f"{cfg.prompts_per_iter}")
  prompt_PW, plen_P = encode_prompts(tok, task, examples, cfg.max_prompt_len)
  key_P = jax.random.split(rng, len(examples))
  out = rollout_fn(params, prompt_PW, plen_P, key_P)
  tok_BT, plen_B, len_B, fin_B = jax.device_get(
      (out["tokens_BT"], out["prompt_len_B"], out["response_len_B"],
       out["finished_B"]))
  k = cfg.samples_per_prompt
  ex_B = np.repeat(np.arange(len(examples)), k)
  texts, outcome = [], []
  for b in range(len(ex_B)):
    text = tok.decode(tok_BT[b, plen_B[b]:plen_B[b] + len_B[b]])
    texts.append(text)
    outcome.append(float(task.grade(examples[ex_B[b]], text)))
  return RolloutBatch(
      tokens_BT=out["tokens_BT"], valid_BT=out["valid_BT"],
      response_mask_BT=out["response_mask_BT"],
      prompt_len_B=out["prompt_len_B"],
      response_len_B=np.asarray(len_B), finished_B=np.asarray(fin_B),
      outcome_B=np.asarray(outcome, np.float32), texts=texts,
      example_index_B=ex_B, sampled_tokens=int(np.sum(len_B)),
      prefilled_tokens=int(np.sum(plen_P)))


def trim(ro: RolloutBatch, bucket: int = 32) -> RolloutBatch:
  """The batch cut to its longest row, rounded up to `bucket` columns.

  Rollouts are padded to max_prompt_len + max_new_tokens; scoring and the
  update then run on the columns that hold tokens only (a third fewer on
  the demo), compiling once per bucket. The cut is a function of the data,
  so a resumed run cuts the same way.
  """
  t = ro.tokens_BT.shape[1]
  longest = int(np.max(np.asarray(jax.device_get(ro.prompt_len_B))
                       + ro.response_len_B))
  keep = min(t, -(-longest // bucket) * bucket)
  if keep == t:
    return ro
  return dataclasses.replace(
      ro, tokens_BT=ro.tokens_BT[:, :keep], valid_BT=ro.valid_BT[:, :keep],
      response_mask_BT=ro.response_mask_BT[:, :keep])


# Scoring ----------------------------------------------------------------------


def _score_core(graphdef, vparams, tokens_BT, valid_BT, prompt_len_B,
                response_mask_BT, outcome_B, *, step_id, eos_id, cfg, mesh):
  """Frozen PAV: Q̂^pi of every prefix (one pass) -> step weights."""
  v_BP, m_BP = verifier_lib.prefix_values(
      graphdef, vparams, tokens_BT, valid_BT, prompt_len_B, step_id=step_id,
      eos_id=eos_id, num_prefixes=cfg.max_steps + 1)
  return _constrain_rows(
      step_targets(v_BP, m_BP, tokens_BT, response_mask_BT, outcome_B,
                   step_id=step_id, eos_id=eos_id, cfg=cfg), mesh)


def step_targets(v_BP, m_BP, tokens_BT, response_mask_BT, outcome_B, *,
                 step_id: int, eos_id: int, cfg: RLConfig) -> dict:
  """From prefix values (layout of verifier.prefix_values) to step weights.

  v_BP[:, 0] = Q̂^pi(s_1) (question only), v_BP[:, h + 1] = Q̂^pi after
  step h (0-based). Returns q_pi_BH, v0_B, q_mask_BH, step_mask_BH,
  dense_BH (A^mu or Q^mu), rewards_BH (r_h) and returns_BH (the per-step
  policy-gradient weight Rex + alpha * dense_h).
  """
  h = cfg.max_steps
  step_BT = pg.token_step_index(tokens_BT, response_mask_BT, step_id=step_id,
                                eos_id=eos_id, max_steps=h)
  smask_BH = pg.step_mask(step_BT, h)
  q_BH, v0_B = v_BP[:, 1:h + 1], v_BP[:, 0]
  qmask_BH = m_BP[:, 1:h + 1] & smask_BH
  dense_BH = pg.dense_step_rewards(q_BH, v0_B, qmask_BH,
                                   prover_k=cfg.prover_k, dense=cfg.dense)
  outcome_B = outcome_B.astype(jnp.float32)
  return dict(
      q_pi_BH=jnp.where(qmask_BH, q_BH, 0.0), v0_B=v0_B, q_mask_BH=qmask_BH,
      step_mask_BH=smask_BH, dense_BH=dense_BH,
      rewards_BH=pg.step_rewards(outcome_B, dense_BH, smask_BH, cfg.alpha),
      returns_BH=pg.step_returns(outcome_B, dense_BH, smask_BH, cfg.alpha))


def make_score_fn(verifier_graphdef, verifier_shardings, cfg: RLConfig, mesh,
                  *, step_id: int, eos_id: int):
  """Jitted `fn(vparams, tokens, valid, prompt_len, resp_mask, outcome)`."""
  core = functools.partial(_score_core, verifier_graphdef, step_id=step_id,
                           eos_id=eos_id, cfg=cfg, mesh=mesh)
  rows = _batch_spec(mesh, np.zeros((cfg.batch_rows,)))
  return jax.jit(core, in_shardings=(verifier_shardings,) + (rows,) * 5,
                 out_shardings=rows)


def score_steps(score_fn, verifier_params, ro: RolloutBatch) -> dict:
  """Every step of every rollout scored by the frozen PAV (one pass)."""
  return score_fn(verifier_params, ro.tokens_BT, ro.valid_BT, ro.prompt_len_B,
                  ro.response_mask_BT, jnp.asarray(ro.outcome_B))


def mc_prefix_values(sampler: sampler_lib.Sampler, prover_params, task, tok,
                     examples, ro: RolloutBatch, *, n: int, rng: jax.Array,
                     cfg: RLConfig, batch_rows: int = 256):
  """Verifier-free control: Q̂^pi of every prefix from n MC continuations.

  Same layout as verifier.prefix_values: (v_BP, mask_BP), P = max_steps + 1.
  Prefixes closed by EOS take the exact outcome. Every other prefix (the
  question s_1 and each step delimiter) is re-prefilled and continued n
  times with `prover_params` (the prover's base policy pi), each
  continuation cut to the rollout's remaining token budget, and graded.
  This is the slow reference: it re-prefills each prefix (through
  rollouts.sample, which forks the n continuations of one prefix) rather
  than forking the rollout's own KV cache. `sampler.cache_size` must hold
  cfg.seq_len plus cfg.max_new_tokens.
  """
  tok_BT, plen_B, len_B = (np.asarray(x) for x in jax.device_get(
      (ro.tokens_BT, ro.prompt_len_B, ro.response_len_B)))
  b, p = tok_BT.shape[0], cfg.max_steps + 1
  v_BP = np.zeros((b, p), np.float32)
  m_BP = np.zeros((b, p), bool)
  queries = []  # (row, slot, prefix tokens, remaining budget)
  for r in range(b):
    pl, end = int(plen_B[r]), int(plen_B[r] + len_B[r])
    bounds = [pl - 1] + [t for t in range(pl, end)
                         if tok_BT[r, t] in (*tok.step_ids, tok.eos_id)]
    for slot, t in enumerate(bounds[:p]):
      m_BP[r, slot] = True
      if tok_BT[r, t] == tok.eos_id:
        v_BP[r, slot] = ro.outcome_B[r]
      else:
        queries.append((r, slot, tok_BT[r, :t + 1].tolist(),
                        cfg.max_new_tokens - (t + 1 - pl)))
  if queries:
    out = rollouts_lib.sample(sampler, prover_params, [q[2] for q in queries],
                              n, rng, cfg.max_new_tokens, batch_rows)
    for (r, slot, prefix, budget), conts in zip(queries, out.responses):
      pl = int(plen_B[r])
      wins = [task.grade(examples[ro.example_index_B[r]],
                         tok.decode(prefix[pl:] + c[:max(budget, 0)]))
              for c in conts]
      v_BP[r, slot] = float(np.mean(wins))
    sampled = out.generated_tokens
  else:
    sampled = 0
  return v_BP, m_BP, sampled


def make_targets_fn(cfg: RLConfig, mesh, *, step_id: int, eos_id: int):
  """Jitted `fn(v_BP, m_BP, tokens, resp_mask, outcome)` -> step targets."""
  rows = _batch_spec(mesh, np.zeros((cfg.batch_rows,)))
  return jax.jit(functools.partial(step_targets, step_id=step_id,
                                   eos_id=eos_id, cfg=cfg),
                 in_shardings=(rows,) * 5, out_shardings=rows)


# Loss and update --------------------------------------------------------------


def rl_loss(policy_graphdef, value_graphdef, params, ref_params, batch, *,
            cfg: RLConfig, step_id: int, eos_id: int):
  """REINFORCE(estimator) + kl_coef * KL(pi || ref) + value_coef * value loss.

  batch: tokens_BT, valid_BT, response_mask_BT, returns_BH (per-step
  weights from `step_targets`). Position t of the [B, T-1] arrays is the
  decision that emitted token t + 1.
  """
  estimator = pg.get_estimator(cfg.estimator)
  tokens, valid = batch["tokens_BT"], batch["valid_BT"]
  pos = transformer.positions_from_mask(valid)
  logits, _ = transformer.forward(policy_graphdef, params["policy"], tokens,
                                  pos, valid)
  logp_BT = losses.token_logprobs(logits[:, :-1], tokens[:, 1:])
  ref_logits, _ = transformer.forward(policy_graphdef, ref_params, tokens, pos,
                                      valid)
  ref_logp_BT = jax.lax.stop_gradient(
      losses.token_logprobs(ref_logits[:, :-1], tokens[:, 1:]))
  v_logit_BT, _ = verifier_lib.score(value_graphdef, params["value"], tokens,
                                     pos, valid)
  v_BT = v_logit_BT[:, :-1]
  step_BT = pg.token_step_index(tokens, batch["response_mask_BT"],
                                step_id=step_id, eos_id=eos_id,
                                max_steps=cfg.max_steps)
  ret_BT = pg.step_rewards_to_tokens(batch["returns_BH"], step_BT)[:, 1:]
  mask_BT = (step_BT >= 0)[:, 1:]
  adv_BT = estimator(ret_BT, mask_BT, v_BT, cfg.samples_per_prompt)
  pg_loss = pg.reinforce_loss(logp_BT, adv_BT, mask_BT)
  kl = pg.kl_penalty(logp_BT, ref_logp_BT, mask_BT)
  v_loss = pg.value_loss(v_BT, ret_BT, mask_BT)
  loss = pg_loss + cfg.kl_coef * kl + cfg.value_coef * v_loss
  mm = losses.masked_mean
  resp = batch["response_mask_BT"][:, 1:]
  metrics = {
      "pg_loss": pg_loss, "kl": kl, "value_loss": v_loss,
      "mean_return": mm(ret_BT, mask_BT),
      "mean_adv": mm(adv_BT, mask_BT),
      "adv_std": jnp.sqrt(
          mm(jnp.square(adv_BT - mm(adv_BT, mask_BT)), mask_BT)),
      "mean_value": mm(v_BT, mask_BT),
      "entropy_proxy": -mm(logp_BT, mask_BT),
      "trained_tokens": jnp.sum(mask_BT.astype(jnp.float32)),
      "dropped_tokens": jnp.sum((resp & ~mask_BT).astype(jnp.float32)),
  }
  return loss, metrics


def make_update_step(policy_graphdef, value_graphdef, tx, state_shardings,
                     mesh, cfg: RLConfig, *, step_id: int, eos_id: int):
  """Jitted `step(state, ref_params, batch) -> (state, metrics)`.

  The state is donated; params and optimizer state keep their fsdp/tensor
  shardings, batch rows are split over the data axes, metrics replicated.
  """
  loss_fn = functools.partial(rl_loss, policy_graphdef, value_graphdef,
                              cfg=cfg, step_id=step_id, eos_id=eos_id)

  def step(state, ref_params, batch):
    (loss, metrics), grads = jax.value_and_grad(
        lambda p: loss_fn(p, ref_params, batch), has_aux=True)(state["params"])
    params, opt_state = {}, {}
    for k in PARTS:
      updates, opt_state[k] = tx[k].update(grads[k], state["opt_state"][k],
                                           state["params"][k])
      params[k] = optax.apply_updates(state["params"][k], updates)
    metrics = dict(metrics, loss=loss,
                   grad_norm_policy=optax.tree.norm(grads["policy"]),
                   grad_norm_value=optax.tree.norm(grads["value"]))
    return dict(state, params=params, opt_state=opt_state,
                step=state["step"] + 1), metrics

  rows = sharding_lib.batch_sharding(mesh)
  return jax.jit(
      step,
      in_shardings=(state_shardings, state_shardings["params"]["policy"], rows),
      out_shardings=(state_shardings, sharding_lib.replicated(mesh)),
      donate_argnums=(0,))


def update_batch(ro: RolloutBatch, targets: dict) -> dict:
  """The arrays `rl_loss` reads."""
  return {"tokens_BT": ro.tokens_BT, "valid_BT": ro.valid_BT,
          "response_mask_BT": ro.response_mask_BT,
          "returns_BH": targets["returns_BH"]}


# One iteration ----------------------------------------------------------------


@dataclasses.dataclass
class RLContext:
  """Everything an iteration needs besides the state (built by make_context)."""

  cfg: RLConfig
  mesh: Any
  task: Any
  tok: Any
  sampler: sampler_lib.Sampler
  value_graphdef: Any
  state_shardings: dict
  ref_params: dict
  rollout_fn: Any
  update_fn: Any
  score_fn: Any = None  # scorer 'pav'
  verifier_params: Any = None
  targets_fn: Any = None  # scorer 'mc' / 'none'
  mc_sampler: Any = None
  prover_params: Any = None


def make_context(*, cfg: RLConfig, sampler: sampler_lib.Sampler, policy_params,
                 task, tok, mesh, verifier_graphdef=None, verifier_params=None,
                 mc_sampler=None, prover_params=None, seed: int = 0):
  """(RLContext, state) from explicit objects; checks the inputs.

  scorer 'pav' needs the frozen prm_q verifier (graphdef, params); scorer
  'mc' needs `mc_sampler` (cache >= seq_len + max_new_tokens) and
  `prover_params` (pi_base, default the initial policy).
  """
  check_config(cfg)
  if cfg.scorer == "pav" and (verifier_graphdef is None
                              or verifier_params is None):
    raise ValueError("rl.scorer 'pav' needs a trained prm_q verifier "
                     "(verifier_graphdef / verifier_params): run the "
                     "verifiers stage first")
  if cfg.scorer == "mc" and mc_sampler is None:
    raise ValueError("rl.scorer 'mc' needs mc_sampler")
  model_cfg = sampler.model_cfg
  tx = make_optimizer(cfg)
  state, shardings, ref_params = init_state(policy_params, model_cfg, tx, mesh,
                                            seed)
  value_graphdef = nnx.split(nnx.eval_shape(
      lambda: create_value_model(model_cfg)), nnx.Param)[0]
  ids = dict(step_id=tok.step_ids, eos_id=tok.eos_id)
  if tok.step_id != sampler.step_id or tok.eos_id != sampler.eos_id:
    raise ValueError("tokenizer and sampler disagree on step_id / eos_id")
  ctx = RLContext(
      cfg=cfg, mesh=mesh, task=task, tok=tok, sampler=sampler,
      value_graphdef=value_graphdef, state_shardings=shardings,
      ref_params=ref_params,
      rollout_fn=make_rollout_fn(sampler, cfg, mesh,
                                 shardings["params"]["policy"]),
      update_fn=make_update_step(sampler.graphdef, value_graphdef, tx,
                                 shardings, mesh, cfg, **ids))
  if cfg.scorer == "pav":
    ctx.score_fn = make_score_fn(
        verifier_graphdef,
        param_shardings(lambda: _create_like(model_cfg, verifier_params),
                        mesh), cfg,
        mesh, **ids)
    ctx.verifier_params = verifier_params
  else:
    ctx.targets_fn = make_targets_fn(cfg, mesh, **ids)
    ctx.mc_sampler = mc_sampler
    ctx.prover_params = ref_params if prover_params is None else prover_params
  return ctx, state


def iteration(ctx: RLContext, state: dict, examples: Sequence[Any]):
  """rollout -> grade -> score -> rewards -> update; (state, metrics).

  Randomness comes from the state (rng folded with the step), so an
  iteration is a pure function of (state, examples): resume is exact.
  Metrics are host floats, with the seconds of each phase and the sampled
  token counts (rollout and, for the MC control, scoring).
  """
  cfg = ctx.cfg
  step = int(jax.device_get(state["step"]))
  rng = jax.random.fold_in(jax.random.wrap_key_data(
      jax.device_get(state["rng"])), step)
  t0 = time.perf_counter()
  ro = trim(rollout(ctx.rollout_fn, state["params"]["policy"], ctx.task,
                    ctx.tok, examples, jax.random.fold_in(rng, 0), cfg))
  t1 = time.perf_counter()
  score_sampled = 0
  if cfg.scorer == "pav":
    targets = score_steps(ctx.score_fn, ctx.verifier_params, ro)
  else:
    if cfg.scorer == "mc":
      v_BP, m_BP, score_sampled = mc_prefix_values(
          ctx.mc_sampler, ctx.prover_params, ctx.task, ctx.tok, examples, ro,
          n=cfg.mc_samples, rng=jax.random.fold_in(rng, 1), cfg=cfg)
    else:
      v_BP = np.zeros((cfg.batch_rows, cfg.max_steps + 1), np.float32)
      m_BP = np.zeros(v_BP.shape, bool)
    targets = ctx.targets_fn(v_BP, m_BP, ro.tokens_BT, ro.response_mask_BT,
                             jnp.asarray(ro.outcome_B))
  targets = jax.block_until_ready(targets)
  t2 = time.perf_counter()
  state, metrics = ctx.update_fn(state, ctx.ref_params,
                                 update_batch(ro, targets))
  metrics = jax.device_get(metrics)
  t3 = time.perf_counter()
  smask = np.asarray(targets["step_mask_BH"])
  dense = np.asarray(targets["dense_BH"])
  out = {k: float(v) for k, v in metrics.items()}
  out.update(
      accuracy=float(ro.outcome_B.mean()),
      finished_frac=float(ro.finished_B.mean()),
      mean_response_tokens=float(ro.response_len_B.mean()),
      mean_steps=float(smask.sum(1).mean()),
      mean_dense=float(dense[smask].mean()) if smask.any() else 0.0,
      sampled_tokens=float(ro.sampled_tokens),
      score_sampled_tokens=float(score_sampled),
      prefilled_tokens=float(ro.prefilled_tokens),
      rollout_s=t1 - t0, score_s=t2 - t1, update_s=t3 - t2)
  return state, out


# RFT init ---------------------------------------------------------------------


def rft_pairs(prompts: Sequence[str], responses: Sequence[Sequence[str]],
              correct) -> tuple[list[str], list[str]]:
  """(prompts, responses) of the correct seed rollouts, deduplicated, sorted.

  responses[i] are the sampled responses to prompts[i] and correct[i] their
  0/1 grades. The stage wrapper SFTs on the result
  (train_policy.train_stage) to get the paper's RFT init.
  """
  if len(prompts) != len(responses) or len(prompts) != len(correct):
    raise ValueError("prompts, responses and correct must have one entry per "
                     f"prompt; got {len(prompts)}, {len(responses)}, "
                     f"{len(correct)}")
  pairs = set()
  for p, rs, cs in zip(prompts, responses, correct):
    if len(rs) != len(cs):
      raise ValueError(
          f"prompt {p!r}: {len(rs)} responses but {len(cs)} grades")
    pairs.update((p, r) for r, c in zip(rs, cs) if c)
  if not pairs:
    raise ValueError("RFT found no correct seed rollout: train SFT longer or "
                     "sample more")
  ps, rs = zip(*sorted(pairs))
  return list(ps), list(rs)
