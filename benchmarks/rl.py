"""One RL iteration's time split (rollout / scoring / update), with naive
variants timed on the same rollouts in the same run.

  python benchmarks/rl.py [--prompts=8] [--k=4] [--new_tokens=64] [--repeats=3]

Workload: the `tiny` preset (ModelConfig.tiny(vocab_size=320), random
weights, the step delimiter's embedding scaled up so responses have several
steps), the arithmetic task with a tokenizer trained on 500 of its
problems, a random-weight PAV (prm_q-shaped verifier), P prompts x k samples
at temperature 1, all devices in one ('data') mesh axis. It prints:

  1. `train_rl.iteration` (fork rollout, one-pass PAV scoring, jitted update):
     seconds per phase and rollout samples/s, best of --repeats after one
     warm-up iteration (compilation excluded);
  2. naive variants on the same rollouts:
     - rollout by re-prefilling every one of the P*k rows (no fork),
     - scoring by re-running the verifier once per prefix (H + 1 forwards of
       the [B, T] batch, each masked to one prefix: the Math-Shepherd style
       per-step query), with the max |difference| to the one-pass values,
     - the verifier-free MC control (`--mc_samples` continuations of every
       prefix, re-prefilled), the slow reference of the PAV.
This is a benchmark, not a test; numbers from a shared machine are noisy.
"""

import argparse
import dataclasses
import platform
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pav_jax import config as config_lib  # noqa: E402
from pav_jax import sampler as sampler_lib  # noqa: E402
from pav_jax import sharding  # noqa: E402
from pav_jax import tasks  # noqa: E402
from pav_jax import tokenizer as tok_lib  # noqa: E402
from pav_jax import train_rl  # noqa: E402
from pav_jax import transformer  # noqa: E402
from pav_jax import verifier  # noqa: E402


def naive_prefix_values(graphdef, params, tokens_BT, valid_BT, prompt_len_B,
                        *, step_id, eos_id, num_prefixes):
  """One verifier forward per prefix (masked to it); same layout as
  verifier.prefix_values."""
  bnd_BT = verifier.boundary_mask(tokens_BT, valid_BT, prompt_len_B, step_id,
                                  eos_id)
  ord_BT = jnp.cumsum(bnd_BT.astype(jnp.int32), axis=1) - 1
  col_BT = jnp.arange(tokens_BT.shape[1])[None, :]

  def one(h):
    at_BT = bnd_BT & (ord_BT == h)
    end_B = jnp.max(jnp.where(at_BT, col_BT, -1), axis=1)
    valid = valid_BT & (col_BT <= end_B[:, None])
    pos = transformer.positions_from_mask(valid)
    logit_BT, _ = verifier.score(graphdef, params, tokens_BT, pos, valid)
    v_B = jnp.take_along_axis(logit_BT, jnp.maximum(end_B, 0)[:, None], 1)[:, 0]
    return jax.nn.sigmoid(v_B), end_B >= 0

  v_PB, m_PB = jax.lax.map(one, jnp.arange(num_prefixes))
  return v_PB.T, m_PB.T


