"""The SFT train step against the fp32 matmul rate of this CPU (issue 14).

  python benchmarks/train_step.py [--batch=8] [--seq=256] [--repeats=7]

Builds the SFT train step exactly as `sft_lib.train` runs it:
`train_lib.init_state` + `train_lib.make_train_step` over `sft_lib.sft_loss`
(the forward, `losses.next_token_xent` on the loss mask) with AdamW from
`train_lib.make_optimizer` (warmup-cosine schedule, global-norm clipping,
weight decay), state donated, on a one-device mesh. Default model: the
Gemma-2-shaped 33.8M-parameter fp32 model of issue 14 (vocab 512, d 512,
8 layers, 8 query heads, 8 KV heads, head_dim 64, MLP 2048, sliding window
64 on even layers, soft-caps 50 / 30; `--kv-heads`, `--vocab`, ... change
it). Random tokens; the loss mask keeps the last 3/4 of each row (a
prompt, then the trained solution), every token valid.

FLOPs counted per step: 6 N T for the weights (N = all parameters, the
tied embedding once: its unembedding matmul), plus attention scores and
values, 12 L T S N H, halved for causality (local layers included at full
causal length, as computed). The step time is the median of `--repeats`
timed steps after two warm-up steps (block_until_ready on the metrics).

The reference rate is fp32 matmul measured in this process, interleaved
with the step timings (one step, then one of each GEMM, per round) so that
load from other processes hits both alike: GEMMs of the model's own shapes
([B*T, D] x [D, F], [B*T, F] x [F, D], [B*T, D] x [D, V],
[B*T, D] x [D, N*H]) and a square 1024^3. Prints markdown tables; the
headline is the fraction of the model-shape GEMM rate (FLOP-weighted over
those four shapes as they occur in the model).
"""

import argparse
import dataclasses
import importlib
import os
import platform
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from pav_jax import config as config_lib
from pav_jax import sft_lib
from pav_jax import sharding as sharding_lib
from pav_jax import train_lib
from pav_jax import transformer


def model_config(args) -> config_lib.ModelConfig:
  """The Gemma-2-shaped model of the flags (default: 33.8M params)."""
  return config_lib.ModelConfig.tiny(vocab_size=args.vocab).replace(
      embed_dim=args.embed, hidden_dim=args.mlp, num_layers=args.layers,
      num_heads=args.heads, num_kv_heads=args.kv_heads,
      head_dim=args.head_dim, attn_logits_soft_cap=50.0,
      final_logit_soft_cap=30.0,
      sliding_window=args.window if args.window > 0 else None,
      max_seq_len=max(512, args.seq), remat=args.remat)


def train_flops(cfg: config_lib.ModelConfig, batch: int, seq: int) -> float:
  """6 N T + causal attention (scores and values, forward and backward)."""
  tokens = batch * seq
  attn = 12 * cfg.num_layers * tokens * seq * cfg.num_heads * cfg.head_dim
  return 6 * cfg.num_params() * tokens + attn / 2


def gemm_shapes(cfg, batch: int, seq: int) -> dict[str, tuple[int, int, int,
                                                               int]]:
  """(m, k, n, count per layer-equivalent weight) of the model's GEMMs.

  The count weighs each shape by how often the forward runs it (q and o
  projections are [B*T, D] x [D, N*H]; gate and up [D, F]; down [F, D];
  the unembedding [D, V] once for the model).
  """
  bt, d, f, nh = batch * seq, cfg.embed_dim, cfg.hidden_dim, (
      cfg.num_heads * cfg.head_dim)
  layers = cfg.num_layers
  shapes = {}
  for m, k, n, count in ((bt, d, f, 2 * layers), (bt, f, d, layers),
                         (bt, d, nh, 2 * layers),
                         (bt, d, cfg.vocab_size, 1)):
    name = f"[{m},{k}]x[{k},{n}]"
    prev = shapes.get(name, (m, k, n, 0))[3]
    shapes[name] = (m, k, n, prev + count)
  return shapes


