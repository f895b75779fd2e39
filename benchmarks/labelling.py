"""MC labelling throughput: forking prefix caches vs re-prefilling them.

Labels the same prompts, with the same keys, in both modes (so both do the
same sampling work and produce identical labels) for n_mc = 4, 16, 64 with the
tiny preset (random init, small vocabulary so steps and EOS are frequent).
Each configuration runs once to compile, then is timed.

  python benchmarks/labelling.py [--n_mc=4,16,64] [--prompts=8]
"""

import argparse
import platform
import time

import jax
import numpy as np

from pav_jax import config as config_lib
from pav_jax import labelling
from pav_jax import sampler as sampler_lib
from pav_jax import transformer

BOS, EOS, STEP = 1, 2, 4


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--n_mc", default="4,16,64")
  ap.add_argument("--prompts", type=int, default=8)
  ap.add_argument("--n_cov", type=int, default=2)
  args = ap.parse_args()
  cfg = config_lib.ModelConfig.tiny(vocab_size=16)
  graphdef, params = transformer.split(transformer.create(cfg, seed=0))
  sampler = sampler_lib.Sampler(graphdef, cfg, cache_size=160, eos_id=EOS,
                                step_id=STEP, pad_id=0)
  rng = np.random.default_rng(0)
  prompts = [[BOS] + rng.integers(5, 16, size=int(rng.integers(8, 14))).tolist()
             + [STEP] for _ in range(args.prompts)]

  def grade(i, resp):
    return float((sum(resp) + i) % 2 == 0)

  print(f"# {time.strftime('%Y-%m-%d')} {platform.node()} "
        f"{jax.devices()[0].platform} x{jax.device_count()}, "
        f"tiny preset ({cfg.num_params() / 1e6:.2f}M params), "
        f"{args.prompts} prompts x n_cov={args.n_cov}")
  print("| n_mc | mode | prefixes | prefixes/s | sampled tok/s | "
        "prefilled tok | (sampled+prefilled) tok/s | s | speed-up |")
  print("|---|---|---|---|---|---|---|---|---|")
  for n_mc in [int(x) for x in args.n_mc.split(",")]:
    base = None
    for mode in ("reprefill", "fork"):
      lc = labelling.LabelConfig(
          n_cov=args.n_cov, n_mc=n_mc, max_new_tokens=32, max_step_tokens=16,
          max_steps=4, prompts_per_chunk=args.prompts, mode=mode,
          row_buckets=2)

      def run():
        return labelling.label_chunk(sampler, params, prompts, grade,
                                     jax.random.key(0), lc)

      run()  # compile
      t0 = time.perf_counter()
      arr, b = run()
      dt = time.perf_counter() - t0
      n_pref = int((arr["count_NP"] > 0).sum())
      base = base or dt
      print(f"| {n_mc} | {mode} | {n_pref} | {n_pref / dt:.1f} | "
            f"{b.sampled_tokens / dt:.0f} | {b.prefilled_tokens} | "
            f"{(b.sampled_tokens + b.prefilled_tokens) / dt:.0f} | {dt:.2f} | "
            f"{base / dt:.2f}x |", flush=True)


if __name__ == "__main__":
  main()
