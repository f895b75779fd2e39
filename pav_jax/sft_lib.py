"""The SFT trainer core shared by the `sft` and `rl` stages (RFT init).

Masked next-token cross-entropy on (prompt, response) pairs, big_vision
style: data, sharded state, step, loop with checkpoints and resume
(`train_lib.fit`), periodic evaluation. A library module (not a stage), so
the `sft` stage (SFT, optional RFT) and the `rl` stage (the paper's RFT init
on the labelled set's correct seed rollouts) both call it without importing
each other.
"""

import logging
from typing import Sequence

import jax
import numpy as np

from pav_jax import losses
from pav_jax import rollouts
from pav_jax import run_lib
from pav_jax import sharding as sharding_lib
from pav_jax import tokenizer as tok_lib
from pav_jax import train_lib
from pav_jax import transformer

log = logging.getLogger(__name__)


def encode_sft(tok: tok_lib.Tokenizer, prompts: Sequence[str],
               responses: Sequence[str], max_len: int) -> dict[str, np.ndarray]:
  """BOS + prompt + response + EOS, right-padded; loss on response + EOS."""
  rows, masks = [], []
  dropped = 0
  for p, r in zip(prompts, responses):
    p_ids = tok.encode(p, bos=True)
    r_ids = tok.encode(r, eos=True)
    if len(p_ids) + len(r_ids) > max_len:
      dropped += 1
      continue
    rows.append(p_ids + r_ids)
    masks.append([0] * len(p_ids) + [1] * len(r_ids))
  return _pack(rows, masks, max_len, tok.pad_id, dropped, len(prompts))


def token_sft_data(tokens_NT: np.ndarray, prompt_len_N: np.ndarray,
                   response_len_N: np.ndarray, max_len: int,
                   pad_id: int) -> dict[str, np.ndarray]:
  """SFT arrays from stored token rows (BOS + prompt + response [+ EOS]).

  The exact sampled tokens, not a decode/re-encode round trip; identical
  rows are kept once (first occurrence), loss on the response tokens.
  """
  rows, masks, seen = [], [], set()
  dropped = 0
  for t_T, pl, rl in zip(tokens_NT, prompt_len_N, response_len_N):
    ids = [int(i) for i in t_T[:int(pl) + int(rl)]]
    if tuple(ids) in seen:
      continue
    seen.add(tuple(ids))
    if len(ids) > max_len:
      dropped += 1
      continue
    rows.append(ids)
    masks.append([0] * int(pl) + [1] * int(rl))
  return _pack(rows, masks, max_len, pad_id, dropped, len(seen))


def _pack(rows, masks, max_len, pad_id, dropped, total):
  if not rows:
    raise ValueError(f"no example fits max_len={max_len} tokens: raise it")
  if dropped:
    log.warning("dropped %d/%d examples longer than max_len=%d",
                dropped, total, max_len)
  tokens = np.full((len(rows), max_len), pad_id, np.int32)
  mask = np.zeros((len(rows), max_len), np.int32)
  valid = np.zeros((len(rows), max_len), bool)
  for i, (r, m) in enumerate(zip(rows, masks)):
    tokens[i, : len(r)] = r
    mask[i, : len(m)] = m
    valid[i, : len(r)] = True
  return {"tokens": tokens, "loss_mask": mask, "valid": valid}


def sft_loss(graphdef, params, batch, rng):
  del rng
  valid = batch["valid"]
  logits, _ = transformer.forward(
      graphdef, params, batch["tokens"],
      transformer.positions_from_mask(valid), valid)
  loss, n = losses.next_token_xent(logits, batch["tokens"], batch["loss_mask"])
  return loss, {"target_tokens": n}


def train(run: run_lib.Run, *, stage: str, data: dict[str, np.ndarray],
          steps: int, learning_rate: float, init_params=None,
          kill_at_step: int = -1, config_dict: dict | None = None):
  """Fine-tunes the policy on SFT arrays (`encode_sft`); (graphdef, params).

  Writes checkpoints/metrics under `run.stage_dir(stage)` (a sub-path such
  as "rl/rft" is fine) and resumes from them. Optimizer and loop settings
  come from `c.sft` (batch size, warmup, decay, clipping, checkpoints).
  `config_dict` (default: the whole config) is what a resume must match.
  """
  config = run.config
  sft = config.sft
  log.info("%s: %d sequences of <= %d tokens", stage, len(data["tokens"]),
           data["tokens"].shape[1])
  tx = train_lib.make_optimizer(train_lib.OptimConfig(
      learning_rate=learning_rate,
      warmup_steps=min(sft.warmup_steps, steps // 10 + 1),
      total_steps=steps, weight_decay=sft.weight_decay,
      grad_clip=sft.grad_clip))
  state, shardings, graphdef = train_lib.init_state(
      lambda: transformer.create(run.model_cfg, seed=config.seed), tx,
      run.mesh, config.seed)
  if init_params is not None:
    state["params"] = jax.device_put(init_params, shardings["params"])
  step_fn = train_lib.make_train_step(graphdef, sft_loss, tx, shardings,
                                      run.mesh)
  sampler = run.sampler(graphdef)
  val = run.examples("validation", config.eval.num_prompts)

  def eval_fn(step, params):  # periodic: validation prompts, fewer samples
    k = min(4, config.eval.samples_per_prompt)
    return rollouts.evaluate_policy(
        sampler, params, run.task, run.tok, val, k=k,
        max_new_tokens=config.sample.max_new_tokens,
        rng=jax.random.key(step), batch_rows=config.eval.batch_rows).metrics

  batch_size = min(sft.batch_size, len(data["tokens"]))
  state = train_lib.fit(
      stage_dir=run.stage_dir(stage), state=state, state_shardings=shardings,
      train_step=step_fn,
      batch_fn=run_lib.batch_fn(data, batch_size, config.seed),
      loop=train_lib.LoopConfig(
          num_steps=steps, ckpt_every=sft.ckpt_every, log_every=sft.log_every,
          eval_every=sft.eval_every, kill_at_step=kill_at_step),
      eval_fn=eval_fn,
      config_dict=config.to_dict() if config_dict is None else config_dict,
      desc=stage,
      batch_sharding=sharding_lib.batch_sharding(run.mesh))
  return graphdef, state["params"]
