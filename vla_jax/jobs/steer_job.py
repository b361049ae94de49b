"""Steering sweep: success of a checkpoint's policy against the number of sampled candidates N.

For each N, the checkpoint is evaluated closed-loop on a seed block with best-of-N steering
(``vla_jax.world_model.steering``): at every decision the policy samples N chunks, a scorer rates
them and the best is executed. N = 1 is plain evaluation. Writes ``report_steering.md`` (one row
per scorer and N: success per task with 95% intervals, mean, milliseconds per decision for one
env, evaluation wall-clock) and ``steering.png`` (success against N with the intervals) under
``out_dir``. ``experiments/steer.py`` is the entry point.

Scorers: ``oracle`` (the MJX oracle: each candidate simulated in a copy of the true state for
``lookahead`` control steps, scored by the env's return; privileged, an upper bound for learned
scorers) and ``world_model`` (each candidate imagined for ``lookahead`` steps in a trained world
model from the current observation, scored by the imagined return; ``world_model=`` a
:class:`vla_jax.jobs.wm_job.LoadedWorldModel`) and ``value`` (a chunk value learned over the
policy's backbone features, V-GPS style; ``value=`` a :class:`vla_jax.jobs.value_job.LoadedValue`
trained on this checkpoint's features).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from vla_jax import atomic_files
from vla_jax.envs import tabletop
from vla_jax.eval import closed_loop, intervals
from vla_jax.jobs import main_job
from vla_jax.world_model import steering

SCORERS = ("oracle", "world_model", "value")


@dataclasses.dataclass
class SweepRow:
  """One (scorer, N) evaluation: ``result`` an EvalResult; ``decision_ms`` milliseconds per
  decision for one env (N samples + scoring), after compilation."""
  scorer: str
  num_candidates: int
  result: closed_loop.EvalResult
  decision_ms: float


def make_scorer(name: str, env: tabletop.TabletopEnv, lookahead: int,
                world_model: Any = None) -> steering.Scorer:
  """The scorer called ``name`` (see :data:`SCORERS`); ``world_model`` (a
  ``wm_job.LoadedWorldModel``) is required by ``world_model``."""
  if name == "oracle":
    return steering.MJXOracle(env, lookahead)
  if name == "value":
    raise ValueError("steering scorer 'value' reads the policy's features: run_sweep builds it "
                     "with the policy's adapter (value_job.make_scorer)")
  if name == "world_model":
    if world_model is None:
      raise ValueError("steering scorer 'world_model' needs a trained world model (steer.py "
                       "--world_model=<workdir of experiments/train_world_model.py>)")
    # Its env must be the policy's: the same images, resets and instructions.
    from vla_jax.world_model import env as wm_env  # pylint: disable=g-import-not-at-top
    wm_env.WorldModelEnv(world_model.model, world_model.params, env)
    return steering.WorldModelScorer(world_model.model, world_model.params, lookahead)
  raise ValueError(f"steering scorer '{name}': unknown; known: {', '.join(SCORERS)}")


def decision_ms(evaluator: closed_loop.Evaluator, policy_fn: steering.BestOfN, params: Any,
                repeats: int = 5) -> float:
  """Milliseconds of one jitted decision (sample N chunks, score, pick) for one env at an
  episode's first step, after compilation (what a robot waits for each time it replans)."""
  state, observation = evaluator.first_step(1)
  plan = jax.jit(lambda s, o, k, p: policy_fn.plan(s, o, k, p)[0])
  jax.block_until_ready(plan(state, observation, jax.random.PRNGKey(1), params))
  t0 = time.perf_counter()
  for i in range(repeats):
    jax.block_until_ready(plan(state, observation, jax.random.PRNGKey(2 + i), params))
  return (time.perf_counter() - t0) / repeats * 1e3


