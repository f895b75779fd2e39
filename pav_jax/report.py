"""The run report: Markdown with the stages' tables (and plots, when made)."""

from pathlib import Path


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
