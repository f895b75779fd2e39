"""SFT (and RFT) of the base policy: masked next-token cross-entropy.

The trainer core (data, sharded state, step, resumable loop) lives in
`sft_lib`, shared with the rl stage's RFT init. This stage writes into
`<workdir>/sft/`:
  checkpoints/, metrics.jsonl, tb/, params/ (export), eval.json, DONE.json.
"""

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Sequence

import jax

from pav_jax import checkpoint as ckpt_lib
from pav_jax import config as config_lib
from pav_jax import hf_gemma
from pav_jax import rollouts
from pav_jax import run_lib
from pav_jax import sft_lib
from pav_jax import sharding as sharding_lib
from pav_jax import train_lib
from pav_jax import transformer

log = logging.getLogger(__name__)

# Re-exported: the trainer core lives in sft_lib (shared with the rl stage).
encode_sft = sft_lib.encode_sft
sft_loss = sft_lib.sft_loss


# Initial params --------------------------------------------------------------


def load_init_params(path: str, model_cfg: config_lib.ModelConfig,
                     mesh=None):
  """Params from an HF Gemma-2 directory or an orbax params dir ("" = None).

  Both land sharded on `mesh` (default: the entered one), never whole on
  one device first.
  """
  if not path:
    return None
  if (Path(path) / "config.json").exists():
    hf_cfg = hf_gemma.config_from_hf(hf_gemma.read_hf_config(path),
                                     model_cfg.dtype)
    if dataclasses.replace(hf_cfg, dtype=model_cfg.dtype, remat=model_cfg.remat,
                           max_seq_len=model_cfg.max_seq_len) != model_cfg:
      raise ValueError(
          f"init_checkpoint {path} holds {hf_cfg}, which differs from the "
          f"configured model {model_cfg}: set config.model to match it")
    # Straight to the mesh, shard by shard: no device holds a whole tensor.
    return hf_gemma.load_hf_params(
        path, model_cfg, "float32",
        shardings=hf_gemma.mesh_shardings(model_cfg))
  mesh = sharding_lib.current_mesh(mesh)
  if mesh is None:  # one device: restore onto it
    _, abstract = transformer.abstract_params(model_cfg)
    return ckpt_lib.load_params_tree(path, abstract)
  _, params = train_lib.load_model_params(
      path, lambda: transformer.create(model_cfg), mesh)
  return params


# The stage --------------------------------------------------------------------


def train_stage(run: run_lib.Run, *, stage: str, prompts: Sequence[str],
                responses: Sequence[str], steps: int, learning_rate: float,
                init_params=None):
  """Fine-tunes the policy on (prompt, response) pairs; (graphdef, params)."""
  data = sft_lib.encode_sft(run.tok, prompts, responses, run.config.sft.max_len)
  return sft_lib.train(run, stage=stage, data=data, steps=steps,
                       learning_rate=learning_rate, init_params=init_params,
                       kill_at_step=run.config.sft.kill_at_step)


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
      init_params=load_init_params(config.init_checkpoint, run.model_cfg,
                                   run.mesh))
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
      samples=[{"question": ex.question, "response": ts[0],
                "correct": bool(c[0])}
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
  pairs = {(run.task.prompt(ex), t)
           for ex, ts, cs in zip(exs, ev.texts, ev.correct)
           for t, c in zip(ts, cs) if c}
  if not pairs:
    raise RuntimeError("RFT found no correct sample: train SFT longer first")
  prompts, responses = zip(*sorted(pairs))
  _, params = train_stage(
      run, stage="rft", prompts=prompts, responses=responses,
      steps=r.steps, learning_rate=r.learning_rate, init_params=params)
  ev_test = _evaluate_test(run, sampler, params, test)
  return params, dict(ev_test.metrics, rft_pairs=len(pairs))
