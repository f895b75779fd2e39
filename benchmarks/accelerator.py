"""The prepared accelerator run: sampler tok/s, SFT step MFU, a labelling step.

  python benchmarks/accelerator.py            # gemma2_2b shape, bf16
  PAV_BENCH_TINY=1 python benchmarks/accelerator.py   # tiny shape, any CPU

Full mode (one H100/H200; ~3 min on an H100 80GB incl. compiles, figures in
benchmarks/README.md): the `gemma2_2b` shape with weights filled by
`fill` (no PRNG) and stored in bf16 (compute bf16);
  1. `Sampler.generate` tokens/s at batch 64 and 256, prompt 256, 256 new
     tokens, temperature 1, no early stop (compile excluded; best of 2);
  2. one SFT train step (`train_lib.make_train_step`, AdamW, remat) on
     B x 1024 tokens (B = $PAV_BENCH_TRAIN_B, default 4): step time, model
     FLOPs utilisation (6 N T + attention FLOPs over the card's peak, from
     $PAV_BENCH_PEAK_TFLOPS or a table of known cards) and the same FLOPs as
     a fraction of a bf16 matmul rate measured in this process;
  3. one Monte-Carlo labelling chunk (`labelling.label_chunk`, fork mode):
     labelled prefixes per second.
Tiny mode runs the same code on `ModelConfig.tiny` with small sizes so the
script cannot rot. Every figure is printed as a markdown table row.
"""

import importlib.metadata
import math
import os
import platform
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pav_jax import config as config_lib
from pav_jax import labelling
from pav_jax import losses
from pav_jax import sampler as sampler_lib
from pav_jax import sharding as sharding_lib
from pav_jax import train_lib
from pav_jax import transformer

TINY = os.environ.get("PAV_BENCH_TINY", "") not in ("", "0")
# Dense bf16 peak TFLOP/s by device kind (substring match).
PEAKS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "v5e": 197.0,
         "v5p": 459.0, "v4": 275.0}
NO_STOP = -1
PARTS = os.environ.get("PAV_BENCH_PARTS", "sampler,train,labelling").split(",")

if TINY:
  CFG = config_lib.ModelConfig.tiny(vocab_size=256).replace(dtype="bfloat16")
  SAMPLE_BATCHES, PROMPT, NEW = (4, 8), 16, 16
  TRAIN_B, TRAIN_T = 2, 64
  LABEL = dict(prompts=2, n_cov=2, n_mc=2, max_new_tokens=16,
               max_step_tokens=8, max_steps=2)
  MATMUL_N = 512
else:
  CFG = config_lib.ModelConfig.gemma2_2b().replace(remat=True)
  SAMPLE_BATCHES, PROMPT, NEW = (64, 256), 256, 256
  TRAIN_B = int(os.environ.get("PAV_BENCH_TRAIN_B", "4"))
  TRAIN_T = 1024
  LABEL = dict(prompts=8, n_cov=4, n_mc=8, max_new_tokens=128,
               max_step_tokens=32, max_steps=4)
  MATMUL_N = 8192


def _best(fn, repeats: int = 2) -> float:
  jax.block_until_ready(fn())  # compile + warm-up
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t0)
  return best


def matmul_tflops() -> float:
  """Measured bf16 [n, n] @ [n, n] rate of this device, TFLOP/s."""
  n = MATMUL_N
  a = jnp.ones((n, n), jnp.bfloat16)
  f = jax.jit(lambda x: x @ x)
  return 2 * n**3 / _best(lambda: f(a), 3) / 1e12


def peak_tflops() -> float | None:
  if "PAV_BENCH_PEAK_TFLOPS" in os.environ:
    return float(os.environ["PAV_BENCH_PEAK_TFLOPS"])
  kind = jax.devices()[0].device_kind
  for name, peak in PEAKS.items():
    if name.lower() in kind.lower():
      return peak
  return None


def fill(abstract):
  """Deterministic pseudo-random values of the abstract tree's shapes
  (traceable: call it inside a jit).

  No PRNG: on an H100 (jax 0.11.2) XLA took 5 min 12 s to compile the
  jitted random init of the 2.6B-param model (nnx initialisers), a third
  of the device time lent to a session; sin of an iota compiles at once.
  """
  leaves, treedef = jax.tree.flatten(abstract)
  out = []
  for i, x in enumerate(leaves):
    n = math.prod(x.shape)
    v = jnp.sin(jnp.arange(n, dtype=jnp.float32) * 12.9898 + i) * 0.02
    out.append(v.reshape(x.shape).astype(x.dtype))
  return jax.tree.unflatten(treedef, out)


