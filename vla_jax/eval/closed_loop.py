"""Closed-loop evaluation of any policy in the batched MJX task suite.

The policy sees exactly what the data pipeline gives it in training (the batch contract): the
env's rendered ``image/<camera>`` uint8 [N, 1, H, W, 3] (history window T = 1), the proprio
``state`` normalized with the dataset statistics [N, 1, S], and the episode's instruction
tokenized with the run's text tokenizer. It returns a normalized action chunk [N, H, D]; the
first action is unnormalized and executed, and the policy is queried again at the next control
step (receding horizon), all inside one jitted ``lax.scan`` over time.

A token head whose sequence does not decode (``valid`` False) yields NaN actions: the env then
flags ``error`` and ends that episode, which counts as a failure (never a silent zero action).

Seeds: episode ``i`` of batch ``b`` is reset from keys split off ``PRNGKey(seed + b)``, a
derivation disjoint from the demonstrations' ``PRNGKey(episode_seed)`` resets, so evaluation
episodes are unseen.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vla_jax.data import normalization
from vla_jax.envs import rollout as rollout_lib
from vla_jax.envs.tabletop import TabletopEnv


@dataclasses.dataclass
class EvalResult:
  """Outcome of :func:`evaluate`.

  Attributes:
    success: bool [E] per episode (success within the horizon). task_id, instruction_id: int32 [E].
    error: bool [E] (NaN/invalid action or non-finite physics ended the episode).
    per_task: task name -> (successes, episodes). per_instruction: instruction -> same.
    mean_success: average over tasks of the per-task success rate.
    seconds: wall-clock of the rollouts after the first (compiling) call; compile_seconds: the
      first call of this evaluator (compilation + one batch), 0 when it was compiled before.
    videos: task name -> uint8 [T, H, W, 3] frames of the first ``video_episodes`` episodes.
  """
  success: np.ndarray
  task_id: np.ndarray
  instruction_id: np.ndarray
  error: np.ndarray
  per_task: dict[str, tuple[int, int]]
  per_instruction: dict[str, tuple[int, int]]
  mean_success: float
  seconds: float
  compile_seconds: float
  videos: dict[str, np.ndarray]

  def summary(self) -> str:
    """One line: mean success and each task's rate."""
    tasks = ", ".join(f"{t} {s}/{n} ({s / max(n, 1):.0%})" for t, (s, n) in self.per_task.items())
    return f"success {self.mean_success:.1%} (mean over tasks): {tasks}"


def text_table(text_tokenizer, instructions: list[str], max_len: int) -> tuple[jax.Array, ...]:
  """Every env instruction tokenized: (ids int32 [I, L], mask bool [I, L]) indexed by id."""
  ids, mask = text_tokenizer.encode_batch(list(instructions), max_len)
  return jnp.asarray(ids, jnp.int32), jnp.asarray(mask, bool)


