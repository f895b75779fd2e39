"""Monte-Carlo step labels under provers: the forked labeller and its stage.

Data flow (one chunk of prompts, all shapes static so decode compiles a few
times per run):

  prefill prompts once ─ fork n_mc ─> continuations of s_1 (question only)
        └ fork n_cov ─> seed rows ─ decode one step (stop_at_step) ─┐
                ^                                                    │
                └──── rows still running ─ fork n_mc ─> continuations of
                      s_{h+1} (the state after a step *is* its prefix cache)

Q̂(s) = fraction of a prefix's n_mc continuations graded correct. A step that
ends with EOS closes the trajectory: its value is the outcome itself (exact,
no rollouts). Continuations of a *different* model μ (a checkpoint prover)
cannot reuse π's cache: each prefix is prefilled once by μ and forked n_mc.
`mode="reprefill"` instead prefills every continuation separately: the
baseline of the forking benchmark, and the reference of the equality test.

A step ends at any token whose piece holds the delimiter "\n" (the
sampler's `step_id`, an id or a tuple of ids: `Tokenizer.step_ids`, so a
merged "\n\n" piece of a real vocabulary ends a step too); the verifier
reads its values at the same tokens (`verifier.boundary_mask`).

Value layout, shared with `verifier.prefix_values`: `q_NP[:, 0]` = V(s_1),
`q_NP[:, h]` = Q(s_h, a_h) = V(s_{h+1}); `mask_NP` marks real prefixes.

The fork-and-grade core (continuations of prefixes, grading, keys, the
`Budget`) lives in `mc_values.py`, shared with the search's test-time MC
scorer. A rollout cut by a full KV cache before the response budget makes
Q̂ biased: `label_dataset` refuses such a chunk (raise `c.label.cache_size`).

`label_dataset` writes a labelled set (shards + manifest, resumable): the
format, its identity and `load_labelled` live in `labelled_set.py`; the math
of advantages and rewards over the labels in `advantages.py`.
"""

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pav_jax import identity as id_lib
from pav_jax import labelled_set
from pav_jax import mc_values
from pav_jax import run_lib
from pav_jax import sampler as sampler_lib
from pav_jax import transformer

log = logging.getLogger(__name__)

GradeFn = mc_values.GradeFn


# -----------------------------------------------------------------------------
# Host helpers.
# -----------------------------------------------------------------------------


def bisect_first_zero(is_zero: Callable[[int], bool], lo: int, hi: int) -> int:
  """Smallest h in [lo, hi] with is_zero(h), assuming zeros persist (host).

  Locates a pit with O(log H) value estimates instead of H. Returns hi + 1
  when no prefix in range is a pit.
  """
  ans = hi + 1
  while lo <= hi:
    mid = (lo + hi) // 2
    if is_zero(mid):
      ans, hi = mid, mid - 1
    else:
      lo = mid + 1
  return ans


# -----------------------------------------------------------------------------
# The labeller.
# -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LabelConfig:
  """Static labelling parameters.

  Attributes:
    n_cov: seed rollouts per prompt.
    n_mc: continuations per step-boundary prefix.
    max_new_tokens: response budget (seeds and continuations alike).
    max_step_tokens: longest step a seed may take (longer: truncated).
    max_steps: most steps of a seed rollout.
    prompts_per_chunk: prompts labelled together (one shard each chunk).
    mode: "fork" (continuations fork the prefix cache) or "reprefill".
    row_buckets: continuation batches are padded to multiples of
      rows/row_buckets, so decode compiles at most row_buckets + 1 times.
  """

  n_cov: int = 4
  n_mc: int = 8
  max_new_tokens: int = 80
  max_step_tokens: int = 32
  max_steps: int = 12
  prompts_per_chunk: int = 32
  mode: str = "fork"
  row_buckets: int = 4

  def __post_init__(self):
    if self.mode not in ("fork", "reprefill"):
      raise ValueError(f"mode must be 'fork' or 'reprefill', got {self.mode!r}")
    if min(self.n_cov, self.n_mc, self.max_steps, self.prompts_per_chunk) < 1:
      raise ValueError("n_cov, n_mc, max_steps, prompts_per_chunk must be"
                       f" >= 1: {self}")

  @property
  def num_prefixes(self) -> int:
    return self.max_steps + 1


