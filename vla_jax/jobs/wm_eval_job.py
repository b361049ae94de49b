"""The world model as a policy evaluator: imagined against true success over many policies.

Each policy (a checkpoint of a policy run at some step, executed with some ``replan_every``)
is evaluated closed-loop twice on the same seed block: in MJX and in a trained world model
(:class:`vla_jax.world_model.env.WorldModelEnv`), from the same start states (episode ``j`` of
the block resets the same scene in both; the world model encodes its first observation). The
policy and evaluator code is the one the main job evaluates with; only the env differs.

The agreement between the imagined and the true success rates over policies is reported as
Pearson r, Spearman rho and the MMRV of SimplerEnv (``vla_jax.eval.agreement``), with bootstrap
95% intervals over episodes (each policy's episodes resampled, real and imagined outcomes of an
episode kept together), per-episode agreement, a scatter plot and one imagined next to true
rollout video per task. ``experiments/evaluate_world_model.py`` is the entry point.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
import numpy as np
from matplotlib.figure import Figure

from vla_jax import atomic_files
from vla_jax.envs import tabletop
from vla_jax.eval import agreement, closed_loop, intervals, videos
from vla_jax.jobs import main_job
from vla_jax.training import checkpoints
from vla_jax.world_model import env as wm_env_lib

BOOTSTRAP_SAMPLES = 2000


@dataclasses.dataclass(frozen=True)
class PolicySpec:
  """One policy to evaluate: a run's checkpoint at ``step``, replanning every ``replan_every``
  control steps."""
  workdir: str
  step: int
  replan_every: int

  @property
  def name(self) -> str:
    run = os.path.basename(os.path.normpath(self.workdir))
    return f"{run}@{self.step}" + ("" if self.replan_every == 1 else f" r{self.replan_every}")


def parse_policies(entries: Sequence[str], replan_every: Sequence[int]) -> list[PolicySpec]:
  """Policy specs from ``WORKDIR``, ``WORKDIR@STEP`` or ``WORKDIR@all`` entries (the latest, one,
  or every kept checkpoint), each crossed with every ``replan_every``.

  Raises FileNotFoundError naming the workdir when it has no checkpoint (or not that step).
  """
  if not entries:
    raise ValueError("world-model evaluation: no policies given (--policies=WORKDIR@all, ...)")
  if not replan_every or min(replan_every) < 1:
    raise ValueError(f"world-model evaluation: replan_every {list(replan_every)} must be >= 1")
  specs = []
  for entry in entries:
    workdir, _, which = entry.partition("@")
    steps = checkpoints.all_steps(workdir)
    if not steps:
      raise FileNotFoundError(
          f"policy '{entry}': no checkpoint in {workdir}/checkpoints; train one with: python "
          f"experiments/train.py --config=configs/vla_tiny.py --workdir={workdir}")
    if which == "all":
      chosen = steps
    elif which == "":
      chosen = steps[-1:]
    else:
      try:
        chosen = [int(which)]
      except ValueError as e:
        raise ValueError(f"policy '{entry}': the part after '@' must be a step or 'all'") from e
      if chosen[0] not in steps:
        raise FileNotFoundError(f"policy '{entry}': no checkpoint at step {chosen[0]} in "
                                f"{workdir} (steps there: {steps})")
    specs += [PolicySpec(workdir, s, int(r)) for s in chosen for r in replan_every]
  if len(set(specs)) != len(specs):
    raise ValueError(f"world-model evaluation: policies repeat: {[s.name for s in specs]}")
  return specs


@dataclasses.dataclass
class PolicyRow:
  """One policy's evaluations: ``real`` in MJX, ``imagined`` in the world model (same block,
  same episodes); ``seconds`` the wall-clock of both."""
  spec: PolicySpec
  real: closed_loop.EvalResult
  imagined: closed_loop.EvalResult
  seconds: float


def run_evaluation(world_model: Any, specs: Sequence[PolicySpec], *, block: str,
                   episodes_per_task: int, video_episodes: int = 1, success_steps: int = 1,
                   print_fn: Callable = print) -> list[PolicyRow]:
  """Evaluates every policy in MJX and in ``world_model`` (a ``wm_job.LoadedWorldModel``;
  ``success_steps``: see :class:`~vla_jax.world_model.env.WorldModelEnv`).

  Evaluators are compiled once per (run, replan_every) and env, and reused across checkpoint
  steps. The last policy keeps ``video_episodes`` rollouts per task in both envs.
  """
  evaluators: dict[tuple[str, int], tuple[closed_loop.Evaluator, closed_loop.Evaluator]] = {}
  rows = []
  for i, spec in enumerate(specs):
    t0 = time.perf_counter()
    loaded = main_job.load_checkpoint_policy(spec.workdir, spec.step)
    key = (os.path.abspath(spec.workdir), spec.replan_every)
    if key not in evaluators:
      config = ml_collections.ConfigDict(loaded.config)
      config.eval.replan_every = spec.replan_every
      env = tabletop.make_env(config.collect.env)
      imagined_env = wm_env_lib.WorldModelEnv(world_model.model, world_model.params, env,
                                              success_steps=success_steps)
      evaluators[key] = tuple(
          main_job.make_evaluator(config, loaded.policy, loaded.norm_stats,
                                  loaded.text_tokenizer, env=e) for e in (env, imagined_env))
    real_ev, imagined_ev = evaluators[key]
    videos_n = video_episodes if i == len(specs) - 1 else 0
    quiet = lambda *a, **k: None
    real = real_ev(loaded.params, num_episodes_per_task=episodes_per_task, block=block,
                   video_episodes=videos_n, print_fn=quiet)
    imagined = imagined_ev(loaded.params, num_episodes_per_task=episodes_per_task, block=block,
                           video_episodes=videos_n, print_fn=quiet)
    if not np.array_equal(real.seeds, imagined.seeds):
      raise AssertionError("world-model evaluation: MJX and imagined episodes differ")
    dt = time.perf_counter() - t0
    rows.append(PolicyRow(spec, real, imagined, dt))
    print_fn(f"[wm-eval] {i + 1}/{len(specs)} {spec.name}: MJX "
             f"{intervals.format_rate(*real.totals)}, imagined "
             f"{intervals.format_rate(*imagined.totals)} ({dt:.0f} s)", flush=True)
  return rows


def agreement_stats(rows: Sequence[PolicyRow], seed: int = 0) -> dict[str, Any]:
  """Pearson, Spearman and MMRV of imagined against true mean success over the policies, each
  with a bootstrap 95% interval over episodes; the same over (policy, task) pairs; and the share
  of episodes whose imagined outcome equals the true one."""
  real = np.stack([r.real.success for r in rows]).astype(np.float64)  # [P, E]
  imag = np.stack([r.imagined.success for r in rows]).astype(np.float64)
  tasks = rows[0].real.task_id
  task_ids = np.unique(tasks)
  fns = {"pearson": agreement.pearson, "spearman": agreement.spearman, "mmrv": agreement.mmrv}
  stats: dict[str, Any] = {"policies": len(rows), "episodes": real.shape[1]}
  for name, fn in fns.items():
    stats[name] = fn(real.mean(1), imag.mean(1))
  rng = np.random.default_rng(seed)
  boot = {name: [] for name in fns}
  for _ in range(BOOTSTRAP_SAMPLES):
    # Resample episodes within each task, so every task keeps its share of the mean.
    idx = np.concatenate([rng.choice(np.flatnonzero(tasks == t), (tasks == t).sum())
                          for t in task_ids])
    r, m = real[:, idx].mean(1), imag[:, idx].mean(1)
    for name, fn in fns.items():
      boot[name].append(fn(r, m))
  for name, values in boot.items():
    values = np.asarray(values)
    values = values[np.isfinite(values)]
    stats[f"{name}_ci"] = ((float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5)))
                           if len(values) else (float("nan"), float("nan")))
  per_task_real = np.stack([real[:, tasks == t].mean(1) for t in task_ids], 1).ravel()
  per_task_imag = np.stack([imag[:, tasks == t].mean(1) for t in task_ids], 1).ravel()
  for name, fn in fns.items():
    stats[f"task_{name}"] = fn(per_task_real, per_task_imag)
  stats["episode_agreement"] = float((real == imag).mean())
  return stats


def plot_scatter(rows: Sequence[PolicyRow], stats: dict[str, Any], path: str) -> str:
  """Imagined against true mean success per policy (95% Wilson intervals both ways), the
  per-task rates faint behind; saves a PNG at ``path``."""
  fig = Figure(figsize=(5.5, 5))
  ax = fig.add_subplot()
  tasks = list(rows[0].real.per_task)
  for k, task in enumerate(tasks):
    xs = [100 * r.real.per_task[task][0] / r.real.per_task[task][1] for r in rows]
    ys = [100 * r.imagined.per_task[task][0] / r.imagined.per_task[task][1] for r in rows]
    ax.scatter(xs, ys, s=12, alpha=0.35, color=f"C{k + 1}", label=task)
  for r in rows:
    (sr, nr), (si, ni) = r.real.totals, r.imagined.totals
    lr, hr = intervals.wilson(sr, nr)
    li, hi = intervals.wilson(si, ni)
    x, y = 100 * sr / nr, 100 * si / ni
    ax.errorbar(x, y, xerr=[[x - 100 * lr], [100 * hr - x]], yerr=[[y - 100 * li], [100 * hi - y]],
                fmt="o", color="C0", ms=5, capsize=2)
  ax.plot([0, 100], [0, 100], "k:", lw=1)
  ax.set_xlim(-2, 102)
  ax.set_ylim(-2, 102)
  ax.set_xlabel("MJX success (%)")
  ax.set_ylabel("imagined success (%)")
  ax.set_title(f"{len(rows)} policies: Pearson r {stats['pearson']:.2f}, "
               f"Spearman {stats['spearman']:.2f}", fontsize=10)
  ax.legend(fontsize=8, loc="upper left")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path


def _fmt(stats: dict[str, Any], name: str, scale: float = 1.0, unit: str = "") -> str:
  low, high = stats[f"{name}_ci"]
  return (f"{scale * stats[name]:.2f}{unit} [{scale * low:.2f}, {scale * high:.2f}]")


def seen_in_training(world_model_config: Any) -> set[tuple[str, int]]:
  """``(absolute workdir, step)`` of the policies whose rollouts the world model trained on
  (its ``data.policies``; an entry without a step is that run's latest checkpoint)."""
  from vla_jax.jobs import wm_job  # pylint: disable=g-import-not-at-top
  seen = set()
  for workdir, step in wm_job.policy_sources(world_model_config.data.get("policies", "")):
    step = checkpoints.latest_step(workdir) if step is None else step
    seen.add((os.path.abspath(workdir), step))
  return seen


def write_report(rows: Sequence[PolicyRow], out_dir: str, *, world_model_workdir: str,
                 world_model_step: int, seen: set[tuple[str, int]] = frozenset(),
                 command: str = "") -> tuple[str, dict[str, Any]]:
  """Writes ``report_wm_eval.md``, ``wm_eval_scatter.png`` and GIFs under ``out_dir``; returns
  (the .md path, :func:`agreement_stats`, with ``"held_out"``: the same statistics over the
  policies not in ``seen`` (:func:`seen_in_training`) when at least 3 are, else None)."""
  os.makedirs(out_dir, exist_ok=True)
  stats = agreement_stats(rows)
  is_seen = [(os.path.abspath(r.spec.workdir), r.spec.step) in seen for r in rows]
  held_out = [r for r, s in zip(rows, is_seen) if not s]
  stats["held_out"] = agreement_stats(held_out) if 3 <= len(held_out) < len(rows) else None
  scatter = plot_scatter(rows, stats, os.path.join(out_dir, "wm_eval_scatter.png"))
  block = rows[0].real.block
  tasks = list(rows[0].real.per_task)
  lines = [f"# The world model `{world_model_workdir}` (step {world_model_step}) as an evaluator",
           "", "Command:", "", "```", command, "```", "",
           f"Every policy ran on the same **{block}** seed block episodes in MJX and in the world "
           "model (same start scenes; the world model encodes the first observation and imagines "
           "the rest). Success per policy with 95% Wilson intervals:", "",
           "| policy | MJX | imagined | " + " | ".join(f"{t} MJX / imagined" for t in tasks)
           + " | s |", "|---" * (4 + len(tasks)) + "|"]
  for r, was_seen in zip(rows, is_seen):
    cells = [f"{r.real.per_task[t][0]} / {r.imagined.per_task[t][0]} of {r.real.per_task[t][1]}"
             for t in tasks]
    lines.append(f"| {r.spec.name}{' (seen)' if was_seen else ''} | {intervals.format_rate(*r.real.totals)} | "
                 f"{intervals.format_rate(*r.imagined.totals)} | " + " | ".join(cells)
                 + f" | {r.seconds:.0f} |")
  lines += ["", "## Agreement", "",
            f"Over {stats['policies']} policies ({stats['episodes']} episodes each; intervals: "
            f"{BOOTSTRAP_SAMPLES} bootstrap resamples of the episodes within each task):", "",
            f"- Pearson r: **{_fmt(stats, 'pearson')}**",
            f"- Spearman rho: {_fmt(stats, 'spearman')}",
            f"- MMRV (SimplerEnv; 0 = every pair ordered as in MJX): "
            f"{_fmt(stats, 'mmrv', 100, ' pts')}",
            f"- Over the {stats['policies'] * len(tasks)} (policy, task) rates: Pearson "
            f"{stats['task_pearson']:.2f}, Spearman {stats['task_spearman']:.2f}, MMRV "
            f"{100 * stats['task_mmrv']:.2f} pts",
            f"- Episodes whose imagined outcome equals the true one: "
            f"{stats['episode_agreement']:.1%}"]
  if stats["held_out"] is not None:
    h = stats["held_out"]
    lines.append(f"- Over the {h['policies']} policies whose rollouts the world model did not "
                 f"train on (the others are marked 'seen'): Pearson r {_fmt(h, 'pearson')}, "
                 f"Spearman {_fmt(h, 'spearman')}, MMRV {_fmt(h, 'mmrv', 100, ' pts')}")
  lines += ["", f"![scatter]({os.path.basename(scatter)})", ""]
  last = rows[-1]
  gifs = []
  for task, true in last.real.videos.items():
    imagined = last.imagined.videos.get(task)
    if imagined is None:
      continue
    gap = np.full(true.shape[:2] + (2, 3), 255, np.uint8)
    gifs.append(videos.write_gif(np.concatenate([true, gap, imagined], 2),
                                 os.path.join(out_dir, "videos", f"wm_eval_{task}.gif")))
  if gifs:
    lines += [f"## {last.spec.name} in MJX (left) and imagined (right)", "",
              *[f"- {os.path.relpath(g, out_dir)}" for g in gifs], ""]
  path = atomic_files.write_text(os.path.join(out_dir, "report_wm_eval.md"), "\n".join(lines))
  return path, stats


def summary_line(stats: dict[str, Any]) -> str:
  """The printed figures: ``[wm-eval] N policies: Pearson r ... Spearman ... MMRV ...``."""
  return (f"[wm-eval] {stats['policies']} policies x {stats['episodes']} episodes: Pearson r "
          f"{_fmt(stats, 'pearson')}, Spearman rho {_fmt(stats, 'spearman')}, MMRV "
          f"{_fmt(stats, 'mmrv', 100, ' pts')}; episode agreement "
          f"{stats['episode_agreement']:.1%}")