def make_gemm(m: int, k: int, n: int):
  """A jitted fp32 [m, k] x [k, n] product and its operands."""
  a = jax.random.normal(jax.random.key(0), (m, k), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (k, n), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  return lambda: f(a, b), 2.0 * m * k * n


def timed(fn, cpu: list | None = None) -> float:
  """Wall seconds of fn() to completion; appends its process CPU seconds
  (all threads) to `cpu` when given."""
  c0, t0 = time.process_time(), time.perf_counter()
  jax.block_until_ready(fn())
  t = time.perf_counter() - t0
  if cpu is not None:
    cpu.append(time.process_time() - c0)
  return t


def import_tree(path: str) -> dict:
  """The pav_jax modules this script uses, imported from another checkout.

  The current `pav_jax` modules are set aside in sys.modules while the
  other tree's are imported, then put back: the returned modules (and the
  jitted functions built from them) keep working, so two versions of the
  library run in one process, their steps interleaved with each other.
  """
  names = ("config", "sft_lib", "sharding", "train_lib", "transformer")
  saved = {k: v for k, v in sys.modules.items()
           if k == "pav_jax" or k.startswith("pav_jax.")}
  for k in saved:
    del sys.modules[k]
  sys.path.insert(0, os.path.abspath(path))
  try:
    mods = {n: importlib.import_module(f"pav_jax.{n}") for n in names}
    assert mods["config"].__file__.startswith(os.path.abspath(path))
  finally:
    sys.path.remove(os.path.abspath(path))
    for k in [k for k in sys.modules
              if k == "pav_jax" or k.startswith("pav_jax.")]:
      del sys.modules[k]
    sys.modules.update(saved)
  return mods


def build_step(cfg, batch: int, seq: int, seed: int = 0, lib=None):
  """(run() -> metrics, jitted step, state holder, device batch): the SFT
  step of this tree, or of the modules in `lib` (`import_tree`)."""
  lib = lib or {"config": config_lib, "sft_lib": sft_lib,
                "sharding": sharding_lib, "train_lib": train_lib,
                "transformer": transformer}
  shard, train, tr = lib["sharding"], lib["train_lib"], lib["transformer"]
  cfg = lib["config"].ModelConfig(**dataclasses.asdict(cfg))
  mesh = shard.make_mesh(devices=jax.devices()[:1])
  tx = train.make_optimizer(train.OptimConfig(
      learning_rate=1e-4, warmup_steps=10, total_steps=1000))
  state, shardings, graphdef = train.init_state(
      lambda: tr.create(cfg, seed=seed), tx, mesh, seed)
  step = train.make_train_step(graphdef, lib["sft_lib"].sft_loss, tx,
                               shardings, mesh)
  rng = np.random.default_rng(seed)
  tokens = rng.integers(4, cfg.vocab_size, (batch, seq)).astype(np.int32)
  loss_mask = np.zeros((batch, seq), np.int32)
  loss_mask[:, seq // 4:] = 1
  host = {"tokens": tokens, "loss_mask": loss_mask,
          "valid": np.ones((batch, seq), bool)}
  dev_batch = jax.device_put(host, shard.batch_sharding(mesh))
  holder = {"state": state}

  def run():
    holder["state"], metrics = step(holder["state"], dev_batch)
    return metrics

  return run, step, holder, dev_batch


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--vocab", type=int, default=512)
  p.add_argument("--embed", type=int, default=512)
  p.add_argument("--mlp", type=int, default=2048)
  p.add_argument("--layers", type=int, default=8)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--kv-heads", type=int, default=8)
  p.add_argument("--head-dim", type=int, default=64)
  p.add_argument("--window", type=int, default=64,
                 help="sliding window of even layers; 0: all global")
  p.add_argument("--remat", action="store_true")
  p.add_argument("--repeats", type=int, default=7)
  p.add_argument("--square", type=int, default=1024)
  p.add_argument("--label", default="",
                 help="name of this run in the result row (e.g. old/new)")
  p.add_argument("--compare", default="",
                 help="label=DIR,label=DIR: run this script once per tree "
                 "(PYTHONPATH=DIR), interleaved, --rounds times, and print "
                 "the per-round rows and the medians")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--baseline", default="",
                 help="another checkout (e.g. the old code): its step is "
                 "built in this process too and timed interleaved with "
                 "this tree's (this, baseline, GEMMs per round)")
  p.add_argument("--dump-hlo", default="",
                 help="write the compiled step's HLO text to this path")
  return p.parse_args()


def compare(args) -> None:
  """Runs each tree's step in its own process, interleaved A, B, A, B..."""
  trees = [item.split("=", 1) for item in args.compare.split(",")]
  skip = ("compare", "rounds", "label", "dump_hlo")
  passthrough = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                 if k not in skip and not isinstance(v, bool)]
  passthrough += ["--remat"] if args.remat else []
  rows = {label: [] for label, _ in trees}
  for r in range(args.rounds):
    for label, path in trees:
      env = dict(os.environ, PYTHONPATH=os.path.abspath(path))
      out = subprocess.run(
          [sys.executable, os.path.abspath(__file__), f"--label={label}",
           *passthrough], env=env, capture_output=True, text=True,
          check=True).stdout
      res = [float(x) for x in next(
          line for line in out.splitlines()
          if line.startswith("RESULT ")).split()[1:]]
      rows[label].append(res)
      print(f"round {r} {label}: {res[0]:.0f} ms/step (best {res[1]:.0f})"
            f", {res[2]:.1%} of the model-shape GEMM rate, {res[3]:.1%} of "
            f"square, best/best {res[4]:.1%}, per CPU-s {res[5]:.1%}; load "
            f"{os.getloadavg()[0]:.2f}", flush=True)
  print("\n| tree | ms/step (median of medians) | best ms/step | of model-"
        "shape GEMM rate | of square GEMM rate | best/best model-shape | "
        "per CPU-second |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  for label, vals in rows.items():
    med = [statistics.median(v[i] for v in vals) for i in range(6)]
    print(f"| {label} | {med[0]:.0f} | {min(v[1] for v in vals):.0f} | "
          f"{med[2]:.1%} | {med[3]:.1%} | {med[4]:.1%} | {med[5]:.1%} |")
  if len(rows) == 2:
    (la, a), (lb, b) = rows.items()
    ratios = [x[0] / y[0] for x, y in zip(a, b)]
    print(f"\nper-round time ratio {la}/{lb}: "
          f"{', '.join(f'{q:.2f}' for q in ratios)}; median "
          f"{statistics.median(ratios):.2f}")


def main() -> None:
  args = parse_args()
  if args.compare:
    compare(args)
    return
  cfg = model_config(args)
  b, t = args.batch, args.seq
  dev = jax.devices()[0]
  print(f"# SFT train step vs fp32 matmul ({args.label or 'this tree'})\n"
        f"jax {jax.__version__}, {dev.device_kind} ({dev.platform}), "
        f"{os.cpu_count()} CPUs, host {platform.node()}, "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}, load "
        f"{os.getloadavg()[0]:.2f}")
  print(f"model: {cfg.num_params() / 1e6:.2f}M params, vocab "
        f"{cfg.vocab_size}, d {cfg.embed_dim}, {cfg.num_layers} layers, "
        f"{cfg.num_heads} q / {cfg.num_kv_heads} kv heads x {cfg.head_dim}, "
        f"MLP {cfg.hidden_dim}, window {cfg.sliding_window}, soft-caps "
        f"{cfg.attn_logits_soft_cap}/{cfg.final_logit_soft_cap}, "
        f"{cfg.dtype}, remat {cfg.remat}; batch {b} x {t} tokens")

  run, step, holder, dev_batch = build_step(cfg, b, t)
  base_run = None
  if args.baseline:
    base_run = build_step(cfg, b, t, lib=import_tree(args.baseline))[0]
    jax.block_until_ready(base_run())
    jax.block_until_ready(base_run())
  if args.dump_hlo:
    text = step.lower(holder["state"], dev_batch).compile().as_text()
    with open(args.dump_hlo, "w", encoding="utf-8") as fh:
      fh.write(text)
  shapes = gemm_shapes(cfg, b, t)
  gemms = {name: make_gemm(m, k, n) for name, (m, k, n, _) in shapes.items()}
  sq = args.square
  gemms[f"square {sq}^3"] = make_gemm(sq, sq, sq)
  for _ in range(2):  # compile + warm-up
    metrics = run()
    jax.block_until_ready(metrics)
    for fn, _ in gemms.values():
      timed(fn)
  loss0 = float(metrics["loss"])

  step_s, gemm_s = [], {name: [] for name in gemms}
  step_cpu, gemm_cpu = [], {name: [] for name in gemms}
  base_s = []
  load0 = os.getloadavg()[0]
  for _ in range(args.repeats):
    step_s.append(timed(run, step_cpu))
    if base_run is not None:
      base_s.append(timed(base_run))
    for name, (fn, _) in gemms.items():
      gemm_s[name].append(timed(fn, gemm_cpu[name]))
  load1 = os.getloadavg()[0]

  t_step = statistics.median(step_s)
  flops = train_flops(cfg, b, t)
  rate = flops / t_step / 1e9
  gemm_rate = {name: gemms[name][1] / statistics.median(s) / 1e9
               for name, s in gemm_s.items()}
  # Model-shape reference: total FLOPs of the shapes over total time.
  ref_flops = sum(gemms[n][1] * shapes[n][3] for n in shapes)
  ref_time = sum(gemms[n][1] * shapes[n][3] / (gemm_rate[n] * 1e9)
                 for n in shapes)
  ref = ref_flops / ref_time / 1e9

  print(f"\nloss after warm-up {loss0:.4f}; load {load0:.2f} -> {load1:.2f}"
        f"; step times (s) {', '.join(f'{s:.3f}' for s in step_s)}")
  print("\n| GEMM (fp32) | GFLOP/s (median) |")
  print("|---|---:|")
  for name, r in gemm_rate.items():
    print(f"| {name} | {r:.1f} |")
  print(f"| model-shape mix | {ref:.1f} |")
  # Best against best: the least disturbed step and GEMMs (on a shared
  # machine the medians mix in other processes' load).
  best_rate = flops / min(step_s) / 1e9
  best_ref = ref_flops / sum(
      gemms[n][1] * shapes[n][3] * min(gemm_s[n]) / gemms[n][1]
      for n in shapes) / 1e9
  frac, frac_sq = rate / ref, rate / gemm_rate[f"square {sq}^3"]
  frac_best = best_rate / best_ref
  # CPU-time view: FLOPs per CPU-second of this process, step against the
  # model-shape GEMMs. Less sensitive to other processes taking cores than
  # wall time (a GEMM waits for its slowest thread); it over-credits a step
  # that leaves a core idle, so read it next to the wall-time fractions.
  cpu_rate = flops / statistics.median(step_cpu)
  cpu_ref = ref_flops / sum(gemms[n][1] * shapes[n][3]
                            / (gemms[n][1] / statistics.median(gemm_cpu[n]))
                            for n in shapes)
  frac_cpu = cpu_rate / cpu_ref
  print(f"\nCPU seconds per step (median) {statistics.median(step_cpu):.2f}"
        f" for {statistics.median(step_s):.2f} s wall; step "
        f"{cpu_rate / 1e9:.1f} vs GEMMs {cpu_ref / 1e9:.1f} GFLOP per CPU-s:"
        f" {frac_cpu:.1%}")
  print("\n| run | ms/step (median) | ms/step (best) | tokens/s | GFLOP/step"
        " | GFLOP/s | of model-shape GEMM rate | of square GEMM rate | "
        "best/best model-shape |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
  print(f"| {args.label or '-'} | {t_step * 1e3:.0f} | "
        f"{min(step_s) * 1e3:.0f} | {b * t / t_step:,.0f} | "
        f"{flops / 1e9:.1f} | {rate:.1f} | {frac:.1%} | {frac_sq:.1%} | "
        f"{frac_best:.1%} |")
  if base_s:
    t_base = statistics.median(base_s)
    ratios = [x / y for x, y in zip(base_s, step_s)]
    print(f"\nbaseline {args.baseline}: step times (s) "
          f"{', '.join(f'{x:.3f}' for x in base_s)}")
    print("\n| tree | ms/step (median) | ms/step (best) | GFLOP/s | of "
          "model-shape GEMM rate | best/best model-shape |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, ts_ in (("baseline", base_s), (args.label or "this", step_s)):
      r = flops / statistics.median(ts_) / 1e9
      print(f"| {name} | {statistics.median(ts_) * 1e3:.0f} | "
            f"{min(ts_) * 1e3:.0f} | {r:.1f} | {r / ref:.1%} | "
            f"{flops / min(ts_) / 1e9 / best_ref:.1%} |")
    print(f"\nbaseline/this time per round: "
          f"{', '.join(f'{q:.2f}' for q in ratios)}; median "
          f"{statistics.median(ratios):.2f}; ratio of medians "
          f"{t_base / t_step:.2f}; of bests {min(base_s) / min(step_s):.2f}")
  print(f"RESULT {t_step * 1e3:.1f} {min(step_s) * 1e3:.1f} {frac:.4f} "
        f"{frac_sq:.4f} {frac_best:.4f} {frac_cpu:.4f}", flush=True)

if __name__ == "__main__":
  main()
