"""MC labelling throughput: forking prefix caches vs re-prefilling them.

Labels the same prompts, with the same keys, in both modes (so both do the
same sampling work and produce identical labels) for n_mc = 4, 16, 64 with the
tiny preset (random init, small vocabulary so steps and EOS are frequent).
Each configuration runs once to compile, then is timed.

  python benchmarks/labelling.py [--n_mc=4,16,64] [--prompts=8]

With `--workdir=W` it instead labels the demo config's first `--prompts`
train prompts with the policy of W (its tokenizer and sft/ params, e.g. a
finished `make demo` workdir) and the config's own label settings (n_cov,
n_mc, step and token budgets; `--config`, default configs/demo.py), nothing
written: labelled prefixes per second, the stage's own measure. Timed
`--repeats` times after a compiling call; prints the median. To compare two
code versions, run it with `PYTHONPATH=<other checkout>` in turn;
`--save=F.npz` keeps the chunk's label arrays, `--compare=F.npz` checks
they are identical to a saved run's (same key: the labels must not depend
on the code's batching).
"""

import argparse
import dataclasses
import platform
import time

import jax
import numpy as np

from pav_jax import config as config_lib
from pav_jax import labelling
from pav_jax import sampler as sampler_lib
from pav_jax import transformer

BOS, EOS, STEP = 1, 2, 4


def demo_config(args) -> None:
  """Labelled prefixes/s of the demo config's label stage (see docstring)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  from pav_jax import run_lib  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("cfg", args.config)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config()
  from pav_jax import sharding  # pylint: disable=g-import-not-at-top
  run = run_lib.make_run(config, args.workdir,
                         sharding.make_mesh(dict(config.mesh)))
  graphdef, params = run.load_policy()
  sampler = run.sampler(graphdef, cache_size=config.label.cache_size)
  exs = run.examples("train", args.prompts, "label_train")
  prompts = run.encode_prompts(exs)
  lc = dataclasses.replace(labelling.label_config(config),
                           prompts_per_chunk=len(prompts))

  def grade(i, ids):
    return run.task.grade(exs[i], run.tok.decode(ids))

  def once():
    t0 = time.perf_counter()
    arr, b = labelling.label_chunk(sampler, params, prompts, grade,
                                   run.key("label_train"), lc)
    return time.perf_counter() - t0, int((arr["count_NP"] > 0).sum()), b

  def once_arrays():
    return labelling.label_chunk(sampler, params, prompts, grade,
                                 run.key("label_train"), lc)[0]

  if args.save or args.compare:
    arr = once_arrays()
    if args.save:
      np.savez(args.save, **arr)
    if args.compare:
      ref = np.load(args.compare)
      diff = [k for k in ref.files
              if k not in arr or not np.array_equal(ref[k], arr[k])]
      print(f"labels vs {args.compare}: "
            + (f"DIFFER in {diff}" if diff else "identical"))
  else:
    once()  # compile
  runs = [once() for _ in range(args.repeats)]
  dt = float(np.median([r[0] for r in runs]))
  n_pref, b = runs[0][1], runs[0][2]
  print(f"# {time.strftime('%Y-%m-%d')} {labelling.__file__}")
  print(f"demo labelling: {len(prompts)} prompts, n_cov={lc.n_cov}, "
        f"n_mc={lc.n_mc}: {n_pref} prefixes, {b.sampled_tokens} sampled tok; "
        f"median {dt:.2f} s of {args.repeats} -> {n_pref / dt:.1f} "
        f"prefixes/s, {b.sampled_tokens / dt:.0f} sampled tok/s")


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--n_mc", default="4,16,64")
  ap.add_argument("--prompts", type=int, default=8)
  ap.add_argument("--n_cov", type=int, default=2)
  ap.add_argument("--workdir", default="")
  ap.add_argument("--config", default="configs/demo.py")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--save", default="", help="--workdir: save labels (.npz)")
  ap.add_argument("--compare", default="",
                  help="--workdir: check labels equal a --save file")
  args = ap.parse_args()
  if args.workdir:
    return demo_config(args)
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