def run_sweep(loaded: main_job.LoadedPolicy, *, scorers: Sequence[str],
              num_candidates: Sequence[int], block: str, episodes_per_task: int,
              lookahead: int | None = None, sample_options: dict | None = None,
              world_model: Any = None, value: Any = None, policy_workdir: str = "",
              print_fn: Callable = print) -> list[SweepRow]:
  """Evaluates ``loaded``'s policy with every scorer and N; returns the rows in that order.

  ``lookahead``: control steps the oracle simulates per candidate (default the chunk length H).
  N = 1 is evaluated once (plain evaluation: no scorer is used). ``sample_options``: static head
  sampling options for every row (e.g. ``{"noise_temperature": 1.5}``). ``world_model``: the
  ``wm_job.LoadedWorldModel`` of the ``world_model`` scorer. ``value``: the
  ``value_job.LoadedValue`` of the ``value`` scorer, trained on the features of ``loaded``
  (``policy_workdir``: where ``loaded`` came from, checked against the value's).
  """
  bad = [n for n in num_candidates if n < 1]
  if bad or not num_candidates:
    raise ValueError(f"steering: num_candidates {list(num_candidates)} must be integers >= 1")
  unknown = [s for s in scorers if s not in SCORERS]
  if unknown or not scorers:
    raise ValueError(f"steering: unknown scorer(s) {unknown}; known: {', '.join(SCORERS)}")
  if "world_model" in scorers and world_model is None:
    raise ValueError("steering scorer 'world_model' needs a trained world model (steer.py "
                     "--world_model=<workdir of experiments/train_world_model.py>)")
  if "value" in scorers and value is None:
    raise ValueError("steering scorer 'value' needs a trained chunk value (steer.py "
                     "--value=<workdir of experiments/train_value.py>)")
  config = ml_collections.ConfigDict(loaded.config)
  env = tabletop.make_env(config.collect.env)
  horizon = loaded.policy.action_horizon
  lookahead = horizon if lookahead is None else int(lookahead)
  if not 1 <= lookahead <= horizon:
    raise ValueError(f"steering: lookahead={lookahead} must be in [1, H={horizon}] (the "
                     "policy's chunk length)")
  rows = []
  plan = [(s, n) for s in scorers for n in num_candidates if n > 1]
  if 1 in num_candidates:
    plan.insert(0, ("none", 1))
  for name, n in plan:
    if name == "value":
      from vla_jax.jobs import value_job  # pylint: disable=g-import-not-at-top

      def make(adapter, n=n):
        return steering.BestOfN(adapter, num_candidates=n, scorer=value_job.make_scorer(
            value, loaded, adapter, policy_workdir))
    else:
      scorer = make_scorer(name, env, lookahead, world_model) if n > 1 else None
      make = functools.partial(steering.BestOfN, scorer=scorer, num_candidates=n)
    evaluator = main_job.make_evaluator(config, loaded.policy, loaded.norm_stats,
                                        loaded.text_tokenizer, env=env, steering=make,
                                        sample_options=sample_options)
    t0 = time.perf_counter()
    res = evaluator(loaded.params, num_episodes_per_task=episodes_per_task, block=block,
                    print_fn=lambda *a, **k: None)
    wall = time.perf_counter() - t0
    ms = decision_ms(evaluator, make(evaluator.adapter), loaded.params)
    rows.append(SweepRow(name, n, res, ms))
    print_fn(f"[steer] {name} N={n}: {res.summary()}; {ms:.1f} ms per decision; "
             f"{wall:.0f} s", flush=True)
  return rows


def write_report(rows: Sequence[SweepRow], out_dir: str, *, workdir: str, step: int,
                 lookahead: int, command: str = "", sample_options: dict | None = None) -> str:
  """Writes ``report_steering.md`` and ``steering.png`` under ``out_dir``; returns the .md path."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  os.makedirs(out_dir, exist_ok=True)
  tasks = list(rows[0].result.per_task)
  block = rows[0].result.block
  lines = [f"# Best-of-N steering of `{workdir}` (step {step})", "",
           f"Closed-loop success on the **{block}** seed block; at every decision the policy "
           f"samples N action chunks, the scorer rates them and the best is executed (N = 1: "
           f"the policy alone). The MJX oracle simulates each candidate's first {lookahead} "
           "actions in a copy of the true state and scores the env's return: it is "
           "**privileged** (an upper bound for learned scorers); the world model imagines "
           "them from the current observation and scores the imagined return (not "
           "privileged). Intervals: 95% Wilson. "
           "ms/decision: one env, N samples plus scoring, after compilation.", ""]
  if sample_options:
    lines += [f"Head sampling options (every row): `{sample_options}`.", ""]
  if command:
    lines += [f"Command: `{command}`", ""]
  lines.append("| scorer | N | " + " | ".join(tasks) + " | mean | ms/decision | eval s |")
  lines.append("|---" * (len(tasks) + 5) + "|")
  for r in rows:
    cells = [f"{s}/{n}" for s, n in r.result.per_task.values()]
    lines.append(f"| {r.scorer} | {r.num_candidates} | " + " | ".join(cells) +
                 f" | **{intervals.format_rate(*r.result.totals)}** | {r.decision_ms:.1f} | "
                 f"{r.result.seconds + r.result.compile_seconds:.0f} |")
  path = os.path.join(out_dir, "report_steering.md")
  atomic_files.write_text(path, "\n".join(lines) + "\n")

  fig, ax = plt.subplots(figsize=(5, 3.5))
  base = [r for r in rows if r.num_candidates == 1]
  for name in sorted({r.scorer for r in rows if r.num_candidates > 1}):
    series = base + [r for r in rows if r.scorer == name]
    ns = np.array([r.num_candidates for r in series])
    rate = np.array([r.result.totals[0] / r.result.totals[1] for r in series]) * 100
    lo_hi = np.array([intervals.wilson(*r.result.totals) for r in series]) * 100
    ax.errorbar(ns, rate, yerr=[rate - lo_hi[:, 0], lo_hi[:, 1] - rate], marker="o",
                capsize=3, label=name)
  ax.set_xscale("log", base=2)
  ax.set_xlabel("candidates per decision N")
  ax.set_ylabel(f"success on {block} (%)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "steering.png"), dpi=100)
  plt.close(fig)
  return path
