r"""Label strategies on the demo's trained SFT policy (arithmetic chains).

Command (from the repository root, one CPU core):
  taskset -c 0 .venv/bin/python experiments/2026-11-26_label_demo_policy/run.py
Reads the SFT policy of runs/search_strong (copied, read-only source, into
runs/label_demo/); writes results.json and PNG plots next to this file.

All arms label the SAME seed rollouts (same key: 8 train prompts x n_cov 2 of
the `label_train` stream, configs/demo.py). Label quality is measured
against a reference Q̂ of N_REF rollouts per prefix drawn with an
independent key (prefilled once, forked); "MSE" is the mean squared
difference minus the reference's own variance, mean q(1-q)/(N_REF-1), so
it estimates the MSE against the true Q.

On arithmetic chains a wrong intermediate value makes the answer
unreachable: the first wrong line is the seed's true first pit (Q = 0 from
there, up to a lucky compensation), known without rollouts. "filter" and
"bisect" pits are scored against it.
"""

import dataclasses
import json
import shutil
import time
from pathlib import Path

import jax
import numpy as np

from pav_jax import defaults
from pav_jax import labelling
from pav_jax import mc_values
from pav_jax import plots
from pav_jax import run_lib
from pav_jax import sharding

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
SRC = ROOT / "runs" / "search_strong"
WORK = ROOT / "runs" / "label_demo"
PROMPTS, N_COV, N_REF = 8, 2, 32


def setup():
  WORK.mkdir(parents=True, exist_ok=True)
  for name in ("tokenizer.model", "tokenizer.vocab"):
    if not (WORK / name).exists():
      shutil.copy(SRC / name, WORK / name)
  if not (WORK / "sft" / "params").exists():
    shutil.copytree(SRC / "sft" / "params", WORK / "sft" / "params")
  config = defaults.config_file_module("demo").get_config()
  mesh = sharding.make_mesh(dict(config.mesh))
  run = run_lib.make_run(config, WORK, mesh)
  return run, mesh


def true_pits(exs, arr, tok, task):
  """First wrong line of each seed (prefix index), -1 for correct seeds."""
  out = []
  for r in range(len(arr["outcome_N"])):
    if arr["outcome_N"][r] > 0:
      out.append(-1)
      continue
    ex = exs[int(arr["prompt_index_N"][r])]
    want = [ln.split("=")[-1].strip() for ln in ex.solution.split("\n")]
    plen = int(arr["prompt_len_N"][r])
    resp = arr["tokens_NT"][r, plen:plen + arr["response_len_N"][r]].tolist()
    lines = tok.decode([t for t in resp if t != tok.eos_id]).split("\n")
    pit = len(lines)
    for i, line in enumerate(lines):
      got = line.split("=")[-1].strip()
      if i >= len(want) or got != want[i]:
        pit = i + 1
        break
    out.append(min(pit, int(arr.get("seed_mask_NP", arr["mask_NP"])[r].sum())
                   - 1))
  del task
  return np.array(out)


def reference(sampler, params, prompts, grade, arr, lc, key):
  """(q_ref_NP, var_NP): N_REF independent rollouts of every MC prefix."""
  items = []
  for r in range(len(arr["tokens_NT"])):
    plen = int(arr["prompt_len_N"][r])
    resp = arr["tokens_NT"][r, plen:plen + arr["response_len_N"][r]].tolist()
    ends = [j + 1 for j, t in enumerate(resp) if t in sampler.step_ids]
    for h in range(int(arr["mask_NP"][r].sum())):
      if arr["count_NP"][r, h] == 0:
        continue
      cut = resp[: ends[h - 1]] if h else []
      items.append((r, h, cut))
  q = np.full(arr["q_NP"].shape, np.nan)
  mc = mc_values.McSettings(N_REF, lc.max_new_tokens, 4)
  budget = mc_values.Budget()
  for lo in range(0, len(items), 32):
    part = items[lo:lo + 32]
    pref = [prompts[int(arr["prompt_index_N"][r])] + cut for r, _, cut in part]
    keys = jax.numpy.concatenate([
        mc_values.mc_keys(key, h, np.array([r]), N_REF) for r, h, _ in part])
    succ = mc_values.continue_prefilled(
        sampler, params, pref, [c for _, _, c in part],
        np.array([int(arr["prompt_index_N"][r]) for r, _, _ in part]), keys,
        grade, mc, 32, budget, repeat=False)
    for (r, h, _), s in zip(part, succ):
      q[r, h] = s / N_REF
  mc_values.check_cache_full(budget.cache_full_biased, "reference",
                             "cache_size")
  return q, budget


