"""SFT (and RFT) of the base policy: masked next-token cross-entropy.

The trainer, big_vision style, is one function cut into phases: tokenizer,
data, model and optimizer, sharded state, step, loop (with checkpoints and
resume), evaluation. It writes into `<workdir>/sft/`:
  checkpoints/, metrics.jsonl, tb/, params/ (export), eval.json, DONE.json.
"""

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from pav_jax import checkpoint as ckpt_lib
from pav_jax import config as config_lib
from pav_jax import hf_gemma
from pav_jax import losses
from pav_jax import rollouts
from pav_jax import run_lib
from pav_jax import sharding as sharding_lib
from pav_jax import tokenizer as tok_lib
from pav_jax import train_lib
from pav_jax import transformer

log = logging.getLogger(__name__)


# Data ------------------------------------------------------------------------


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
  if not rows:
    raise ValueError(f"no example fits max_len={max_len} tokens: raise it")
  if dropped:
    log.warning("dropped %d/%d examples longer than max_len=%d",
                dropped, len(prompts), max_len)
  tokens = np.full((len(rows), max_len), tok.pad_id, np.int32)
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
      graphdef, params, batch["tokens"], transformer.positions_from_mask(valid), valid)
  loss, n = losses.next_token_xent(logits, batch["tokens"], batch["loss_mask"])
  return loss, {"target_tokens": n}


# Initial params ------------------------------------------------------------------


def load_init_params(path: str, model_cfg: config_lib.ModelConfig):
  """Params from an HF Gemma-2 directory or an orbax params dir ("" = None)."""
  if not path:
    return None
  if (Path(path) / "config.json").exists():
    hf_cfg = hf_gemma.config_from_hf(hf_gemma.read_hf_config(path), model_cfg.dtype)
    if dataclasses.replace(hf_cfg, dtype=model_cfg.dtype, remat=model_cfg.remat,
                           max_seq_len=model_cfg.max_seq_len) != model_cfg:
      raise ValueError(
          f"init_checkpoint {path} holds {hf_cfg}, which differs from the "
          f"configured model {model_cfg}: set config.model to match it")
    # Straight to the mesh, shard by shard: no device holds a whole tensor.
    return hf_gemma.load_params(
        path, model_cfg, "float32",
        shardings=hf_gemma.mesh_shardings(model_cfg))
  _, abstract = transformer.abstract_params(model_cfg)
  return ckpt_lib.load_params(path, abstract)


# The stage --------------------------------------------------------------------


def train_stage(run: run_lib.Run, *, stage: str, prompts: Sequence[str],
                responses: Sequence[str], steps: int, learning_rate: float,
                init_params=None):
  """Fine-tunes the policy on (prompt, response) pairs; returns params."""
  config = run.config
  sft = config.sft
  data = encode_sft(run.tok, prompts, responses, sft.max_len)
  log.info("%s: %d sequences of <= %d tokens", stage, len(data["tokens"]), sft.max_len)
  tx = train_lib.make_optimizer(train_lib.OptimConfig(
      learning_rate=learning_rate, warmup_steps=min(sft.warmup_steps, steps // 10 + 1),
      total_steps=steps, weight_decay=sft.weight_decay, grad_clip=sft.grad_clip))
  state, shardings, graphdef = train_lib.init_state(
      lambda: transformer.create(run.model_cfg, seed=config.seed), tx, run.mesh,
      config.seed)
  if init_params is not None:
    state["params"] = jax.device_put(init_params, shardings["params"])
  step_fn = train_lib.make_train_step(graphdef, sft_loss, tx, shardings, run.mesh)
  sampler = run.sampler(graphdef)
  val = run.examples("validation", config.eval.num_prompts)

  def eval_fn(step, params):  # periodic: validation prompts, fewer samples
    k = min(4, config.eval.samples_per_prompt)
    return rollouts.evaluate_policy(
        sampler, params, run.task, run.tok, val, k=k,
        max_new_tokens=config.sample.max_new_tokens,
        rng=jax.random.key(step), batch_rows=config.eval.batch_rows).metrics

  state = train_lib.fit(
      stage_dir=run.stage_dir(stage), state=state, state_shardings=shardings,
      train_step=step_fn,
      batch_fn=run_lib.batch_fn(data, sft.batch_size, config.seed),
      loop=train_lib.LoopConfig(
          num_steps=steps, ckpt_every=sft.ckpt_every, log_every=sft.log_every,
          eval_every=sft.eval_every, kill_at_step=sft.kill_at_step),
      eval_fn=eval_fn,
      config_dict=config.to_dict(), desc=stage,
      batch_sharding=sharding_lib.batch_sharding(run.mesh))
  return graphdef, state["params"]


def _evaluate_test(run: run_lib.Run, sampler, params, test):
  config = run.config
  return rollouts.evaluate_policy(
      sampler, params, run.task, run.tok, test,
      k=config.eval.samples_per_prompt,
      max_new_tokens=config.sample.max_new_tokens,
      rng=run.key("policy_eval"), batch_rows=config.eval.batch_rows)


def run_sft(run: run_lib.Run) -> dict:
  """SFT on reference solutions (+ optional RFT), evaluation, export."""
  config = run.config
  stage_dir = run.stage_dir("sft")
  t0 = time.time()
  train = run.examples("train", config.task.num_train)
  graphdef, params = train_stage(
      run, stage="sft",
      prompts=[run.task.prompt(e) for e in train],
      responses=[e.solution for e in train],
      steps=config.sft.steps, learning_rate=config.sft.learning_rate,
      init_params=load_init_params(config.init_checkpoint, run.model_cfg))
  sampler = run.sampler(graphdef)
  test = run.examples("test", config.eval.num_prompts)
  ev = _evaluate_test(run, sampler, params, test)
  result = {"sft": ev.metrics}
  if config.rft.enabled:
    params, result["rft"] = run_rft(run, sampler, params, test)
  ckpt_lib.save_params(stage_dir / "params", params)
  result.update(
      seconds=time.time() - t0,
      num_params=run.model_cfg.num_params(),
      samples=[{"question": ex.question, "response": ts[0], "correct": bool(c[0])}
               for ex, ts, c in zip(test[:4], ev.texts, ev.correct)])
  if jax.process_index() == 0:
    (stage_dir / "eval.json").write_text(json.dumps(result, indent=2))
  return result


def run_rft(run: run_lib.Run, sampler, params, test):
  """Rejection fine-tuning: SFT on the policy's own correct samples."""
  config = run.config
  r = config.rft
  exs = run.examples("train", r.num_prompts, "rft_prompts")
  ev = rollouts.evaluate_policy(
      sampler, params, run.task, run.tok, exs, k=r.samples_per_prompt,
      max_new_tokens=config.sample.max_new_tokens,
      rng=run.key("rft_samples"), batch_rows=config.eval.batch_rows)
  pairs = {(run.task.prompt(ex), t) for ex, ts, cs in zip(exs, ev.texts, ev.correct)
           for t, c in zip(ts, cs) if c}
  if not pairs:
    raise RuntimeError("RFT found no correct sample: train SFT longer first")
  prompts, responses = zip(*sorted(pairs))
  _, params = train_stage(
      run, stage="rft", prompts=prompts, responses=responses,
      steps=r.steps, learning_rate=r.learning_rate, init_params=params)
  ev_test = _evaluate_test(run, sampler, params, test)
  return params, dict(ev_test.metrics, rft_pairs=len(pairs))