def make_policy_fn(policy, *, norm_stats: Mapping[str, Any], norm_mode: str,
                   text_ids: jax.Array, text_mask: jax.Array, camera_names: list[str],
                   sample_options: Mapping[str, Any] | None = None, replan_every: int = 1):
  """Adapts ``policy`` to a stateful env rollout (``make_rollout(..., stateful=True)``):
  ``fn(obs, rng, carry, params) -> (env actions float32 [N, D], carry)``.

  Args:
    policy: object with ``sample(params, observation, rng, **options) -> {"actions", "valid"}``.
    norm_stats: one dataset's stats (``{"action": ..., "state": ...}``).
    norm_mode: "zscore" | "quantile", as in training.
    text_ids, text_mask: from :func:`text_table` (row = instruction id).
    camera_names: cameras the policy reads (``image/<cam>`` in the env observation).
    sample_options: static head sampling options (e.g. ``num_steps``).
    replan_every: query the policy every this many control steps and execute the chunk's
      actions in between (1 = receding horizon; at most the chunk length H).
  """
  options = dict(sample_options or {})
  state_stats, action_stats = norm_stats["state"], norm_stats["action"]

  def chunk(obs: dict[str, jax.Array], rng: jax.Array, params: Any) -> jax.Array:
    """Env-space action chunk float32 [N, H, D] (NaN rows where the head's sample is invalid)."""
    n = obs["state"].shape[0]
    observation = {f"image/{c}": obs[f"image/{c}"][:, None] for c in camera_names}
    observation["obs_mask"] = jnp.ones((n, 1), bool)
    observation["state"] = normalization.normalize(obs["state"], state_stats, norm_mode)[:, None]
    observation["text_tokens"] = text_ids[obs["instruction_id"]]
    observation["text_mask"] = text_mask[obs["instruction_id"]]
    out = policy.sample(params, observation, rng, **options)
    actions = normalization.unnormalize(out["actions"], action_stats, norm_mode)
    return jnp.where(out["valid"][:, None, None], actions, jnp.nan)

  def fn(obs, rng, carry, params):
    """Stateful rollout policy: replans every ``replan_every`` steps, executing the chunk's
    actions in between (all envs step in lockstep, so the replanning branch is one scalar cond).
    ``carry`` = (chunk [N, H, D], steps since the last plan int32 [])."""
    planned, since = carry
    planned = jax.lax.cond(since % replan_every == 0, lambda: chunk(obs, rng, params),
                           lambda: planned)
    action = jnp.take(planned, since % replan_every, axis=1)
    return action, (planned, since + 1)

  return fn


