"""Fault drills on a tiny SFT pipeline; prints "x/y identical" lines.

    .venv/bin/python tools/drill.py [--root /tmp/pav_drill] [--kills 5,13,19]

Runs `python -m pav_jax.main --config=configs/demo.py` (stage sft only, a
tiny model, one CPU device) in subprocesses:

  sigkill   SIGKILL mid-SFT (`--config.sft.kill_at_step`), rerun; the final
            params must equal an uninterrupted run's bitwise.
  corrupt   kill, truncate the newest checkpoint, rerun: falls back, moves
            the step aside (<stage>/corrupt/), finishes, equals bitwise.
  config    kill, rerun with a changed sft.learning_rate: must be refused
            naming the key; rerun with the original settings: equals.
  nan       ckpt_every=1 and an absurd learning rate: must stop, and no
            saved checkpoint may hold a non-finite value.
  lock      a second run on a workdir in use stops at once naming the pid.
  metrics   after every resumed run, no step appears twice in metrics.jsonl.

Takes a few minutes on 2 CPU cores. Exit status 0 iff every drill passed.
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# pylint: disable-next=g-import-not-at-top,wrong-import-position
from pav_jax import identity  # noqa: E402 (needs ROOT on sys.path first)

TINY = [  # as in tests/train_lib_test.py, plus stages=sft
    "--config.stages=sft",
    "--config.task.num_train=512", "--config.task.num_eval=8",
    "--config.model.num_layers=1", "--config.model.embed_dim=32",
    "--config.model.hidden_dim=64", "--config.model.num_heads=2",
    "--config.model.num_kv_heads=1", "--config.model.head_dim=16",
    "--config.sft.batch_size=16", "--config.sft.max_len=80",
    "--config.sft.warmup_steps=2", "--config.sft.log_every=5",
    "--config.eval.num_prompts=4", "--config.eval.samples_per_prompt=2",
    "--config.eval.batch_rows=8", "--config.sample.max_new_tokens=8",
    "--config.sample.cache_size=96",
]


def run(workdir, *extra):
  cmd = [sys.executable, "-m", "pav_jax.main", "--config=configs/demo.py",
         f"--workdir={workdir}", *TINY, *extra]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=900)


def params_hash(workdir) -> str:
  params = ocp.StandardCheckpointer().restore(
      pathlib.Path(workdir).absolute() / "sft" / "params")
  return identity.tree_sha256(params)


def metrics_unique(workdir) -> bool:
  path = pathlib.Path(workdir) / "sft" / "metrics.jsonl"
  steps = [json.loads(line)["step"] for line in path.read_text().splitlines()]
  train_steps = [s for s, line in zip(steps, path.read_text().splitlines())
                 if '"loss"' in line]
  return len(train_steps) == len(set(train_steps))


def checkpoints_finite(workdir) -> bool:
  ck = pathlib.Path(workdir) / "sft" / "checkpoints"
  if not ck.exists():
    return True
  for step in (p for p in ck.iterdir() if p.name.isdigit()):
    tree = ocp.StandardCheckpointer().restore(step.absolute() / "state")
    for leaf in _leaves(tree):
      a = np.asarray(leaf)
      if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        return False
  return True


def _leaves(tree):
  if isinstance(tree, dict):
    for v in tree.values():
      yield from _leaves(v)
  elif isinstance(tree, (list, tuple)):
    for v in tree:
      yield from _leaves(v)
  elif tree is not None:
    yield tree


def corrupt_latest(workdir) -> int:
  ck = pathlib.Path(workdir) / "sft" / "checkpoints"
  step = max(int(p.name) for p in ck.iterdir() if p.name.isdigit())
  for f in (ck / str(step) / "state").rglob("*"):
    if f.is_file() and f.stat().st_size > 0:
      f.write_bytes(f.read_bytes()[:7])
  return step


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--root", default="/tmp/pav_drill")
  parser.add_argument("--steps", type=int, default=24)
  parser.add_argument("--ckpt_every", type=int, default=8)
  parser.add_argument("--kills", default="5,13,19")
  parser.add_argument("--drills", default="sigkill,corrupt,config,nan,lock")
  args = parser.parse_args()
  root = pathlib.Path(args.root)
  shutil.rmtree(root, ignore_errors=True)
  steps = [f"--config.sft.steps={args.steps}",
           f"--config.sft.ckpt_every={args.ckpt_every}"]
  t0 = time.time()
  failures = []
  lines = []

  def report(line, ok):
    lines.append(line)
    print(line, flush=True)
    if not ok:
      failures.append(line)

  ref = run(root / "ref", *steps)
  assert ref.returncode == 0, ref.stderr[-3000:]
  want = params_hash(root / "ref")

  drills = args.drills.split(",")
  kills = [int(k) for k in args.kills.split(",")] if "sigkill" in drills else []
  same, unique, resumed_runs = 0, 0, len(kills)
  for k in kills:
    wd = root / f"kill{k}"
    killed = run(wd, *steps, f"--config.sft.kill_at_step={k}")
    resumed = run(wd, *steps)
    ok = (killed.returncode == -9 and resumed.returncode == 0
          and params_hash(wd) == want)
    same += ok
    unique += metrics_unique(wd)
    if not ok:
      print(f"  kill at {k}: rc {killed.returncode}/{resumed.returncode}\n"
            + resumed.stderr[-1500:])
  if kills:
    report(f"sigkill: {same}/{len(kills)} identical (killed at steps "
           f"{args.kills}, rerun)", same == len(kills))
  if "corrupt" in drills:
    unique += drill_corrupt(root, args, want, report)
    resumed_runs += 1
  if "config" in drills:
    unique += drill_config(root, args, steps, want, report)
    resumed_runs += 1
  if "nan" in drills:
    drill_nan(root, report)
  if "lock" in drills:
    drill_lock(root, steps, report)
  report(f"metrics.jsonl: no duplicate steps after resume in {unique}/"
         f"{resumed_runs} resumed runs", unique == resumed_runs)
  print(f"drill: {len(lines) - len(failures)}/{len(lines)} drills passed in "
        f"{time.time() - t0:.0f}s")
  return 1 if failures else 0


def drill_corrupt(root, args, want, report) -> int:
  """Kill late with a checkpoint every 4 steps (>= 2 committed steps; the
  interval is run control, so the params still equal the reference)."""
  wd = root / "corrupt"
  steps = [f"--config.sft.steps={args.steps}", "--config.sft.ckpt_every=4"]
  run(wd, *steps, f"--config.sft.kill_at_step={args.steps - 1}")
  bad = corrupt_latest(wd)
  resumed = run(wd, *steps)
  moved = list((wd / "sft" / "corrupt").glob(f"{bad}-*"))
  again = run(wd, *steps)
  ok = (resumed.returncode == 0 and params_hash(wd) == want and len(moved) == 1
        and again.returncode == 0 and "already done" in again.stderr)
  report(f"corrupt checkpoint: {int(ok)}/1 identical (step {bad} truncated; "
         f"moved aside: {moved[0].relative_to(wd) if moved else 'NO'}; "
         "rerun finishes)", ok)
  if not ok:
    print(resumed.stderr[-2000:])
  return int(metrics_unique(wd))


def drill_config(root, args, steps, want, report) -> int:
  """Kill late with a checkpoint every 4 steps, so one is surely committed
  (an async save may still be in flight at the kill; with none committed
  the changed run would rightly start fresh, with nothing to mix)."""
  wd = root / "config"
  steps = [f"--config.sft.steps={args.steps}", "--config.sft.ckpt_every=4"]
  run(wd, *steps, f"--config.sft.kill_at_step={args.steps - 1}")
  changed = run(wd, *steps, "--config.sft.learning_rate=0.001")
  refused = (changed.returncode != 0 and "sft.learning_rate: 0.003 -> 0.001"
             in changed.stderr and "new --workdir" in changed.stderr)
  resumed = run(wd, *steps)
  ok = resumed.returncode == 0 and params_hash(wd) == want
  report(f"changed config: refused {int(refused)}/1 naming "
         "sft.learning_rate; original settings then "
         f"{int(ok)}/1 identical", refused and ok)
  if not refused:
    print(changed.stderr[-2000:])
  return int(metrics_unique(wd))


def drill_nan(root, report) -> None:
  wd = root / "nan"
  nan = run(wd, "--config.sft.steps=12", "--config.sft.ckpt_every=1",
            "--config.sft.learning_rate=1e30")
  stopped = nan.returncode != 0 and "FloatingPointError" in nan.stderr
  finite = checkpoints_finite(wd)
  report(f"nan: stopped {int(stopped)}/1; saved checkpoints all finite "
         f"{int(finite)}/1", stopped and finite)
  if not stopped:
    print(nan.stderr[-2000:])


def drill_lock(root, steps, report) -> None:
  wd = root / "lock"
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  first = subprocess.Popen(
      [sys.executable, "-m", "pav_jax.main", "--config=configs/demo.py",
       f"--workdir={wd}", *TINY, *steps], cwd=ROOT, env=env,
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 120
  while time.time() < deadline and not (
      (wd / ".lock").exists() and (wd / ".lock").read_text().strip()):
    time.sleep(0.2)
  t1 = time.time()
  second = run(wd, *steps)
  waited = time.time() - t1
  refused = (second.returncode != 0
             and f"in use by pid {first.pid}" in second.stderr)
  first.wait()
  report(f"lock: second run refused {int(refused)}/1 in {waited:.1f}s "
         f"naming pid {first.pid}; first run rc {first.returncode}",
         refused and first.returncode == 0)


if __name__ == "__main__":
  sys.exit(main())
