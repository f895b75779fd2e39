"""Sampler throughput: KV-cache sampler vs. a no-cache baseline, and forking.

  python benchmarks/sampler.py [--batches=1,16,64] [--repeats=3]
  python benchmarks/sampler.py --baseline=8686add --only_ab   # A/B, same run

Prints, for the `tiny` preset (ModelConfig.tiny(vocab_size=320)):
  1. generated tokens/s of `pav_jax.sampler.Sampler` (prompt 64 tokens, 128
     new tokens, temperature 1, no EOS/step stop) at batch 1, 16 and 64;
  2. the same for a naive sampler that runs one jitted full forward over the
     whole padded [B, 64 + 128] sequence per new token (a lax.fori_loop);
  3. prefill of a 256-token prefix once + `sampler.fork(n=8)` vs. prefilling
     the same prefix 8 times (a batch of 8 identical prompts).
Compilation is excluded: the KV-cache sampler and the fork get one warm-up
call and report the best of `--repeats` timed calls ended by
`block_until_ready`; the slow no-cache baseline is compiled ahead of time
(`.lower().compile()`) and timed `--naive_repeats` times (default once).
This is a benchmark, not a test; results on a shared machine are noisy.

`--baseline=REV` also times the sampler of git revision REV (its layers.py,
transformer.py and sampler.py, imported from a temporary package) on the
same workload, interleaved call by call with the working tree's, and prints
both and the ratio (median of `--repeats` calls each): wall-clock tokens/s
and tokens per CPU-second (process time, all threads; the steadier figure
on a machine shared with other jobs), and the share of sampled tokens that
agree (float32 sums in another order can flip a temperature-1 sample,
after which a row diverges). `--only_ab` skips sections 1-3.
"""

import argparse
import datetime
import functools
import importlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from pav_jax import config as config_lib
from pav_jax import sampler as sampler_lib
from pav_jax import transformer

PROMPT_LEN = 64
NEW_TOKENS = 128
FORK_PREFIX = 256
FORK_N = 8
NO_STOP = -1  # eos_id / step_id that no sampled token equals.


def best_time(fn: Callable[[], object], repeats: int,
              warm_up: bool = True) -> float:
  """Best wall time (s) of `fn()` over `repeats` runs, after one warm-up."""
  if warm_up:
    jax.block_until_ready(fn())
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t0)
  return best


def naive_generate(graphdef, params, tokens_BL, key, *, prompt_len: int,
                   temperature: float):
  """No-cache sampling: a full forward over [B, L] for every new token."""
  b, length = tokens_BL.shape
  col_BL = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))

  def body(t, tokens_BL):
    valid_BL = col_BL < t
    logits_BLV, _ = transformer.forward(graphdef, params, tokens_BL, col_BL,
                                        valid_BL)
    logits_BV = jax.lax.dynamic_index_in_dim(logits_BLV, t - 1, axis=1,
                                             keepdims=False)
    tok_B = jax.random.categorical(jax.random.fold_in(key, t),
                                   logits_BV / temperature).astype(jnp.int32)
    return jax.lax.dynamic_update_index_in_dim(tokens_BL, tok_B, t, axis=1)

  return jax.lax.fori_loop(prompt_len, length, body, tokens_BL)