def main():
  run, mesh = setup()
  with jax.set_mesh(mesh):
    graphdef, params = run.load_policy()
    sampler = run.sampler(graphdef, cache_size=256)
    exs = run.examples("train", PROMPTS, "label_train")
    prompts = run.encode_prompts(exs)

    def grade(i, ids):
      return run.task.grade(exs[i], run.tok.decode(ids))

    key = run.key("label_train")
    base = labelling.label_config(run.config)
    arms = [("n_mc=4", dict(n_mc=4)), ("n_mc=8", dict(n_mc=8)),
            ("neyman 4 -> 8", dict(n_mc=8, n_mc_min=4, mc_alloc="neyman")),
            ("stop 4..16", dict(n_mc=16, n_mc_min=4)),
            ("filter n_mc=4", dict(n_mc=4, first_pit="filter")),
            ("bisect n_mc=4", dict(n_mc=4, first_pit="bisect", n_pit=16))]
    rows, ref, tp = [], None, None
    for name, kw in arms:
      lc = labelling.LabelConfig(**dict(
          dataclasses.asdict(base), n_cov=N_COV, prompts_per_chunk=PROMPTS,
          **kw))
      t0 = time.time()
      arr, b = labelling.label_chunk(sampler, params, prompts, grade, key, lc)
      secs = time.time() - t0
      mc_values.check_cache_full(b.cache_full_biased, name, "cache_size")
      if ref is None:
        t1 = time.time()
        ref, rb = reference(sampler, params, prompts, grade, arr, lc,
                            jax.random.fold_in(key, 999))
        tp = true_pits(exs, arr, run.tok, run.task)
        print(f"reference: {rb.mc_rollouts} rollouts, {time.time() - t1:.0f}"
              f" s; outcome {arr['outcome_N'].mean():.3f}", flush=True)
      keep = arr["mask_NP"] & (arr["count_NP"] > 0) & np.isfinite(ref)
      d2 = (arr["q_NP"] - ref)[keep] ** 2
      ref_var = (ref * (1 - ref) / (N_REF - 1))[keep]
      res = {"arm": name, "rollouts": int(b.seed_rollouts + b.mc_rollouts),
             "pit_rollouts": int(b.pit_rollouts),
             "kept_prefixes": int(keep.sum()),
             "mse": float(np.mean(d2 - ref_var)),
             "false_zeros": float(np.mean((arr["q_NP"][keep] == 0)
                                          & (ref[keep] > 0))),
             "seconds": secs}
      if "pit_N" in arr:
        fail = arr["outcome_N"] == 0
        res["pit_exact"] = float(np.mean(arr["pit_N"][fail] == tp[fail]))
        res["pit_early"] = float(np.mean(arr["pit_N"][fail] < tp[fail]))
        res["pit_late"] = float(np.mean(arr["pit_N"][fail] > tp[fail]))
        res["failing_seeds"] = int(fail.sum())
        res["true_pit_before_last"] = float(np.mean(
            tp[fail] < arr["seed_mask_NP"][fail].sum(1) - 1))
      print(json.dumps(res), flush=True)
      rows.append(res)
  (HERE / "results.json").write_text(json.dumps(
      {"rows": rows, "n_ref": N_REF, "prompts": PROMPTS, "n_cov": N_COV},
      indent=1))
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  for r in rows:
    ax.scatter(r["rollouts"], r["mse"], label=r["arm"])
  ax.set_xscale("log")
  plots.save_axes(plt, fig, ax, HERE / "label_mse.png",
                  "total rollouts (8 prompts x 2 seeds)",
                  "label MSE vs reference (ref. variance removed)",
                  "Demo SFT policy: label strategies")