class Evaluator:
  """Closed-loop evaluation of one policy architecture; compiled once, called with any params.

  ``evaluator(params, num_episodes_per_task=..., seed=...)`` runs batches of ``batch_envs``
  episodes, the enabled tasks tiled over each batch, until every task has
  ``num_episodes_per_task`` (the last batch may add a few more; all are reported). The params are an argument of the jitted
  rollout, so periodic evaluations during training reuse one compilation.
  """

  def __init__(self, env: TabletopEnv, policy, *, norm_stats: Mapping[str, Any], norm_mode: str,
               text_tokenizer, max_text_len: int, batch_envs: int,
               camera_names: list[str] | None = None, record_video: bool = True,
               sample_options: Mapping[str, Any] | None = None, replan_every: int = 1):
    if batch_envs < 1:
      raise ValueError(f"Evaluator: batch_envs={batch_envs} must be >= 1")
    cams = list(camera_names or env.camera_names)
    missing = [c for c in cams if c not in env.camera_names]
    if missing:
      raise ValueError(f"Evaluator: the policy reads cameras {missing} that the env does not "
                       f"render (env cameras: {env.camera_names})")
    self.env, self.policy, self.cameras = env, policy, cams
    self._state_stats, self._norm_mode = norm_stats["state"], norm_mode
    self.sample_options = dict(sample_options or {})
    self.text_ids, self.text_mask = text_table(text_tokenizer, env.instructions, max_text_len)
    horizon, dim = policy.action_horizon, policy.action_dim
    if not 1 <= replan_every <= horizon:
      raise ValueError(f"Evaluator: replan_every={replan_every} must be in [1, H={horizon}]")
    policy_fn = make_policy_fn(policy, norm_stats=norm_stats, norm_mode=norm_mode,
                               text_ids=self.text_ids, text_mask=self.text_mask,
                               camera_names=cams, sample_options=sample_options,
                               replan_every=replan_every)
    self._carry0 = (jnp.zeros((batch_envs, horizon, dim), jnp.float32),
                    jnp.zeros((), jnp.int32))
    # Tasks are tiled over the batch so every batch holds (about) equal episodes of each task.
    task_ids = np.resize(np.asarray(env.enabled_task_ids, np.int32), batch_envs)
    self._run = rollout_lib.make_rollout(env, policy_fn, batch_envs, record_obs=record_video,
                                         task_ids=task_ids, stateful=True)
    self._compiled = False

  def __call__(self, params: Any, *, num_episodes_per_task: int, seed: int,
               video_episodes: int = 0, print_fn=print) -> EvalResult:
    if num_episodes_per_task < 1:
      raise ValueError(f"evaluate: num_episodes_per_task={num_episodes_per_task} must be >= 1")
    env, cams = self.env, self.cameras
    enabled = [env.task_names[int(t)] for t in env.enabled_task_ids]
    results: list[dict[str, np.ndarray]] = []
    counts = dict.fromkeys(enabled, 0)
    frames: dict[str, list[np.ndarray]] = {t: [] for t in enabled}
    t_compile = t_run = 0.0
    batch_index = 0
    while min(counts.values()) < num_episodes_per_task:
      t0 = time.perf_counter()
      _, traj = self._run(jax.random.PRNGKey(seed + batch_index), self._carry0, params)
      traj = jax.device_get(traj)
      dt = time.perf_counter() - t0
      if not self._compiled:
        t_compile, self._compiled = dt, True
      else:
        t_run += dt
      batch_index += 1
      ep = {"success": np.asarray(traj["success"][-1]),
            "error": np.asarray(traj["error"]).any(0),
            "task_id": np.asarray(traj["task_id"]),
            "instruction_id": np.asarray(traj["instruction_id"])}
      results.append(ep)
      for i, t in enumerate(ep["task_id"]):
        name = env.task_names[int(t)]
        counts[name] += 1
        if len(frames[name]) < video_episodes and "obs" in traj:
          frames[name].append(np.asarray(traj["obs"][f"image/{cams[0]}"][:, i]))
      print_fn(f"  eval batch {batch_index}: episodes per task {counts}", flush=True)
    merged = {k: np.concatenate([r[k] for r in results]) for k in results[0]}
    per_task = {}
    for name in enabled:
      sel = merged["task_id"] == env.task_names.index(name)
      per_task[name] = (int(merged["success"][sel].sum()), int(sel.sum()))
    per_instruction: dict[str, tuple[int, int]] = {}
    for iid in np.unique(merged["instruction_id"]):
      sel = merged["instruction_id"] == iid
      per_instruction[env.instructions[int(iid)]] = (int(merged["success"][sel].sum()),
                                                     int(sel.sum()))
    mean = float(np.mean([s / n for s, n in per_task.values()]))
    videos = {t: np.concatenate(v) for t, v in frames.items() if v}
    return EvalResult(success=merged["success"], task_id=merged["task_id"],
                      instruction_id=merged["instruction_id"], error=merged["error"],
                      per_task=per_task, per_instruction=per_instruction, mean_success=mean,
                      seconds=t_run, compile_seconds=t_compile, videos=videos)

  def latency_ms(self, params: Any, repeats: int = 5) -> float:
    """Milliseconds per action chunk of one jitted ``policy.sample`` for one observation (what a
    robot waits for each time it replans), after compilation."""
    env, cams = self.env, self.cameras
    # Jitted: an eager MJX reset dispatches op by op (18.6 s measured, against 5 s to compile).
    state = jax.jit(env.reset)(jax.random.PRNGKey(0))
    obs = {f"image/{c}": state.obs[f"image/{c}"][None, None] for c in cams}
    obs["obs_mask"] = jnp.ones((1, 1), bool)
    # The normalized state, as the rollouts feed it (the timing does not depend on the values,
    # but the inputs should be what the policy sees).
    obs["state"] = normalization.normalize(state.obs["state"], self._state_stats,
                                           self._norm_mode)[None, None]
    obs["text_tokens"] = self.text_ids[state.info["instruction_id"]][None]
    obs["text_mask"] = self.text_mask[state.info["instruction_id"]][None]
    options = self.sample_options
    sample = jax.jit(lambda p, o, r: self.policy.sample(p, o, r, **options)["actions"])
    jax.block_until_ready(sample(params, obs, jax.random.PRNGKey(1)))
    t0 = time.perf_counter()
    for i in range(repeats):
      jax.block_until_ready(sample(params, obs, jax.random.PRNGKey(2 + i)))
    return (time.perf_counter() - t0) / repeats * 1e3