def load_baseline(rev: str):
  """The sampler module of git revision `rev`, as package `pav_base`."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  tmp = tempfile.mkdtemp(prefix="pav_base_")
  pkg = os.path.join(tmp, "pav_base")
  os.makedirs(pkg)
  open(os.path.join(pkg, "__init__.py"), "w").close()
  for name in ("layers", "transformer", "sampler", "kv_cache"):
    try:
      src = subprocess.run(
          ["git", "show", f"{rev}:pav_jax/{name}.py"], cwd=root, check=True,
          capture_output=True, text=True).stdout
    except subprocess.CalledProcessError:
      continue  # kv_cache.py is newer than some revisions
    for mod in ("layers", "transformer", "sampler", "kv_cache"):
      src = src.replace(f"from pav_jax import {mod}\n",
                        f"from pav_base import {mod}\n")
    with open(os.path.join(pkg, f"{name}.py"), "w") as f:
      f.write(src)
  sys.path.insert(0, tmp)
  return (importlib.import_module("pav_base.sampler"),
          importlib.import_module("pav_base.transformer"))


def ab_compare(rev: str, batches, repeats: int, cfg, params, rng, key):
  """Median tokens/s of REV's sampler vs. this tree's, interleaved."""
  base_sampler, base_tr = load_baseline(rev)
  samplers = {}
  for name, lib, tr in (("baseline", base_sampler, base_tr),
                        ("new", sampler_lib, transformer)):
    graphdef, _ = tr.split(tr.create(cfg, seed=0))
    samplers[name] = lib.Sampler(
        graphdef, cfg, cache_size=PROMPT_LEN + NEW_TOKENS, eos_id=NO_STOP,
        step_id=NO_STOP, sampling=lib.SamplingConfig(temperature=1.0),
        buckets=(PROMPT_LEN,))
  print(f"A/B: sampler at {rev} vs. working tree; prompt {PROMPT_LEN}, "
        f"{NEW_TOKENS} new tokens, temperature 1, median of {repeats} "
        "interleaved calls after a warm-up (prefill included)")
  print("| batch | baseline tok/s | new tok/s | new / baseline | "
        "baseline tok/CPU-s | new tok/CPU-s | new / baseline | same tokens |")
  print("|------:|------:|------:|------:|------:|------:|------:|------:|")
  for b in batches:
    prompts = rng.integers(4, cfg.vocab_size, (b, PROMPT_LEN)).tolist()
    times = {name: [] for name in samplers}
    cpu = {name: [] for name in samplers}
    outs = {}
    for name, s in samplers.items():  # warm-up
      outs[name] = jax.block_until_ready(
          s.generate(params, prompts, key, NEW_TOKENS).tokens_BN)
    same = float(np.mean(np.asarray(outs["baseline"])
                         == np.asarray(outs["new"])))
    for _ in range(repeats):
      for name, s in samplers.items():
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(s.generate(params, prompts, key, NEW_TOKENS))
        times[name].append(time.perf_counter() - t0)
        cpu[name].append(time.process_time() - c0)
    gen = b * NEW_TOKENS
    base = gen / statistics.median(times["baseline"])
    new = gen / statistics.median(times["new"])
    cbase = gen / statistics.median(cpu["baseline"])
    cnew = gen / statistics.median(cpu["new"])
    print(f"| {b:5d} | {base:,.0f} | {new:,.0f} | {new / base:.2f}x "
          f"| {cbase:,.0f} | {cnew:,.0f} | {cnew / cbase:.2f}x | {same:.0%} |")
  print()


def main() -> None:
  t_start = time.perf_counter()
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", default="1,16,64")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument(
      "--naive_repeats", type=int, default=1,
      help="timed runs of the no-cache baseline (compiled ahead of time, so "
      "no warm-up run); it costs ~30x the cached sampler per run")
  parser.add_argument("--baseline", default="",
                      help="git revision whose sampler to A/B against")
  parser.add_argument("--only_ab", action="store_true")
  parser.add_argument("--model", default="tiny", choices=("tiny", "issue14"),
                      help="issue14: the Gemma-2-shaped 3.94M model of issue "
                      "14 (vocab 512, d 256, 4 layers, 4 heads, 1 KV head)")
  args = parser.parse_args()
  batches = [int(b) for b in args.batches.split(",")]

  cfg = config_lib.ModelConfig.tiny(vocab_size=320)
  if args.model == "issue14":
    cfg = config_lib.ModelConfig.tiny(vocab_size=512).replace(
        embed_dim=256, hidden_dim=1024, num_heads=4, num_kv_heads=1,
        head_dim=64, attn_logits_soft_cap=50.0, final_logit_soft_cap=30.0)
  graphdef, params = transformer.split(transformer.create(cfg, seed=0))
  rng = np.random.default_rng(0)
  key = jax.random.key(0)
  total = PROMPT_LEN + NEW_TOKENS

  print(f"date:   {datetime.date.today()}")
  print(f"jax:    {jax.__version__}  backend: {jax.default_backend()}  "
        f"devices: {jax.devices()}")
  print(f"host:   {platform.processor() or platform.machine()}, "
        f"{len(jax.devices())} device(s)")
  print(f"model:  {args.model}, {cfg.num_params():,} params, "
        f"vocab {cfg.vocab_size}")
  print("note:   shared machine, timings are noisy. Compile excluded; "
        f"KV-cache and fork: best of {args.repeats} after a warm-up; no-cache:"
        f" best of {args.naive_repeats}, compiled ahead of time\n")

  if args.baseline:
    ab_compare(args.baseline, batches, args.repeats, cfg, params, rng, key)
  if args.only_ab:
    return

  # 1 + 2: tokens/s, cached vs. no-cache. ----------------------------------
  sampler = sampler_lib.Sampler(
      graphdef, cfg, cache_size=total, eos_id=NO_STOP, step_id=NO_STOP,
      sampling=sampler_lib.SamplingConfig(temperature=1.0),
      buckets=(PROMPT_LEN, FORK_PREFIX))
  naive = jax.jit(functools.partial(naive_generate, graphdef,
                                    prompt_len=PROMPT_LEN, temperature=1.0))
  print(f"Generation: prompt {PROMPT_LEN}, {NEW_TOKENS} new tokens, "
        "temperature 1 (prefill included)")
  print("| batch | KV-cache tok/s | no-cache tok/s | speed-up |")
  print("|------:|---------------:|---------------:|---------:|")
  for b in batches:
    prompts = rng.integers(4, cfg.vocab_size, (b, PROMPT_LEN)).tolist()

    def cached():
      out = sampler.generate(params, prompts, key, NEW_TOKENS)
      return out.tokens_BN

    padded = np.zeros((b, total), np.int32)
    padded[:, :PROMPT_LEN] = prompts
    padded = jnp.asarray(padded)
    t_cache = best_time(cached, args.repeats)
    out = cached()
    assert int(np.asarray(out).shape[1]) == NEW_TOKENS
    naive_exe = naive.lower(params, padded, key).compile()
    t_naive = best_time(lambda: naive_exe(params, padded, key),
                        args.naive_repeats, warm_up=False)
    gen = b * NEW_TOKENS
    print(f"| {b:5d} | {gen / t_cache:14,.0f} | {gen / t_naive:14,.0f} | "
          f"{t_naive / t_cache:7.1f}x |")
  print(f"trace counts of the cached sampler: {sampler.trace_counts}\n")

  # 3: fork vs. repeated prefill. ------------------------------------------
  fork_sampler = sampler_lib.Sampler(
      graphdef, cfg, cache_size=FORK_PREFIX + NEW_TOKENS, eos_id=NO_STOP,
      step_id=NO_STOP, buckets=(FORK_PREFIX,))
  prefix = rng.integers(4, cfg.vocab_size, FORK_PREFIX).tolist()
  fork = jax.jit(sampler_lib.fork, static_argnames=("n",))

  def prefill_and_fork():
    state = fork_sampler.prefill(params, [prefix], key)
    return fork(state, n=FORK_N)

  def prefill_repeated():
    return fork_sampler.prefill(params, [prefix] * FORK_N, key)

  t_fork = best_time(prefill_and_fork, args.repeats)
  t_rep = best_time(prefill_repeated, args.repeats)
  print(f"Forking {FORK_N} continuations from a {FORK_PREFIX}-token prefix")
  print("| method | ms |")
  print("|---|---:|")
  print(f"| prefill once + fork(n={FORK_N}) | {1e3 * t_fork:.1f} |")
  print(f"| prefill {FORK_N} identical prompts | {1e3 * t_rep:.1f} |")
  print(f"| ratio (repeated / fork) | {t_rep / t_fork:.2f}x |")
  print(f"\ntotal benchmark wall time: {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
  main()