Budget = mc_values.Budget


@dataclasses.dataclass
class Prover:
  """A checkpoint prover μ: its sampler and params (Q̂^μ at π's prefixes)."""

  sampler: Any
  params: Any


def label_chunk(sampler, params, prompts: Sequence[Sequence[int]],
                grade: GradeFn, key: jax.Array, cfg: LabelConfig,
                prover: Prover | None = None,
                prompt_offset: int = 0) -> tuple[dict, Budget]:
  """Seed rollouts and MC labels of every step-boundary prefix of a chunk.

  Args:
    sampler: a `sampler.Sampler` (or anything with its prefill/decode and a
      `SamplerState`): the base policy π.
    params: π's params.
    prompts: token lists (BOS + prompt, ending with the step delimiter);
      padded to cfg.prompts_per_chunk with copies of the first.
    grade: grade(prompt index (prompt_offset + i), response tokens) -> 0/1.
    key: PRNG key of the chunk.
    cfg: labelling parameters.
    prover: optional checkpoint prover μ; adds Q̂^μ at π's prefixes.
    prompt_offset: global index of prompts[0] (passed to `grade`).

  Returns:
    (arrays, budget); arrays (N = real prompts * n_cov rows, P prefixes):
      tokens_NT: BOS + prompt + response (+ EOS), pad after; T =
        longest prompt + max_new_tokens + 1.
      prompt_len_N, response_len_N, num_prefixes_N, outcome_N (0/1),
      finished_N (ended with EOS), prompt_index_N,
      q_NP (Q̂^π), succ_NP, count_NP (n_mc; 0 where exact/padded), mask_NP,
      and with a prover q_mu_NP, succ_mu_NP.
  """
  t0 = time.time()
  budget = Budget()
  real = len(prompts)
  if real > cfg.prompts_per_chunk:
    raise ValueError(f"{real} prompts exceed prompts_per_chunk"
                     f" {cfg.prompts_per_chunk}")
  prompts = [list(p) for p in prompts]
  prompts += [prompts[0]] * (cfg.prompts_per_chunk - real)
  c, n_cov, n_mc, p_max = len(prompts), cfg.n_cov, cfg.n_mc, cfg.num_prefixes
  r_total = c * n_cov
  eos = sampler.eos_id
  k_prompt, k_seed, k_mc, k_mu = (jax.random.fold_in(key, i) for i in range(4))

  prompt_of_row = np.repeat(np.arange(c), n_cov)
  resp = [[] for _ in range(r_total)]
  q_succ = np.zeros((r_total, p_max), np.int32)
  q_count = np.zeros((r_total, p_max), np.int32)
  mu_succ = np.zeros((r_total, p_max), np.int32)
  n_prefix = np.ones(r_total, np.int32)  # s_1 always exists
  exact = np.full((r_total, p_max), -1.0)  # outcome at an EOS-closed prefix
  finished = np.zeros(r_total, bool)
  running = np.ones(r_total, bool)

  def label(h, state, rows_A):
    """Q̂^π (and Q̂^μ) of prefix h of rows_A; state rows are rows_A's."""
    if h == 0:  # s_1 is per prompt; state rows are prompts.
      resp_A = [[] for _ in rows_A]
      prefixes = [prompts[i] for i in rows_A]
      prompt_A = rows_A + prompt_offset
    else:
      resp_A = [resp[r] for r in rows_A]
      prefixes = [prompts[prompt_of_row[r]] + resp[r] for r in rows_A]
      prompt_A = prompt_of_row[rows_A] + prompt_offset
    keys = mc_values.mc_keys(k_mc, h, rows_A, n_mc)
    if cfg.mode == "fork":
      succ = mc_values.continue_forked(sampler, params, state, rows_A, resp_A,
                                       prompt_A, keys, grade, cfg, r_total,
                                       budget)
    else:
      succ = mc_values.continue_prefilled(
          sampler, params, prefixes, resp_A, prompt_A, keys, grade, cfg,
          r_total, budget, repeat=True)
    succ_mu = None
    if prover is not None:
      succ_mu = mc_values.continue_prefilled(
          prover.sampler, prover.params, prefixes, resp_A, prompt_A,
          mc_values.mc_keys(k_mu, h, rows_A, n_mc), grade, cfg, r_total, budget,
          repeat=False)
    return succ, succ_mu

  # Prompts: prefilled once; s_1 labelled per prompt (copied to its seeds).
  state = sampler.prefill(params, prompts, None,
                          key_B=jax.random.split(k_prompt, c))
  budget.prefilled_tokens += sampler_lib.prefilled_tokens(prompts[:real])
  all_prompts = np.arange(c)
  succ, succ_mu = label(0, state, all_prompts)
  q_succ[:, 0] = succ[prompt_of_row]
  q_count[:, 0] = n_mc
  if succ_mu is not None:
    mu_succ[:, 0] = succ_mu[prompt_of_row]

  seed_keys = jax.vmap(lambda r: jax.random.fold_in(k_seed, r))(
      jnp.arange(r_total))
  seed = sampler_lib.fork(state, n_cov, key_B=seed_keys)
  del state
  for h in range(1, cfg.max_steps + 1):
    out = sampler.decode(params, seed, cfg.max_step_tokens, stop_at_step=True)
    seed = out.state
    toks, lens, stops = jax.device_get(
        (out.tokens_BN, out.length_B, out.stop_B))
    budget.sampled_tokens += int(lens[running[:]].sum())
    for r in np.flatnonzero(running):
      resp[r] += toks[r, : lens[r]].tolist()
    over = np.array([len(x) >= cfg.max_new_tokens for x in resp])
    ended_eos = running & (stops == sampler_lib.EOS)
    stepped = running & (stops == sampler_lib.STEP_END) & ~over
    # A seed cut by the cache before the response budget is biased.
    full = running & (stops == sampler_lib.CACHE_FULL)
    budget.cache_full += int(full.sum())
    budget.cache_full_biased += int((full & ~over).sum())
    # An EOS-closed step is a prefix whose value is the outcome (exact).
    for r in np.flatnonzero(ended_eos):
      if len(resp[r]) <= cfg.max_new_tokens:
        exact[r, h] = -2.0  # filled after grading
        n_prefix[r] = h + 1
      finished[r] = len(resp[r]) <= cfg.max_new_tokens
    for r in np.flatnonzero(stepped):
      n_prefix[r] = h + 1
    running = stepped
    if h == cfg.max_steps:
      break
    if running.any():
      rows_A = np.flatnonzero(running)
      succ, succ_mu = label(h, seed, rows_A)
      q_succ[rows_A, h] = succ
      q_count[rows_A, h] = n_mc
      if succ_mu is not None:
        mu_succ[rows_A, h] = succ_mu
      # Stop rows that reached their budget from decoding further.
      seed = seed.replace(finished_B=jnp.asarray(~running))
    else:
      break
  # Rows running at max_steps are truncated (their last step had no label).
  n_prefix = np.where(running & (n_prefix > cfg.max_steps), cfg.max_steps,
                      n_prefix)

  n = real * n_cov
  outcome = np.zeros(r_total, np.float32)
  for r in range(n):
    body = resp[r][:-1] if resp[r] and resp[r][-1] == eos else resp[r]
    outcome[r] = float(grade(int(prompt_of_row[r]) + prompt_offset,
                             body[: cfg.max_new_tokens]) > 0)
  p_ids = np.arange(p_max)[None, :]
  mask = p_ids < n_prefix[:, None]
  exact_m = (exact == -2.0) & mask
  q = np.where(q_count > 0, q_succ / np.maximum(q_count, 1), 0.0)
  q = np.where(exact_m, outcome[:, None], q)
  q_count = np.where(exact_m | ~mask, 0, q_count)
  t_len = max(len(p) for p in prompts) + cfg.max_new_tokens + 1
  tokens = np.full((n, t_len), sampler.pad_id, np.int32)
  for r in range(n):
    row = prompts[prompt_of_row[r]] + resp[r][: cfg.max_new_tokens]
    tokens[r, : len(row)] = row
  arrays = {
      "tokens_NT": tokens,
      "prompt_len_N": np.array(
          [len(prompts[prompt_of_row[r]]) for r in range(n)], np.int32),
      "response_len_N": np.array(
          [min(len(resp[r]), cfg.max_new_tokens + 1) for r in range(n)],
          np.int32),
      "num_prefixes_N": n_prefix[:n].astype(np.int32),
      "outcome_N": outcome[:n],
      "finished_N": finished[:n],
      "prompt_index_N": (prompt_of_row[:n] + prompt_offset).astype(np.int32),
      "q_NP": q[:n].astype(np.float32),
      "succ_NP": np.where(mask, q_succ, 0)[:n].astype(np.int32),
      "count_NP": q_count[:n].astype(np.int32),
      "mask_NP": mask[:n],
  }
  if prover is not None:
    q_mu = np.where(q_count > 0, mu_succ / n_mc, q)
    arrays["q_mu_NP"] = np.where(mask, q_mu, 0.0)[:n].astype(np.float32)
    arrays["succ_mu_NP"] = np.where(mask, mu_succ, 0)[:n].astype(np.int32)
  budget.seed_rollouts += n
  budget.seconds += time.time() - t0
  return arrays, budget