def bf16_params():
  """Filled params in bf16 (sharded on the current mesh if there is one)."""
  model = nnx.eval_shape(lambda: transformer.create(CFG))
  graphdef, state = nnx.split(model, nnx.Param)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16),
                          nnx.to_pure_dict(state))
  mesh = sharding_lib.current_mesh()
  sh = None if mesh is None else sharding_lib.param_shardings(
      sharding_lib.logical_axes(model), abstract, mesh)
  return graphdef, jax.jit(lambda: fill(abstract), out_shardings=sh)()


def bench_sampler(graphdef, params, rng) -> None:
  sampler = sampler_lib.Sampler(
      graphdef, CFG, cache_size=PROMPT + NEW, eos_id=NO_STOP,
      step_id=NO_STOP, buckets=(PROMPT,),
      sampling=sampler_lib.SamplingConfig(temperature=1.0))
  print(f"\nSampler: prompt {PROMPT}, {NEW} new tokens, temperature 1, "
        "prefill included, best of 2 after a warm-up")
  print("| batch | s | generated tok/s |")
  print("|---:|---:|---:|")
  for b in SAMPLE_BATCHES:
    prompts = rng.integers(4, CFG.vocab_size, (b, PROMPT)).tolist()
    t = _best(lambda: sampler.generate(params, prompts, jax.random.key(0),
                                       NEW).tokens_BN)
    print(f"| {b} | {t:.3f} | {b * NEW / t:,.0f} |", flush=True)


def train_flops(tokens: int, seq: int) -> float:
  """6 N T for the weights plus 6 * 2 * L * T * S * D_attn for attention."""
  attn = 12 * CFG.num_layers * tokens * seq * CFG.num_heads * CFG.head_dim
  return 6 * CFG.num_params() * tokens + attn / 2  # causal: half the scores


def bench_train(rng, mm: float) -> None:
  mesh = sharding_lib.current_mesh() or sharding_lib.make_mesh(
      devices=jax.devices()[:1])
  tx = train_lib.make_optimizer(train_lib.OptimConfig(
      learning_rate=1e-5, warmup_steps=1, total_steps=10))
  _, abstract = transformer.abstract_params(CFG)
  state, shardings, graphdef = train_lib.init_state(
      lambda: transformer.create(CFG), tx, mesh, seed=0,
      init_params=lambda: fill(abstract))

  def loss_fn(graphdef, params, batch, rng):
    del rng
    valid = jnp.ones_like(batch["tokens"], bool)
    pos = transformer.positions_from_mask(valid)
    logits, _ = transformer.forward(graphdef, params, batch["tokens"], pos,
                                    valid)
    loss, n = losses.next_token_xent(logits, batch["tokens"], valid)
    return loss, {"tokens": n}

  step = train_lib.make_train_step(graphdef, loss_fn, tx, shardings, mesh)
  tokens = rng.integers(4, CFG.vocab_size, (TRAIN_B, TRAIN_T)).astype(np.int32)
  batch = jax.device_put({"tokens": tokens},
                         sharding_lib.batch_sharding(mesh))
  holder = {"state": state}

  def run():
    holder["state"], metrics = step(holder["state"], batch)
    return metrics["loss"]

  t = _best(run, 2)
  flops = train_flops(TRAIN_B * TRAIN_T, TRAIN_T)
  rate = flops / t / 1e12
  peak = peak_tflops()
  mfu = f"{rate / peak:.1%}" if peak else "n/a (unknown peak)"
  print(f"\nSFT train step: {TRAIN_B} x {TRAIN_T} tokens, AdamW, "
        f"remat={CFG.remat}, {CFG.num_params() / 1e6:,.1f}M params")
  print("| s/step | tok/s | model TFLOP/s | MFU (vs peak) | of measured "
        "bf16 matmul rate |")
  print("|---:|---:|---:|---:|---:|")
  print(f"| {t:.3f} | {TRAIN_B * TRAIN_T / t:,.0f} | {rate:.2f} | {mfu} | "
        f"{rate / mm:.1%} |", flush=True)


