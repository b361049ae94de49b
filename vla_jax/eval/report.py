"""The main job's ``report.md``: config, data, training curve, success table, latency, videos."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

# A Figure with its own canvas, not pyplot: headless (no display needed) without switching the
# process-wide backend, so a notebook that imports this keeps its inline plots.
from matplotlib.figure import Figure

from vla_jax import atomic_files
from vla_jax.eval import intervals


def plot_training_curve(history: Sequence[Mapping[str, float]],
                        evals: Sequence[tuple[int, float]], path: str) -> str:
  """Loss per logged step (log scale) and periodic closed-loop success; saves a PNG at ``path``."""
  fig = Figure(figsize=(7, 4))
  ax = fig.add_subplot()
  steps = [h["step"] for h in history]
  ax.plot(steps, [h["loss"] for h in history], color="tab:blue", label="train loss")
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel("loss", color="tab:blue")
  if evals:
    ax2 = ax.twinx()
    ax2.plot([s for s, _ in evals], [100 * v for _, v in evals], "o-", color="tab:green",
             label="closed-loop success")
    ax2.set_ylabel("success (%)", color="tab:green")
    ax2.set_ylim(0, 100)
  ax.set_title("training curve")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path


def success_table(per_task: Mapping[str, tuple[int, int]]) -> str:
  """Markdown table: task, successes / episodes, rate and its 95% Wilson interval; then the mean
  over tasks (the pooled rate: every task has the same episode count in an evaluation block)."""
  rows = ["| task | successes / episodes | success | 95% interval |", "|---|---|---|---|"]
  for task, (s, n) in per_task.items():
    low, high = intervals.wilson(s, n)
    rows.append(f"| {task} | {s} / {n} | {s / n:.1%} | [{100 * low:.1f}, {100 * high:.1f}] |")
  s_all, n_all = sum(s for s, _ in per_task.values()), sum(n for _, n in per_task.values())
  low, high = intervals.wilson(s_all, n_all)
  rows.append(f"| **mean over tasks** | {s_all} / {n_all} | **{s_all / n_all:.1%}** | "
              f"[{100 * low:.1f}, {100 * high:.1f}] |")
  return "\n".join(rows)


def write_report(path: str, *, title: str, command: str, config: Any,
                 sections: Sequence[tuple[str, str]]) -> str:
  """Writes ``report.md``: a title, the command, ``sections`` (heading, markdown) and the config.

  ``config`` is a ConfigDict or dict, dumped as JSON at the end.
  """
  cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  lines = [f"# {title}", "", "Command:", "", "```", command, "```", ""]
  for heading, body in sections:
    lines += [f"## {heading}", "", body.rstrip(), ""]
  lines += ["## Config", "", "```json", json.dumps(cfg, indent=2, default=str), "```", ""]
  return atomic_files.write_text(path, "\n".join(lines))
