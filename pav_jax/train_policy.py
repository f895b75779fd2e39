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
from typing import Any, Sequence

import jax
import numpy as np

from pav_jax import advantages
from pav_jax import checkpoint as ckpt_lib
from pav_jax import config as config_lib
from pav_jax import losses
from pav_jax import rollouts
from pav_jax import sampler as sampler_lib
from pav_jax import sharding as sharding_lib
from pav_jax import tasks as tasks_lib
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


def batch_fn(data: dict[str, np.ndarray], batch_size: int, seed: int):
  """Deterministic batches: step -> rows of a per-epoch permutation."""
  n = len(data["tokens"])
  if batch_size > n:
    raise ValueError(f"batch_size {batch_size} exceeds the {n} examples")
  per_epoch = n // batch_size

  def fn(step: int) -> dict[str, np.ndarray]:
    epoch, i = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    idx = perm[i * batch_size:(i + 1) * batch_size]
    return {k: v[idx] for k, v in data.items()}

  return fn


def sft_loss(graphdef, params, batch, rng):
  del rng
  valid = batch["valid"]
  logits, _ = transformer.forward(
      graphdef, params, batch["tokens"], transformer.positions_from_mask(valid), valid)
  loss, n = losses.next_token_xent(logits, batch["tokens"], batch["loss_mask"])
  return loss, {"target_tokens": n}


# Evaluation -------------------------------------------------------------------


@dataclasses.dataclass
class PolicyEval:
  metrics: dict[str, float]
  correct: np.ndarray  # [P, k]
  texts: list[list[str]]


def evaluate(sampler, params, task, tok, examples, *, k: int, max_new_tokens: int,
             rng, batch_rows: int) -> PolicyEval:
  """Samples k responses per held-out prompt: pass@1/4/16 and mean steps."""
  prompts = [tok.encode(task.prompt(ex), bos=True) for ex in examples]
  ro = rollouts.sample(sampler, params, prompts, k, rng, max_new_tokens, batch_rows)
  texts = [[tok.decode(r) for r in rs] for rs in ro.responses]
  correct = np.array([[task.grade(ex, t) for t in ts]
                      for ex, ts in zip(examples, texts)], np.float64)
  c = correct.sum(1)
  metrics = {f"pass@{j}": float(advantages.pass_at_k(np.full_like(c, k), c, j).mean())
             for j in (1, 4, 16, 64) if j <= k}
  metrics["mean_steps"] = float(np.mean([len(task.steps(t)) for ts in texts for t in ts]))
  metrics["truncated_frac"] = float(1.0 - ro.finished.mean())
  metrics["generated_tokens"] = float(ro.generated_tokens)
  return PolicyEval(metrics, correct, texts)


# Shared set-up ----------------------------------------------------------------


@dataclasses.dataclass
class Setup:
  task: Any
  tok: tok_lib.Tokenizer
  model_cfg: config_lib.ModelConfig
  mesh: Any


def make_task(config):
  knobs = dict(config.task.knobs)
  if config.task.data_dir:
    knobs["data_dir"] = config.task.data_dir
  return tasks_lib.get_task(config.task.name, **knobs)


def get_tokenizer(config, workdir: Path, task) -> tok_lib.Tokenizer:
  """The configured tokenizer, or one trained on the task's train corpus."""
  if config.tokenizer.path:
    return tok_lib.Tokenizer.load(config.tokenizer.path)
  path = workdir / "tokenizer.model"
  if path.exists():
    return tok_lib.Tokenizer.load(path)
  exs = task.examples("train", min(config.task.num_train, 5000), seed=config.seed)
  texts = [task.prompt(e) + e.solution for e in exs]
  workdir.mkdir(parents=True, exist_ok=True)
  return tok_lib.train_tokenizer(texts, workdir / "tokenizer", config.tokenizer.vocab_size)


def make_setup(config, workdir: Path, mesh) -> Setup:
  from pav_jax import defaults  # entry-point layer: reads the ConfigDict
  task = make_task(config)
  tok = get_tokenizer(config, workdir, task)
  model_cfg = defaults.model_config(config.model)
  tok.check_fits(model_cfg.vocab_size)
  return Setup(task, tok, model_cfg, mesh)


def make_sampler(setup: Setup, graphdef, config) -> sampler_lib.Sampler:
  s = config.sample
  return sampler_lib.Sampler(
      graphdef, setup.model_cfg, cache_size=s.cache_size,
      eos_id=setup.tok.eos_id, step_id=setup.tok.step_id, pad_id=setup.tok.pad_id,
      sampling=sampler_lib.SamplingConfig(
          temperature=s.temperature, top_k=s.top_k or None,
          top_p=s.top_p if s.top_p < 1.0 else None))


def load_policy(workdir: Path, setup: Setup, stage: str = "sft"):
  """(graphdef, params) exported by a finished policy stage, on setup.mesh."""
  return train_lib.load_params(
      Path(workdir) / stage / "params",
      lambda: transformer.create(setup.model_cfg), setup.mesh)


def load_init_params(path: str, model_cfg: config_lib.ModelConfig):
  """Params from an HF Gemma-2 directory or an orbax params dir ("" = None)."""
  if not path:
    return None
  if (Path(path) / "config.json").exists():
    from pav_jax import hf_gemma  # safetensors only needed here
    hf_cfg = hf_gemma.config_from_hf(hf_gemma.read_hf_config(path), model_cfg.dtype)
    if dataclasses.replace(hf_cfg, dtype=model_cfg.dtype, remat=model_cfg.remat,
                           max_seq_len=model_cfg.max_seq_len) != model_cfg:
      raise ValueError(
          f"init_checkpoint {path} holds {hf_cfg}, which differs from the "
          f"configured model {model_cfg}: set config.model to match it")
    return hf_gemma.load_params(path, model_cfg, "float32")
  _, abstract = transformer.abstract_params(model_cfg)
  return ckpt_lib.load_params(path, abstract)


