"""The run report: Markdown with the stages' tables (and plots, when made)."""

from pathlib import Path

from pav_jax import plots


def _table(rows: dict[str, dict]) -> list[str]:
  keys = sorted({k for r in rows.values() for k in r})
  out = ["| | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
  for name, r in rows.items():
    out.append(f"| {name} | " + " | ".join(
        f"{r[k]:.3f}" if isinstance(r.get(k), float) else str(r.get(k, ""))
        for k in keys) + " |")
  return out


def write(workdir: Path, config, results: dict) -> Path:
  lines = [f"# pav_jax run report: {workdir}", "",
           f"Task: `{config.task.name}`; stages: `{config.stages}`.", ""]
  if "sft" in results:
    r = results["sft"]
    rows = {"SFT": r["sft"]}
    if "rft" in r:
      rows["RFT"] = r["rft"]
    lines += ["## Base policy (held-out test prompts)", "", *_table(rows), "",
              f"Parameters: {r.get('num_params', 0):,}; stage time "
              f"{r.get('seconds', 0):.0f} s.", ""]
    for s in r.get("samples", []):
      lines += ["```", s["question"], "---", s["response"],
                f"--- correct: {s['correct']}", "```", ""]
  for name, r in results.items():
    if isinstance(r, dict) and r.get("report_md"):
      lines += [r["report_md"], ""]
  path = Path(workdir) / "report.md"
  path.write_text("\n".join(lines))
  return path


# RL (the rl stage and its experiment record) ----------------------------------


def plot_rl_curves(arms: dict[str, list[dict]], path_iter: Path,
                   path_tokens: Path, title: str = "") -> None:
  """Held-out pass@1 vs iterations and vs sampled tokens, per arm.

  arms: name -> one curve per seed ({'iteration', 'sampled_tokens',
  'pass@1'} lists, as `rl_stage.curves` returns); the mean over seeds is
  drawn with a min..max band when there are several seeds.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  plt = plots.pyplot()
  for path, xkey, xlabel in ((path_iter, "iteration", "RL iteration"),
                             (path_tokens, "sampled_tokens",
                              "policy tokens sampled")):
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, runs in arms.items():
      n = min(len(c["pass@1"]) for c in runs)
      y = np.array([c["pass@1"][:n] for c in runs])
      x = np.mean([c[xkey][:n] for c in runs], axis=0)
      line, = ax.plot(x, y.mean(0), marker="o", ms=3,
                      label=f"{name} (n={len(runs)})")
      if len(runs) > 1:
        ax.fill_between(x, y.min(0), y.max(0), alpha=0.2,
                        color=line.get_color())
    plots.save_axes(plt, fig, ax, path, xlabel,
                    "held-out pass@1 (mean; band min..max over seeds)", title)


def rl_section(result: dict, out_dir: Path, link_dir: str = "rl") -> str:
  """Markdown of one rl stage: arm, accuracy init -> final, pass@N, curves.

  Plots are written to out_dir and linked as `link_dir/<name>` (relative to
  the report).
  """
  arm, curve = result["arm"], result["curve"]
  plots = []
  try:
    plot_rl_curves({"rl": [curve]}, Path(out_dir) / "rl_accuracy.png",
                   Path(out_dir) / "rl_accuracy_tokens.png",
                   title=f"RL ({arm['scorer']}, alpha {arm['alpha']})")
    plots = ["rl_accuracy.png", "rl_accuracy_tokens.png"]
  except Exception:  # noqa: BLE001 -- a missing plotting backend is no error.
    pass
  lines = ["## Online RL (rl stage)", "",
           f"Init `{arm['init']}` ({result['init']}); scorer `{arm['scorer']}`"
           f", alpha {arm['alpha']}, dense `{arm['dense']}`, estimator "
           f"`{arm['estimator']}`, prover BoK K={arm['prover_k']:g}, seed "
           f"{arm['seed']}.", "",
           "| iteration | sampled tokens | held-out pass@1 |", "|---|---|---|"]
  for it, tk, acc in zip(curve["iteration"], curve["sampled_tokens"],
                         curve["pass@1"]):
    lines.append(f"| {it} | {int(tk):,} | {acc:.3f} |")
  if result.get("pass@n"):
    ns = list(result["pass@n"]["init"])
    lines += ["", "| policy | " + " | ".join(f"pass@{n}" for n in ns) + " |",
              "|---" * (len(ns) + 1) + "|"]
    for name in ("init", "final"):
      lines.append(f"| {name} | " + " | ".join(
          f"{result['pass@n'][name][n]:.3f}" for n in ns) + " |")
  t = result.get("mean_iteration_s", {})
  if t:
    lines += ["", "Mean seconds per iteration: " + ", ".join(
        f"{k[:-2]} {v:.2f}" for k, v in t.items())
              + f"; RL loop {result['loop_seconds']:.0f} s, stage "
              f"{result['seconds']:.0f} s."]
  lines += [""] + [f"![{p}]({link_dir}/{p})" for p in plots]
  return "\n".join(lines)