def timed(fn, repeats):
  best, out = float("inf"), None
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t0)
  return best, out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--prompts", type=int, default=8)
  ap.add_argument("--k", type=int, default=4)
  ap.add_argument("--new_tokens", type=int, default=64)
  ap.add_argument("--max_steps", type=int, default=16)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--mc_samples", type=int, default=4)
  ap.add_argument("--no_mc", action="store_true")
  ap.add_argument("--step_mul", type=float, default=1.6)
  args = ap.parse_args()

  t_start = time.time()
  task = tasks.get_task("arithmetic")
  exs = task.examples("train", 500, seed=0)
  with tempfile.TemporaryDirectory() as d:
    tok = tok_lib.train_tokenizer([task.prompt(e) + e.solution for e in exs],
                                  Path(d) / "tok", 320)
  cfg_m = config_lib.ModelConfig.tiny(vocab_size=320)
  prompts = task.examples("validation", args.prompts * (args.repeats + 1),
                          seed=1)
  width = max(len(tok.encode(task.prompt(e), bos=True)) for e in prompts)
  width = int(2 ** np.ceil(np.log2(width)))
  rl = train_rl.RLConfig(
      alpha=5.0, prover_k=4.0, prompts_per_iter=args.prompts,
      samples_per_prompt=args.k, max_prompt_len=width,
      max_new_tokens=args.new_tokens, max_steps=args.max_steps,
      mc_samples=args.mc_samples, policy_lr=1e-4, value_lr=1e-4)
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  graphdef, params = transformer.split(transformer.create(cfg_m, seed=0))
  params["embed_VD"] = params["embed_VD"].at[tok.step_id].mul(args.step_mul)
  vgd, vparams = transformer.split(verifier.create(cfg_m, seed=1))
  vparams["head_D"] = 0.3 * jax.random.normal(jax.random.key(1),
                                              vparams["head_D"].shape)
  smp = sampler_lib.Sampler(graphdef, cfg_m, cache_size=rl.seq_len,
                            eos_id=tok.eos_id, step_id=tok.step_id,
                            pad_id=tok.pad_id)
  ctx, state = train_rl.make_context(
      cfg=rl, sampler=smp, policy_params=params, task=task, tok=tok,
      mesh=mesh, verifier_graphdef=vgd, verifier_params=vparams)
  batches = [prompts[i * args.prompts:(i + 1) * args.prompts]
             for i in range(args.repeats + 1)]

  # 1. The iteration (warm-up, then best of repeats per phase).
  state, m = train_rl.iteration(ctx, state, batches[0])
  runs = []
  for b in batches[1:]:
    state, m = train_rl.iteration(ctx, state, b)
    runs.append(m)
  phases = ("rollout_s", "score_s", "update_s")
  best = {k: min(r[k] for r in runs) for k in phases}
  best["total_s"] = min(sum(r[k] for k in phases) for r in runs)
  rows_b = rl.batch_rows
  tokens = np.mean([r["sampled_tokens"] for r in runs])

  # 2. Naive variants on one fixed rollout batch.
  pol = state["params"]["policy"]
  ro = train_rl.rollout(ctx.rollout_fn, pol, task, tok, batches[1],
                        jax.random.key(7), rl)
  naive_roll = train_rl.make_rollout_fn(
      smp, rl, mesh, ctx.state_shardings["params"]["policy"], fork=False)
  prompt_PW, plen_P = train_rl.encode_prompts(tok, task, batches[1], width)
  key_P = jax.random.split(jax.random.key(7), args.prompts)
  t_fork, out_f = timed(lambda: ctx.rollout_fn(pol, prompt_PW, plen_P, key_P),
                        args.repeats + 1)
  t_naive_roll, out_n = timed(lambda: naive_roll(pol, prompt_PW, plen_P, key_P),
                              args.repeats + 1)
  same_roll = bool(np.array_equal(np.asarray(out_f["tokens_BT"]),
                                  np.asarray(out_n["tokens_BT"])))

  p = rl.max_steps + 1
  one_pass = jax.jit(lambda vp, t, v, pl: verifier.prefix_values(
      vgd, vp, t, v, pl, step_id=tok.step_id, eos_id=tok.eos_id,
      num_prefixes=p))
  per_prefix = jax.jit(lambda vp, t, v, pl: naive_prefix_values(
      vgd, vp, t, v, pl, step_id=tok.step_id, eos_id=tok.eos_id,
      num_prefixes=p))
  a = (vparams, ro.tokens_BT, ro.valid_BT, ro.prompt_len_B)
  t_one, (v1, m1) = timed(lambda: one_pass(*a), args.repeats + 1)
  t_per, (v2, m2) = timed(lambda: per_prefix(*a), args.repeats + 1)
  m1, m2 = np.asarray(m1), np.asarray(m2)
  score_diff = float(np.max(np.abs(np.asarray(v1) - np.asarray(v2))[m1]))
  t_targets, _ = timed(lambda: train_rl.score_steps(ctx.score_fn, vparams, ro),
                       args.repeats + 1)

  t_mc = mc_tok = None
  if not args.no_mc:
    mc_smp = sampler_lib.Sampler(
        graphdef, cfg_m, cache_size=smp.bucket(rl.seq_len) + rl.max_new_tokens,
        eos_id=tok.eos_id, step_id=tok.step_id, pad_id=tok.pad_id)
    mc_cfg = dataclasses.replace(rl, scorer="mc")

    def mc():
      return train_rl.mc_prefix_values(
          mc_smp, params, task, tok, batches[1], ro, n=rl.mc_samples,
          rng=jax.random.key(3), cfg=mc_cfg)

    mc()  # compile
    t_mc, (_, mmc, mc_tok) = timed(mc, 1)

  dev = jax.devices()
  now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
  print(f"# benchmarks/rl.py  {now}")
  print(f"jax {jax.__version__}, {len(dev)} x {dev[0].platform} "
        f"({platform.machine()}), mesh {dict(mesh.shape)}")
  print(f"tiny preset ({cfg_m.num_params() / 1e6:.2f}M params), arithmetic, "
        f"P={args.prompts} prompts x k={args.k} = {rows_b} rollouts, prompt "
        f"width {width}, <= {args.new_tokens} new tokens, H={rl.max_steps}; "
        f"mean {tokens:.0f} sampled tokens/iteration, "
        f"{runs[-1]['mean_steps']:.1f} steps/rollout")
  print()
  print("| phase (train_rl.iteration) | seconds | share |")
  print("|---|---:|---:|")
  for k in ("rollout_s", "score_s", "update_s"):
    print(f"| {k[:-2]} | {best[k]:.3f} | {best[k] / best['total_s']:.0%} |")
  print(f"| total | {best['total_s']:.3f} | samples/s "
        f"{rows_b / best['total_s']:.1f} |")
  print()
  print("| variant (same rollouts) | seconds | vs fast |")
  print("|---|---:|---:|")
  print(f"| rollout: prefill P + fork k (fast) | {t_fork:.3f} | 1.0x |")
  print(f"| rollout: re-prefill P*k rows (naive) | {t_naive_roll:.3f} | "
        f"{t_naive_roll / t_fork:.2f}x |")
  print(f"| PAV scoring: one pass, all prefixes (fast) | {t_one:.4f} | 1.0x |")
  print(f"| PAV scoring + step targets (score_steps) | {t_targets:.4f} | "
        f"{t_targets / t_one:.2f}x |")
  print(f"| PAV scoring: one forward per prefix, {p} (naive) | {t_per:.4f} | "
        f"{t_per / t_one:.1f}x |")
  if t_mc is not None:
    print(f"| MC control: {rl.mc_samples} continuations/prefix "
          f"({int(mmc.sum())} prefixes, {mc_tok} tokens) | {t_mc:.2f} | "
          f"{t_mc / t_one:.0f}x |")
  print()
  print(f"fork == re-prefill tokens: {same_roll}; one-pass vs per-prefix "
        f"values max |diff| = {score_diff:.2e}; prefixes seen equal: "
        f"{bool(np.array_equal(m1, m2))}")
  print(f"rollout samples/s (fork): {rows_b / t_fork:.1f}, sampled tokens/s: "
        f"{tokens / t_fork:.0f}")
  print(f"wall time {time.time() - t_start:.0f}s")


if __name__ == "__main__":
  main()