# The stage --------------------------------------------------------------------


def train_stage(config, workdir: Path, setup: Setup, *, stage: str,
                prompts: Sequence[str], responses: Sequence[str], steps: int,
                learning_rate: float, init_params=None):
  """Fine-tunes the policy on (prompt, response) pairs; returns params."""
  sft = config.sft
  data = encode_sft(setup.tok, prompts, responses, sft.max_len)
  log.info("%s: %d sequences of <= %d tokens", stage, len(data["tokens"]), sft.max_len)
  tx = train_lib.make_optimizer(train_lib.OptimConfig(
      learning_rate=learning_rate, warmup_steps=min(sft.warmup_steps, steps // 10 + 1),
      total_steps=steps, weight_decay=sft.weight_decay, grad_clip=sft.grad_clip))
  state, shardings, graphdef = train_lib.init_state(
      lambda: transformer.create(setup.model_cfg, seed=config.seed), tx, setup.mesh,
      config.seed)
  if init_params is not None:
    state["params"] = jax.device_put(init_params, shardings["params"])
  step_fn = train_lib.make_train_step(graphdef, sft_loss, tx, shardings, setup.mesh)
  sampler = make_sampler(setup, graphdef, config)
  val = setup.task.examples("validation", config.eval.num_prompts, seed=config.seed)

  def eval_fn(step, params):  # periodic: validation prompts, fewer samples
    k = min(4, config.eval.samples_per_prompt)
    return evaluate(sampler, params, setup.task, setup.tok, val, k=k,
                    max_new_tokens=config.sample.max_new_tokens,
                    rng=jax.random.key(step), batch_rows=config.eval.batch_rows).metrics

  state = train_lib.fit(
      stage_dir=workdir / stage, state=state, state_shardings=shardings,
      train_step=step_fn, batch_fn=batch_fn(data, sft.batch_size, config.seed),
      loop=train_lib.LoopConfig(
          num_steps=steps, ckpt_every=sft.ckpt_every, log_every=sft.log_every,
          eval_every=sft.eval_every, kill_at_step=sft.kill_at_step),
      eval_fn=eval_fn,
      config_dict=config.to_dict(), desc=stage,
      batch_sharding=sharding_lib.batch_sharding(setup.mesh))
  return graphdef, state["params"]


def run_sft(config, workdir: Path, mesh) -> dict:
  """SFT on reference solutions (+ optional RFT), evaluation, export."""
  setup = make_setup(config, workdir, mesh)
  stage_dir = workdir / "sft"
  t0 = time.time()
  train = setup.task.examples("train", config.task.num_train, seed=config.seed)
  graphdef, params = train_stage(
      config, workdir, setup, stage="sft",
      prompts=[setup.task.prompt(e) for e in train],
      responses=[e.solution for e in train],
      steps=config.sft.steps, learning_rate=config.sft.learning_rate,
      init_params=load_init_params(config.init_checkpoint, setup.model_cfg))
  sampler = make_sampler(setup, graphdef, config)
  test = setup.task.examples("test", config.eval.num_prompts, seed=config.seed)
  ev = evaluate(sampler, params, setup.task, setup.tok, test,
                k=config.eval.samples_per_prompt,
                max_new_tokens=config.sample.max_new_tokens,
                rng=jax.random.key(config.seed + 1), batch_rows=config.eval.batch_rows)
  result = {"sft": ev.metrics}
  if config.rft.enabled:
    params, result["rft"] = run_rft(config, workdir, setup, sampler, params, test)
  ckpt_lib.save_params(stage_dir / "params", params)
  result.update(
      seconds=time.time() - t0,
      num_params=setup.model_cfg.num_params(),
      samples=[{"question": ex.question, "response": ts[0], "correct": bool(c[0])}
               for ex, ts, c in zip(test[:4], ev.texts, ev.correct)])
  if jax.process_index() == 0:
    (stage_dir / "eval.json").write_text(json.dumps(result, indent=2))
  return result


def run_rft(config, workdir, setup, sampler, params, test):
  """Rejection fine-tuning: SFT on the policy's own correct samples."""
  r = config.rft
  exs = setup.task.examples("train", r.num_prompts, seed=config.seed + 7)
  ev = evaluate(sampler, params, setup.task, setup.tok, exs, k=r.samples_per_prompt,
                max_new_tokens=config.sample.max_new_tokens,
                rng=jax.random.key(config.seed + 2), batch_rows=config.eval.batch_rows)
  pairs = {(setup.task.prompt(ex), t) for ex, ts, cs in zip(exs, ev.texts, ev.correct)
           for t, c in zip(ts, cs) if c}
  if not pairs:
    raise RuntimeError("RFT found no correct sample: train SFT longer first")
  prompts, responses = zip(*sorted(pairs))
  _, params = train_stage(
      config, workdir, setup, stage="rft", prompts=prompts, responses=responses,
      steps=r.steps, learning_rate=r.learning_rate, init_params=params)
  ev_test = evaluate(sampler, params, setup.task, setup.tok, test,
                     k=config.eval.samples_per_prompt,
                     max_new_tokens=config.sample.max_new_tokens,
                     rng=jax.random.key(config.seed + 1), batch_rows=config.eval.batch_rows)
  return params, dict(ev_test.metrics, rft_pairs=len(pairs))
