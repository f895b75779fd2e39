"""MC-scorer beams beside the learned PRM-Q / PAV beams, on a test subset.

The search stage runs every method of `comparison.compare`; this driver runs
only the beams (no best-of-N pass) on the first `--num_prompts` problems of
the record's 200 test problems (the same problem list, so a prefix of it),
with the record's settings (`config.py`: C = 3, <= 8 steps of <= 16 tokens,
alpha 0.5, Bo4 prover, beam start "beam", copies kept) and the same search
key per seed (`run_lib.stream_key(1000 * seed, "search")`, as
`sweeps.Runner`). Rows: prm_q_beam, pav_beam (learned verifier) and
mc_q_beam, mc_pav_beam (Q̂ from `--rollouts` forked policy rollouts per
candidate, charged as policy FLOPs). Writes mc_<tag>_seed<s>.json here.

  E=experiments/2026-11-26_search_arithmetic_rerun
  python $E/mc_beam.py --num_prompts=64 --ns=4,8 --rollouts=4 --seeds=0
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import pathlib
import time

import jax

from pav_jax import run_lib
from pav_jax import sharding
from pav_jax.search import comparison

HERE = pathlib.Path(__file__).resolve().parent


def _record_config():
  """The record's config.py (loaded by path: it is not a package)."""
  spec = importlib.util.spec_from_file_location("search_rerun_config",
                                                HERE / "config.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", default="runs/search_rerun")
  ap.add_argument("--num_prompts", type=int, default=64)
  ap.add_argument("--ns", default="4,8")
  ap.add_argument("--rollouts", type=int, default=4)
  ap.add_argument("--seeds", default="0")
  ap.add_argument("--learned", type=int, default=1,
                  help="1: also the learned PRM-Q / PAV beams (paired)")
  ap.add_argument("--tag", default="")
  args = ap.parse_args()
  logging.basicConfig(level=logging.INFO,
                      format="%(asctime)s %(name)s: %(message)s", force=True)
  logging.getLogger("absl").setLevel(logging.WARNING)

  config = _record_config()
  mesh = sharding.make_mesh(dict(config.mesh))
  ns = tuple(int(x) for x in args.ns.split(","))
  tag = args.tag or f"p{args.num_prompts}_r{args.rollouts}"
  with jax.set_mesh(mesh):
    run = run_lib.make_run(config, args.workdir, mesh)
    graphdef, params = run.load_policy()
    verifiers = ({"prm_q": run.load_verifier("prm_q")} if args.learned
                 else {})
    examples = run.examples(config.search.split,
                            int(config.search.num_prompts))
    examples = examples[:args.num_prompts]
    settings = dataclasses.replace(
        comparison.settings_from_config(config), bon_methods=False,
        mc_rollouts=args.rollouts, beam_ns=ns, mc_ns=ns, mc_bon=False,
        beam_distinct=(False,))
    sampler = comparison.make_search_sampler(run, graphdef, settings,
                                             examples)
    for seed in [int(s) for s in args.seeds.split(",")]:
      # One compare per N, the record rewritten after each (a run stopped
      # early keeps the finished N).
      t0, c0 = time.time(), time.process_time()
      out = HERE / f"mc_{tag}_seed{seed}.json"
      res = None
      for n in ns:
        part = comparison.compare(
            sampler=sampler, policy_params=params, policy_cfg=run.model_cfg,
            verifiers=verifiers, task=run.task, tok=run.tok,
            examples=examples,
            settings=dataclasses.replace(settings, beam_ns=(n,), mc_ns=(n,)),
            rng=run_lib.stream_key(1000 * seed, "search"))
        if res is None:
          res = part
        else:
          res["ns"] = sorted(set(res["ns"]) | set(part["ns"]))
          for name, d in part["methods"].items():
            for key, val in d.items():
              res["methods"][name][key] += val
        res["seed"] = seed
        res["wall_seconds"] = time.time() - t0
        res["cpu_seconds_process"] = time.process_time() - c0
        out.write_text(json.dumps(res, indent=2))
        for name, d in part["methods"].items():
          logging.info("N=%d %s: acc %.3f flops %.2e pool %.3f %.0f s", n,
                       name, d["acc"][0], d["flops"][0], d["pool_pass"][0],
                       d["seconds"][0])
      logging.info("seed %d: %.0f s wall, %.0f s CPU -> %s", seed,
                   res["wall_seconds"], res["cpu_seconds_process"], out)

if __name__ == "__main__":
  main()