def bench_labelling(graphdef, params, rng) -> None:
  eos, step = 1, 4
  sampler = sampler_lib.Sampler(
      graphdef, CFG, cache_size=PROMPT + LABEL["max_new_tokens"] + 1,
      eos_id=eos, step_id=step, buckets=(PROMPT,))
  prompts = [[2] + rng.integers(5, CFG.vocab_size, PROMPT - 2).tolist()
             + [step] for _ in range(LABEL["prompts"])]
  lc = labelling.LabelConfig(
      n_cov=LABEL["n_cov"], n_mc=LABEL["n_mc"],
      max_new_tokens=LABEL["max_new_tokens"],
      max_step_tokens=LABEL["max_step_tokens"],
      max_steps=LABEL["max_steps"], prompts_per_chunk=LABEL["prompts"],
      mode="fork", row_buckets=2)

  def grade(i, resp):
    return float((sum(resp) + i) % 2 == 0)

  def run():
    return labelling.label_chunk(sampler, params, prompts, grade,
                                 jax.random.key(0), lc)

  run()  # compile
  t0 = time.perf_counter()
  arr, budget = run()
  t = time.perf_counter() - t0
  n_pref = int((arr["count_NP"] > 0).sum())
  print(f"\nLabelling chunk (fork mode): {LABEL}")
  print("| prefixes | s | prefixes/s | sampled tok/s |")
  print("|---:|---:|---:|---:|")
  print(f"| {n_pref} | {t:.2f} | {n_pref / t:.2f} | "
        f"{budget.sampled_tokens / t:,.0f} |", flush=True)


def _versions() -> str:
  out = []
  for name in ("flax", "optax", "orbax-checkpoint", "jaxlib"):
    try:
      out.append(f"{name} {importlib.metadata.version(name)}")
    except importlib.metadata.PackageNotFoundError:
      out.append(f"{name} ?")
  return ", ".join(out)


def _peak_memory() -> str:
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" not in stats:
    return "n/a"
  return f"{stats['peak_bytes_in_use'] / 2**30:.1f} GiB"


def _stage(name: str, fn) -> None:
  """Runs one part; a failure prints its traceback and the run goes on, so
  one broken part never costs the others' figures (device time is scarce).
  $PAV_BENCH_PARTS (default sampler,train,labelling) picks the parts."""
  if name.split()[0] not in PARTS + ["params"]:
    return
  t0 = time.perf_counter()
  try:
    fn()
  except Exception:  # pylint: disable=broad-except
    print(f"\n!! {name} failed:")
    traceback.print_exc()
  print(f"[{name}: {time.perf_counter() - t0:.0f} s incl. compile; peak "
        f"device memory so far {_peak_memory()}]", flush=True)


def main() -> None:
  t_start = time.perf_counter()
  dev = jax.devices()[0]
  print(f"# pav_jax accelerator benchmark ({'tiny' if TINY else 'gemma2_2b'})"
        f"\njax {jax.__version__}, {jax.device_count()} x {dev.device_kind} "
        f"({dev.platform}), host {platform.node()}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}\n{_versions()}")
  print(f"model: {CFG.num_params() / 1e6:,.1f}M params, dtype {CFG.dtype}")
  mm = matmul_tflops()
  print(f"measured bf16 matmul ({MATMUL_N}^3): {mm:.2f} TFLOP/s; "
        f"peak used for MFU: {peak_tflops()}", flush=True)
  rng = np.random.default_rng(0)
  held = {}

  def make_params():
    held["graphdef"], held["params"] = bf16_params()
    jax.block_until_ready(held["params"])

  # Cheapest and most wanted first: a run cut short by its time limit still
  # has the sampler; the labelling chunk (several compiles) goes last.
  if "sampler" in PARTS:
    _stage("params", make_params)
  if "params" in held:
    _stage("sampler", lambda: bench_sampler(held["graphdef"],
                                            held["params"], rng))
  held.clear()  # the train state needs the memory
  _stage("train", lambda: bench_train(rng, mm))
  if "labelling" in PARTS:
    _stage("params again", make_params)
  if "params" in held:
    _stage("labelling", lambda: bench_labelling(held["graphdef"],
                                                held["params"], rng))
  print(f"\ntotal wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
  main()
