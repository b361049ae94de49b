"""The RL job of ``experiments/finetune_rl.py``: fine-tune a saved policy with RL in batched MJX.

1. :func:`vla_jax.jobs.main_job.load_checkpoint_policy` rebuilds the policy of
   ``config.init_workdir`` from its checkpoint alone (config, statistics, tokenizers, params).
2. It is evaluated on the ``test`` seed block (``config.eval.num_episodes_per_task`` per task;
   ``config.eval.block = "dev"`` for tuning runs, so choices are never made on ``test``).
3. The one train loop (``trainer.train``) runs RL iterations (:class:`vla_jax.rl.step.
   RLStepBuilder`, or :class:`vla_jax.rl.expert_iteration.ExpertIterationStep` for
   ``rl.algorithm = "exit"``, started from those params), with checkpoints, resume, SIGTERM save,
   TensorBoard and periodic evaluations on the ``dev`` block every ``rl.eval_every`` iterations.
4. The fine-tuned params are evaluated on the same episodes; ``report_rl.md`` gives
   success per task before and after (95% Wilson intervals), success against env steps and
   wall-clock (PNG), throughput, and rollout videos before and after.

Multi-process (``experiments/finetune_rl.py --coordinator_address=... --num_processes=N
--process_id=i``): every process loads the checkpoint and simulates its own shard of the envs
inside the sharded RL step; process 0 alone evaluates and writes the report while the others
wait at barriers.

The run's checkpoints are self-describing like the main job's (the starting run's config with
``rl`` and ``train`` added, its statistics and tokenizers), so ``experiments/eval.py
--workdir=<rl workdir>`` evaluates them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from matplotlib.figure import Figure

from vla_jax.data import pipeline
from vla_jax.envs import tabletop
from vla_jax.eval import intervals, report, videos
from vla_jax.jobs import main_job
from vla_jax.models import policy as policy_lib
from vla_jax.rl import collect
from vla_jax.rl import config as rl_config_lib
from vla_jax.rl import expert_iteration
from vla_jax.rl import step as rl_step
from vla_jax.training import assets as assets_lib
from vla_jax.training import checkpoints, distributed, trainer, transfer

MAIN_JOB_COMMAND = ("python experiments/train.py --config=configs/vla_tiny.py "
                    "--workdir=workdirs/vla_tiny")


class PolicyFromCheckpoint:
  """The train loop's model: the loaded policy, initialized from the checkpoint's params.

  ``init`` builds params from an example observation (the RL batch holds only seeds) with
  ``init_fn(rng, observation)`` (``RLStepBuilder.initial_params``: PPO adds its critic);
  ``pretrained_params`` gives every policy param's value from the checkpoint, so step 0 of the
  RL run is exactly the starting policy (a critic keeps its random init).
  """

  def __init__(self, init_fn, example_observation: dict, params: Any, source: str):
    self.init_fn, self.example_observation = init_fn, example_observation
    self.arrays = {k: np.asarray(v) for k, v in transfer.named_leaves(params).items()}
    self.source = source

  def init(self, rng, example_batch):
    del example_batch  # Seeds; the params' shapes come from an observation.
    return self.init_fn(rng, self.example_observation)

  def pretrained_params(self, abstract_params):
    del abstract_params  # place_initial_params checks every path and shape.
    return self.arrays, self.source


TOKEN_HEADS = ("ar", "discrete_diffusion", "hybrid")  # They predict with the LM's output layer.


def rl_task_ids(rl_tasks: str, env, init_workdir: str) -> list[int]:
  """Task ids (in ``env.task_names``) RL trains on: ``rl.tasks`` ("," or "+"-separated; "" = all
  the env's tasks), each required to be one the checkpoint's env has (and its policy learned)."""
  enabled = [env.task_names[int(i)] for i in env.enabled_task_ids]
  tasks = tabletop.split_list(rl_tasks) or enabled
  unknown = [t for t in tasks if t not in enabled]
  if unknown:
    raise ValueError(f"rl.tasks: task(s) {unknown} are not among the tasks of the checkpoint's "
                     f"env {enabled} ({init_workdir}); set rl.tasks to a subset of them, or '' "
                     "for all")
  return [env.task_names.index(t) for t in tasks]


def require_init_checkpoint(init_workdir: str) -> None:
  """Raises FileNotFoundError with the command that makes the starting checkpoint."""
  ckpt = os.path.join(init_workdir, "checkpoints")
  if not os.path.isdir(ckpt) or checkpoints.latest_step(ckpt) is None:
    raise FileNotFoundError(
        f"config.init_workdir={init_workdir!r} holds no checkpoint to fine-tune (looked in "
        f"{ckpt}). Train one first, e.g. the main job:\n  {MAIN_JOB_COMMAND}\nor point "
        "--config.init_workdir at another run's workdir")


def check_env_matches_policy(env: tabletop.TabletopEnv, policy, init_workdir: str) -> None:
  """Raises ValueError when the env's action/state dimensions differ from the checkpoint's."""
  for what, env_dim, pol_dim in (("action", env.action_dim, policy.action_dim),
                                 ("state", env.state_dim, policy.state_dim)):
    if env_dim != pol_dim:
      raise ValueError(f"the RL env acts with {what} dimension {env_dim} but the checkpoint in "
                       f"{init_workdir} has {what} dimension {pol_dim}; fine-tune in the env it "
                       "was trained in (its config.collect.env)")


def check_trainable_reaches_head(trainable: str, head: str, token_expert: bool = False) -> None:
  """Raises ValueError when ``train.trainable`` freezes the VLM of a head that predicts with the
  LM itself (token heads: their logits are the LM's tied embedding), which would leave it
  nothing to learn with; an AR or discrete diffusion head with its own action expert
  (``token_expert``: ``policy.<head>.expert``) can train that alone."""
  if trainable == policy_lib.FREEZE_BACKBONE and head in TOKEN_HEADS and not (
      head in ("ar", "discrete_diffusion") and token_expert):
    raise ValueError(f"train.trainable freezes the VLM (policy.FREEZE_BACKBONE), but the "
                     f"checkpoint's '{head}' head predicts its tokens with the LM itself (no "
                     "action expert): train every param (configs/rl_tiny.py: train=all), or "
                     f"train the head with policy.{head}.expert=True")


def run_rl_job(config: ml_collections.ConfigDict, workdir: str, *, command: str = "",
               print_fn: Callable = print) -> str:
  """Runs the whole RL job (module docstring); returns the path of ``report_rl.md`` ("" when
  preempted)."""
  t_start = time.time()
  require_init_checkpoint(config.init_workdir)
  loaded = main_job.load_checkpoint_policy(config.init_workdir, config.init_step or None)
  base = ml_collections.ConfigDict(loaded.config)
  policy = loaded.policy
  rl = config.rl
  rl_config_lib.check_rl_config(rl, base.policy.head)
  if rl.algorithm != "exit":  # Expert iteration trains the head's imitation loss.
    rl_step.check_policy_supports(policy, rl)
  check_trainable_reaches_head(config.train.trainable, base.policy.head,
                               base.policy.get(base.policy.head, {}).get("expert", False))
  print_fn(f"[rl] starting point: {config.init_workdir} step {loaded.step} "
           f"({base.policy.head} head)", flush=True)

  env = tabletop.make_env(base.collect.env)
  check_env_matches_policy(env, policy, config.init_workdir)
  rl_env_config = ml_collections.ConfigDict(base.collect.env)
  rl_env_config.done_on_success = rl.done_on_success
  rl_env = tabletop.make_env(rl_env_config)
  evaluator = main_job.make_evaluator(base, policy, loaded.norm_stats, loaded.text_tokenizer,
                                      env=env)
  task_ids = rl_task_ids(rl.tasks, env, config.init_workdir)

  episodes = config.eval.num_episodes_per_task
  block = config.eval.get("block", "test")  # "dev" for tuning runs: test is for reports only
  lead = jax.process_index() == 0  # Evaluates and writes the report; the others wait.
  before = None
  if lead:
    print_fn(f"[eval] before RL: {episodes} episodes per task on the '{block}' block",
             flush=True)
    before = evaluator(loaded.params, num_episodes_per_task=episodes, block=block,
                       video_episodes=config.eval.video_episodes, print_fn=print_fn)
    print_fn(f"[eval] before RL: {before.summary()}", flush=True)
  distributed.wait_for_all("vla_jax.rl_job.before", main_job.WAIT_TIMEOUT_S)

  run_config = ml_collections.ConfigDict(loaded.config)
  run_config.rl = rl
  run_config.train = config.train
  run_config.init_workdir = config.init_workdir
  adapter = evaluator.adapter  # RLStepBuilder applies rl.replan_every to its own copy.
  if rl.algorithm == "exit":
    builder = expert_iteration.ExpertIterationStep(policy, rl_env, adapter, rl)
  else:
    builder = rl_step.RLStepBuilder(policy, rl_env, adapter, rl,
                                    ref_params=loaded.params if rl.kl_coef > 0 else None)
  example_obs = jax.tree.map(np.asarray, adapter.observation(adapter.initial_history(1),
                                                             np.zeros((1,), np.int32)))
  model = PolicyFromCheckpoint(builder.initial_params, example_obs, loaded.params,
                               f"checkpoint {config.init_workdir} step {loaded.step}")
  tokenizers = {"text": loaded.text_tokenizer}
  if base.policy.head == "ar" and base.policy.ar.tokenizer == "fast":
    tokenizers["action"] = policy.action_tokenizer
  assets = assets_lib.Assets(norm_stats={main_job.DATASET: loaded.norm_stats},
                             tokenizers=tokenizers, example_batch=example_obs)

  envs_per_iter = rl.num_groups * rl.group_size
  evals: list[dict[str, float]] = []  # step, seconds, mean success (dev)
  t_train = [0.0]

  def periodic_eval(step: int, state) -> None:
    if step == config.train.num_steps:
      return
    params = distributed.local_copy(state.params)  # In every process: a collective.
    if lead:
      res = evaluator(params, num_episodes_per_task=rl.eval_episodes_per_task, block="dev",
                      print_fn=lambda *a, **k: None)
      evals.append({"step": step, "seconds": time.time() - t_train[0],
                    "mean_success": res.mean_success})
      print_fn(f"[eval @ iteration {step}] {res.summary()}", flush=True)
    distributed.wait_for_all(f"vla_jax.rl_job.periodic_eval_{step}", main_job.WAIT_TIMEOUT_S)

  t_train[0] = time.time()
  if lead and rl.eval_every and checkpoints.latest_step(os.path.join(workdir,
                                                                     "checkpoints")) is None:
    # The starting point on the periodic evaluations' own episodes: what later ones compare to.
    res = evaluator(loaded.params, num_episodes_per_task=rl.eval_episodes_per_task,
                    block="dev", print_fn=lambda *a, **k: None)
    evals.append({"step": 0, "seconds": 0.0, "mean_success": res.mean_success})
    print_fn(f"[eval @ iteration 0] {res.summary()}", flush=True)
  # The others wait here, not in the train loop's first collective (gloo gives up after 30 s).
  distributed.wait_for_all("vla_jax.rl_job.start", main_job.WAIT_TIMEOUT_S)
  make_data_iterator = collect.make_episode_iterator(rl.num_groups, rl.group_size, task_ids)
  if rl.algorithm == "exit" and rl.exit_demo_weight > 0:
    make_data_iterator = expert_iteration.with_demos(
        make_data_iterator, demo_iterator(base, loaded, config.train.seed, config.init_workdir))
  result = trainer.train(run_config, workdir, model=model,
                         make_data_iterator=make_data_iterator,
                         assets=assets, print_fn=print_fn,
                         callback=periodic_eval if rl.eval_every else None,
                         callback_every=rl.eval_every, make_step=builder)
  train_seconds = time.time() - t_train[0]
  if result.preempted:
    print_fn("[rl] preempted: rerun the same command to resume", flush=True)
    return ""

  params = distributed.local_copy(result.state.params)  # Collective: every process.
  if not lead:
    distributed.wait_for_all("vla_jax.rl_job.report", main_job.WAIT_TIMEOUT_S)
    return ""  # Process 0 evaluated and wrote the report.
  print_fn(f"[eval] after RL: {episodes} episodes per task on the '{block}' block", flush=True)
  after = evaluator(params, num_episodes_per_task=episodes, block=block,
                    video_episodes=config.eval.video_episodes, print_fn=print_fn)
  print_fn(f"[eval] after RL: {after.summary()}", flush=True)

  video_lines = []
  for label, res in (("before", before), ("after", after)):
    for task, frames in res.videos.items():
      path = videos.write_gif(frames, os.path.join(workdir, "videos", f"{label}_{task}.gif"),
                              fps=base.collect.env.control_hz)
      video_lines.append(f"- {task} {label}: [{os.path.relpath(path, workdir)}]"
                         f"({os.path.relpath(path, workdir)})")
  executed = (f"chunks of {builder.adapter.replan_every}" if builder.adapter.replan_every > 1
              else "receding horizon")
  rollout_label = (f"training rollouts ({', '.join(env.task_names[i] for i in task_ids)}; "
                   f"stochastic, {executed})")
  curve = plot_rl_curves(result.history, evals, before.mean_success, after.mean_success,
                         envs_per_iter, rl_env.horizon, os.path.join(workdir, "rl_curves.png"),
                         rollout_label=rollout_label, block=block)
  total = time.time() - t_start
  its = result.step
  # Steady state: from the second logged interval on (the first one compiles the step).
  steady = result.history[1:] or result.history
  totals = interval_totals(steady, start_step=result.history[0]["step"] if len(
      result.history) > 1 else 0)
  throughput = (
      f"{its} iterations of {envs_per_iter} envs ({rl.num_groups} groups x {rl.group_size}); "
      f"after the first (compiling) one, {totals['seconds']:.0f} s of RL iterations "
      "(evaluations excluded): "
      f"{totals['env_steps'] / totals['seconds']:.0f} env steps/s (steps of running episodes), "
      f"{totals['decisions'] / totals['seconds']:.0f} policy queries/s (chunks sampled, per "
      f"env), {its * rl.updates_per_iteration / totals['seconds']:.2f} updates/s. The split of "
      "an iteration's time into simulation, sampling and update: `benchmarks/rl_throughput.py`.")
  table = ["| task | before | after |", "|---|---|---|"]
  for task in before.per_task:
    b, a = before.per_task[task], after.per_task[task]
    table.append(f"| {task} | {intervals.format_rate(*b)} | {intervals.format_rate(*a)} |")
  table.append(f"| **mean** | **{intervals.format_rate(*before.totals)}** | "
               f"**{intervals.format_rate(*after.totals)}** |")
  sections = [
      ("Summary",
       (f"Fine-tuned **{config.init_workdir}** (step {loaded.step}, {base.policy.head} head) with "
       f"{algorithm_label(rl)} for {its} iterations. Mean success on the **{block}** seed block: "
       f"**{intervals.format_rate(*before.totals)} -> {intervals.format_rate(*after.totals)}** "
       f"(95% Wilson intervals, episodes). Wall-clock {total / 60:.1f} min in all (RL loop "
       f"{train_seconds / 60:.1f} min).")),
      (f"Success per task ({block} block, before -> after)", "\n".join(table)),
      ("Learning curves",
       f"![rl curves]({os.path.basename(curve)})\n\nPeriodic evaluations (dev block, "
       f"{rl.eval_episodes_per_task} episodes per task): "
       + (", ".join(f"iteration {e['step']}: {e['mean_success']:.0%}" for e in evals)
          or "(none)")),
      ("Throughput", throughput),
      ("Rollout videos", "\n".join(video_lines) or "(none)"),
  ]
  path = report.write_report(os.path.join(workdir, "report_rl.md"),
                             title=f"vla_jax RL fine-tuning: {base.policy.head} head",
                             command=command, config=run_config, sections=sections)
  print_fn(f"[report] {path}", flush=True)
  distributed.wait_for_all("vla_jax.rl_job.report", main_job.WAIT_TIMEOUT_S)
  return path


def demo_iterator(base: ml_collections.ConfigDict, loaded, seed: int, init_workdir: str):
  """A ``make_data_iterator`` of the starting run's demonstrations (its own data config,
  tokenizers and the checkpoint's statistics), for expert iteration's anchor."""
  path = base.data.datasets[main_job.DATASET].path
  if not path or not os.path.isdir(path):
    raise FileNotFoundError(
        f"rl.exit_demo_weight > 0 mixes in the demonstrations {init_workdir} was trained on, but "
        f"its dataset path {path!r} (config data.datasets.{main_job.DATASET}.path) does not "
        f"exist here; rebuild it with the main job's command ({MAIN_JOB_COMMAND}) or set "
        "rl.exit_demo_weight=0")
  action_tokenizer = None
  if base.policy.head == "ar" and base.policy.ar.tokenizer == "fast":
    action_tokenizer = loaded.policy.action_tokenizer

  def factory(*, start_step, local_batch_size, process_index, process_count):
    it, _ = pipeline.make_train_iterator(
        base.data, text_tokenizer=loaded.text_tokenizer, batch_size=local_batch_size, seed=seed,
        process_index=process_index, process_count=process_count, start_step=start_step,
        norm_stats={main_job.DATASET: loaded.norm_stats}, action_tokenizer=action_tokenizer,
        max_action_tokens=base.policy.ar.get("max_fast_tokens", 0))
    return it
  return factory


def algorithm_label(rl: ml_collections.ConfigDict) -> str:
  """How the report names the algorithm and its main settings."""
  if rl.algorithm == "exit":
    return (f"expert iteration (imitating its own episodes steered by the MJX oracle, best of "
            f"{rl.exit_candidates} chunks, {rl.exit_lookahead}-step lookahead"
            f"{', successful episodes only' if rl.exit_success_only else ''}"
            + (f", demonstrations at weight {rl.exit_demo_weight:g}" if rl.exit_demo_weight
               else "") + ")")
  return f"{rl.algorithm.upper()} ({rl.likelihood} likelihood, {rl.reward} reward)"


def interval_totals(history, start_step: int = 0) -> dict[str, float]:
  """Sums over logged intervals (each a mean over its steps): ``env_steps``, ``decisions`` and
  ``seconds`` (steps / steps_per_s: the loop's time without callbacks)."""
  out = {"env_steps": 0.0, "decisions": 0.0, "seconds": 0.0}
  prev = start_step
  for h in history:
    n = h["step"] - prev
    prev = h["step"]
    out["env_steps"] += n * h.get("env_steps", 0.0)
    out["decisions"] += n * h.get("decisions", 0.0)
    out["seconds"] += n / max(h.get("steps_per_s", 0.0), 1e-9)
  return out


def plot_rl_curves(history, evals, before: float, after: float, envs_per_iter: int,
                   horizon: int, path: str, rollout_label: str = "training rollouts",
                   block: str = "test") -> str:
  """Success against env steps and against wall-clock: rollout success of the training
  iterations (stochastic sampler; ``rollout_label`` says on what), the periodic dev evaluations
  and the before/after evaluations on ``block``; saves a PNG at ``path``."""
  fig = Figure(figsize=(10, 4))
  ax_steps, ax_time = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
  it = np.array([h["step"] for h in history], float)
  train_success = np.array([100 * h.get("rollout_success", np.nan) for h in history])
  lengths = np.diff(np.concatenate([[0.0], it]))
  seconds = np.cumsum(lengths / np.maximum([h.get("steps_per_s", 0.0) for h in history], 1e-9))
  ax_steps.plot(it * envs_per_iter * horizon, train_success, color="tab:blue",
                label=rollout_label)
  ax_time.plot(seconds / 60, train_success, color="tab:blue", label=rollout_label)
  if evals:
    ax_steps.plot([e["step"] * envs_per_iter * horizon for e in evals],
                  [100 * e["mean_success"] for e in evals], "o-", color="tab:green",
                  label="dev evaluations")
    ax_time.plot([e["seconds"] / 60 for e in evals], [100 * e["mean_success"] for e in evals],
                 "o-", color="tab:green", label="dev evaluations")
  for ax in (ax_steps, ax_time):
    ax.axhline(100 * before, color="grey", ls="--", label=f"{block} before")
    ax.axhline(100 * after, color="black", ls="--", label=f"{block} after")
    ax.set_ylim(0, 100)
    ax.set_ylabel("success (%)")
    ax.legend(fontsize=7)
  ax_steps.set_xlabel(f"env steps simulated (iterations x {envs_per_iter} envs x {horizon})")
  ax_time.set_xlabel("wall-clock of the RL loop (min)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path