def pits(num_prompts: int = 24):
  """First pits only (no reference): 24 prompts x 2 seeds, n_mc 4; the
  failing seeds' lines, true pit, filter and bisect pits -> pits.json."""
  run, mesh = setup()
  with jax.set_mesh(mesh):
    graphdef, params = run.load_policy()
    sampler = run.sampler(graphdef, cache_size=256)
    exs = run.examples("train", num_prompts, "label_train")
    prompts = run.encode_prompts(exs)

    def grade(i, ids):
      return run.task.grade(exs[i], run.tok.decode(ids))

    key = jax.random.fold_in(run.key("label_train"), 1)
    base = labelling.label_config(run.config)
    out, arrs = {}, {}
    for name, kw in (("all", {}), ("filter", dict(first_pit="filter")),
                     ("bisect", dict(first_pit="bisect", n_pit=16))):
      lc = labelling.LabelConfig(**dict(
          dataclasses.asdict(base), n_cov=N_COV, n_mc=4,
          prompts_per_chunk=num_prompts, **kw))
      arr, b = labelling.label_chunk(sampler, params, prompts, grade, key, lc)
      arrs[name] = arr
      out[name] = {"rollouts": int(b.seed_rollouts + b.mc_rollouts),
                   "pit_rollouts": int(b.pit_rollouts),
                   "kept_prefixes": int(arr["mask_NP"].sum())}
    tp = true_pits(exs, arrs["all"], run.tok, run.task)
    fail = arrs["all"]["outcome_N"] == 0
    seeds = []
    for r in np.flatnonzero(fail):
      plen = int(arrs["all"]["prompt_len_N"][r])
      resp = arrs["all"]["tokens_NT"][r, plen:plen + arrs["all"][
          "response_len_N"][r]].tolist()
      seeds.append({
          "question": exs[int(arrs["all"]["prompt_index_N"][r])].question,
          "response": run.tok.decode([t for t in resp
                                      if t != run.tok.eos_id]),
          "true_pit": int(tp[r]),
          "filter_pit": int(arrs["filter"]["pit_N"][r]),
          "bisect_pit": int(arrs["bisect"]["pit_N"][r]),
          "q_n4": arrs["all"]["q_NP"][r][arrs["all"]["mask_NP"][r]].round(
              3).tolist(),
          "q_bisect": arrs["bisect"]["q_NP"][r][
              arrs["bisect"]["seed_mask_NP"][r]].round(3).tolist(),
          "count_bisect": arrs["bisect"]["count_NP"][r][
              arrs["bisect"]["seed_mask_NP"][r]].tolist()})
    for name in ("filter", "bisect"):
      p = np.array([s[f"{name}_pit"] for s in seeds])
      t = np.array([s["true_pit"] for s in seeds])
      out[name].update(exact=float(np.mean(p == t)),
                       early=float(np.mean(p < t)),
                       late=float(np.mean(p > t)))
    out["failing_seeds"] = len(seeds)
    out["true_pit_before_last"] = float(np.mean(
        tp[fail] < arrs["all"]["mask_NP"][fail].sum(1) - 1))
    print(json.dumps(out), flush=True)
  (HERE / "pits.json").write_text(json.dumps(
      {"summary": out, "seeds": seeds}, indent=1))


if __name__ == "__main__":
  import sys  # pylint: disable=g-import-not-at-top
  pits() if sys.argv[1:] == ["pits"] else main()