# -----------------------------------------------------------------------------
# Labelling a whole set into a directory (format: `labelled_set`).
# -----------------------------------------------------------------------------


def label_dataset(directory: str | Path, sampler, params,
                  prompts: Sequence[Sequence[int]], grade: GradeFn,
                  key: jax.Array, cfg: LabelConfig, identity: dict,
                  prover: Prover | None = None, config: dict | None = None,
                  max_chunks: int | None = None,
                  cache_key: str = "label.cache_size") -> dict:
  """Labels all prompts chunk by chunk into `directory` (resumes); manifest.

  `identity` (JSON-able: tokenizer sha256, step/eos ids, policy checkpoint,
  prover ...) must match an existing manifest. `max_chunks` stops after that
  many *new* chunks (simulates an interruption in tests). A chunk whose
  rollouts were cut by a full KV cache before the response budget
  (`Budget.cache_full_biased` > 0: Q̂ biased)
  raises `mc_values.CacheFullError` naming `cache_key`. Every process
  labels; process 0 alone writes shards and the manifest.
  """
  directory = Path(directory)
  if labelled_set.is_writer():
    directory.mkdir(parents=True, exist_ok=True)
  labelled_set.sync(f"label_dataset:{directory}:mkdir")
  identity = json.loads(json.dumps(dict(
      identity, label_config=dataclasses.asdict(cfg),
      num_prompts=len(prompts))))
  manifest = labelled_set.open_manifest(directory, identity, config,
                                        Budget().to_dict())
  chunk = cfg.prompts_per_chunk
  num_chunks = -(-len(prompts) // chunk)
  new = 0
  for i in range(num_chunks):
    if labelled_set.has_shard(directory, manifest, i):
      continue
    if max_chunks is not None and new >= max_chunks:
      break
    lo = i * chunk
    arrays, b = label_chunk(sampler, params, prompts[lo:lo + chunk], grade,
                            jax.random.fold_in(key, i), cfg, prover, lo)
    # Checked before the shard is written: a biased shard is never kept.
    mc_values.check_cache_full(b.cache_full_biased, f"labelling chunk {i} of "
                               f"{directory}", cache_key)
    manifest = labelled_set.add_shard(
        directory, manifest, i, arrays,
        (lo, lo + len(prompts[lo:lo + chunk])), b.to_dict(), num_chunks)
    new += 1
    log.info("labelled chunk %d/%d (%d prefixes, %.1fs)", i + 1, num_chunks,
             manifest["shards"][labelled_set.shard_name(i)]["prefixes"],
             b.seconds)
  return manifest


# -----------------------------------------------------------------------------
# The pipeline stage.
# -----------------------------------------------------------------------------


def label_config(config) -> LabelConfig:
  lc = config.label
  return LabelConfig(
      n_cov=lc.n_cov, n_mc=lc.n_mc, max_new_tokens=config.sample.max_new_tokens,
      max_step_tokens=lc.max_step_tokens, max_steps=lc.max_steps,
      prompts_per_chunk=lc.prompts_per_chunk, mode=lc.mode)


def _params_sha256(params, path) -> str:
  """Content hash of a policy: its arrays on one host; on several hosts
  (arrays not fully addressable) the bytes of its exported files."""
  if jax.process_count() == 1:
    return id_lib.tree_sha256(params)
  files = sorted(p for p in Path(path).rglob("*") if p.is_file())
  return id_lib.tree_sha256({str(p.relative_to(path)): np.frombuffer(
      p.read_bytes(), np.uint8) for p in files})


def run_label(run: run_lib.Run) -> dict:
  """Stage "label": train and eval labelled sets under <workdir>/label/."""
  config, workdir = run.config, run.workdir
  graphdef, params = run.load_policy()
  lc = config.label
  sampler = run.sampler(graphdef, cache_size=lc.cache_size)
  prover, prover_sha = None, None
  if lc.prover_checkpoint:
    _, prover_params = run.load_params_dir(
        lc.prover_checkpoint, lambda: transformer.create(run.model_cfg))
    prover = Prover(sampler, prover_params)
    prover_sha = _params_sha256(prover_params, lc.prover_checkpoint)
  cfg = label_config(config)
  identity = labelled_set.identity(
      run.tok, policy_sha256=_params_sha256(params, workdir / "sft" / "params"),
      prover_sha256=prover_sha, task=config.task.name, seed=run.seed)
  summary, md = {}, ["| split | prompts | rollouts | prefixes | sampled tok | "
                     "prefilled tok | MC rollouts | cache full (biased) | "
                     "mean Q̂(s_1) | outcome | s |",
                     "|---|---|---|---|---|---|---|---|---|---|---|"]
  for split, task_split, num, stream in (
      ("train", "train", lc.num_prompts, "label_train"),
      ("eval", "test", lc.num_eval_prompts, "label_eval")):
    exs = run.examples(task_split, num, stream)
    prompts = run.encode_prompts(exs)

    def grade(i, ids, exs=exs):
      return run.task.grade(exs[i], run.tok.decode(ids))

    t0 = time.time()
    m = label_dataset(workdir / "label" / split, sampler, params, prompts,
                      grade, run.key(stream), cfg, dict(identity, split=split),
                      prover, config.to_dict())
    data = labelled_set.load_labelled(workdir / "label" / split)
    b = m["budget"]
    summary[split] = {"counts": m["counts"], "budget": b,
                      "mean_v1": float(data["q_NP"][:, 0].mean()),
                      "outcome": float(data["outcome_N"].mean()),
                    "cache_full": int(b.get("cache_full", 0)),
                    "cache_full_biased": int(b.get("cache_full_biased", 0)),
                      "seconds": time.time() - t0}
    print(f"label/{split}: {m['counts']} budget {b}")
    md.append(f"| {split} | {m['counts']['prompts']} | "
              f"{m['counts']['rollouts']} | "
              f"{m['counts']['prefixes']} | {b['sampled_tokens']} | "
              f"{b['prefilled_tokens']} | {b['mc_rollouts']} | "
              f"{summary[split]['cache_full']} "
              f"({summary[split]['cache_full_biased']}) | "
              f"{summary[split]['mean_v1']:.3f} | "
              f"{summary[split]['outcome']:.3f} | "
              f"{summary[split]['seconds']:.0f} |")
  summary["report_md"] = (
      f"MC labels: n_cov={cfg.n_cov}, n_mc={cfg.n_mc}, mode={cfg.mode} "
      "(continuations fork each prefix's KV cache).\n\n" + "\n".join(md))
  return summary
