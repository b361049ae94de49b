"""Closed-loop evaluation of any policy in the batched MJX task suite.

:class:`EnvPolicyAdapter` is the one adapter from env observations to the policy's batch contract
(every caller that runs a policy in the env uses it): the env's rendered ``image/<camera>``
uint8 [N, H, W, 3] and proprio ``state`` [N, S] go into a history window of the data's ``window``
frames (``image/<camera>`` [N, T, H, W, 3], ``state`` normalized with the dataset statistics
[N, T, S], ``obs_mask`` [N, T] False for the frames before the episode start, which repeat its
first frame, exactly as ``data.traj_transforms.history_window`` pads training windows), and the
episode's instruction is looked up in a table tokenized with the run's text tokenizer. The policy
returns a normalized action chunk [N, H, D]; its actions are unnormalized and executed, and the
policy is queried again every ``replan_every`` control steps, all inside one jitted ``lax.scan``
over time (``vla_jax.envs.rollout``).

A token head whose sequence does not decode (``valid`` False) yields NaN actions: the env then
flags ``error`` and ends that episode, which counts as a failure (never a silent zero action).

Seeds: :class:`Evaluator` runs the episodes of a seed block (``vla_jax.eval.seeds``): ``dev`` for
periodic evaluations and every tuning choice, ``test`` for the reported figure. Episode ``j`` of
a block has a fixed seed and task, so the episodes do not depend on ``batch_envs``.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vla_jax.data import normalization
from vla_jax.envs import rollout as rollout_lib
from vla_jax.envs.tabletop import TabletopEnv
from vla_jax.eval import intervals
from vla_jax.eval import seeds as seeds_lib


@dataclasses.dataclass
class EvalResult:
  """Outcome of an :class:`Evaluator` call.

  Attributes:
    block: the seed block ("dev" | "test"). seeds: int64 [E] episode seeds.
    success: bool [E] per episode (success within the horizon). task_id, instruction_id: int32 [E].
    error: bool [E] (NaN/invalid action or non-finite physics ended the episode).
    per_task: task name -> (successes, episodes). per_instruction: instruction -> same.
    mean_success: average over tasks of the per-task success rate (every task has the same
      episode count, so it equals the pooled rate).
    seconds: wall-clock of the rollouts after the first (compiling) call; compile_seconds: the
      first call of this evaluator (compilation + one batch), 0 when it was compiled before.
    videos: task name -> uint8 [T, H, W, 3] frames of the first ``video_episodes`` episodes.
  """
  block: str
  seeds: np.ndarray
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

  @property
  def totals(self) -> tuple[int, int]:
    """(successes, episodes) over all tasks."""
    return int(self.success.sum()), len(self.success)

  def summary(self) -> str:
    """One line: block, mean success with its 95% interval, each task's rate."""
    tasks = ", ".join(f"{t} {s}/{n}" for t, (s, n) in self.per_task.items())
    return (f"{self.block} block: success {intervals.format_rate(*self.totals)} "
            f"(mean over tasks, 95% Wilson interval): {tasks}")


def text_table(text_tokenizer, instructions: list[str], max_len: int) -> tuple[jax.Array, ...]:
  """Every env instruction tokenized: (ids int32 [I, L], mask bool [I, L]) indexed by id."""
  ids, mask = text_tokenizer.encode_batch(list(instructions), max_len)
  return jnp.asarray(ids, jnp.int32), jnp.asarray(mask, bool)


class EnvPolicyAdapter:
  """Env observations -> the policy's batch contract -> env actions (see module docstring).

  As a rollout policy (``vla_jax.envs.rollout.make_rollout``): ``adapter(obs, key, carry,
  params) -> (actions float32 [N, D], carry, {})`` with ``carry = adapter.initial_carry(N)``
  (the history window, the chunk being executed [N, H, D] and the steps since it was planned).

  Args:
    policy: object with ``sample(params, observation, rng, **options) -> {"actions", "valid"}``
      and ``action_horizon`` / ``action_dim``.
    norm_stats: one dataset's stats (``{"action": ..., "state": ...}``).
    norm_mode: "zscore" | "quantile", as in training.
    text_ids, text_mask: from :func:`text_table` (row = instruction id).
    camera_names: cameras the policy reads (``image/<cam>`` in the env observation).
    image_shape: (H, W) of the env's images. state_dim: S.
    window: history frames T, as the data pipeline gives them in training (``data.window``).
    sample_options: static head sampling options (e.g. ``num_steps``).
    replan_every: query the policy every this many control steps and execute the chunk's
      actions in between (1 = receding horizon; at most the chunk length H).
  """

  def __init__(self, policy, *, norm_stats: Mapping[str, Any], norm_mode: str,
               text_ids: jax.Array, text_mask: jax.Array, camera_names: list[str],
               image_shape: tuple[int, int], state_dim: int, window: int = 1,
               sample_options: Mapping[str, Any] | None = None, replan_every: int = 1):
    horizon = policy.action_horizon
    if not 1 <= replan_every <= horizon:
      raise ValueError(f"EnvPolicyAdapter: replan_every={replan_every} must be in [1, H={horizon}]")
    if window < 1:
      raise ValueError(f"EnvPolicyAdapter: window={window} must be >= 1")
    self.policy, self.cameras, self.window = policy, list(camera_names), int(window)
    self.image_shape, self.state_dim = tuple(image_shape), int(state_dim)
    self.norm_mode, self.replan_every = norm_mode, int(replan_every)
    self.state_stats, self.action_stats = norm_stats["state"], norm_stats["action"]
    self.text_ids, self.text_mask = text_ids, text_mask
    self.sample_options = dict(sample_options or {})

  def with_replan_every(self, replan_every: int) -> EnvPolicyAdapter:
    """This adapter querying the policy every ``replan_every`` control steps instead (RL can
    execute whole chunks while evaluation replans at every step)."""
    horizon = self.policy.action_horizon
    if not 1 <= replan_every <= horizon:
      raise ValueError(f"EnvPolicyAdapter: replan_every={replan_every} must be in [1, H={horizon}]")
    out = copy.copy(self)
    out.replan_every = int(replan_every)
    return out

  def with_sample_options(self, **options) -> EnvPolicyAdapter:
    """This adapter sampling with ``options`` added to its head options (e.g. more Euler steps
    for the candidates an expert-iteration search imitates)."""
    out = copy.copy(self)
    out.sample_options = {**self.sample_options, **options}
    return out

  def _frame(self, obs: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The current frame [N, ...] of what the history holds (images raw, state normalized)."""
    frame = {f"image/{c}": obs[f"image/{c}"] for c in self.cameras}
    frame["state"] = normalization.normalize(obs["state"], self.state_stats, self.norm_mode)
    return frame

  def initial_history(self, n: int) -> dict[str, jax.Array]:
    """An empty history window for ``n`` envs (overwritten at each episode's first step)."""
    h, w = self.image_shape
    t = self.window
    hist = {f"image/{c}": jnp.zeros((n, t, h, w, 3), jnp.uint8) for c in self.cameras}
    hist["state"] = jnp.zeros((n, t, self.state_dim), jnp.float32)
    hist["obs_mask"] = jnp.zeros((n, t), bool)
    return hist

  def update_history(self, history: dict[str, jax.Array], obs: dict[str, jax.Array]
                     ) -> dict[str, jax.Array]:
    """Appends the current frame; at an episode's first step (``obs["step"] == 0``) the window
    is that frame repeated, with ``obs_mask`` True only for the last slot."""
    frame = self._frame(obs)
    first = obs["step"] == 0  # [N]
    t = self.window
    out = {}
    for k, x in frame.items():
      pushed = jnp.concatenate([history[k][:, 1:], x[:, None]], axis=1)
      fresh = jnp.repeat(x[:, None], t, axis=1)
      out[k] = jnp.where(first.reshape((-1,) + (1,) * (x.ndim)), fresh, pushed)
    n = first.shape[0]
    fresh_mask = jnp.broadcast_to(jnp.arange(t) == t - 1, (n, t))
    pushed_mask = jnp.concatenate([history["obs_mask"][:, 1:], jnp.ones((n, 1), bool)], axis=1)
    out["obs_mask"] = jnp.where(first[:, None], fresh_mask, pushed_mask)
    return out

  def observation(self, history: dict[str, jax.Array], instruction_id: jax.Array
                  ) -> dict[str, jax.Array]:
    """The policy's observation (batch contract without actions) from a history window."""
    return {**history, "text_tokens": self.text_ids[instruction_id],
            "text_mask": self.text_mask[instruction_id]}

  def chunk(self, observation: dict[str, jax.Array], key: jax.Array, params: Any) -> jax.Array:
    """Env-space action chunk float32 [N, H, D] (NaN rows where the head's sample is invalid)."""
    out = self.policy.sample(params, observation, key, **self.sample_options)
    actions = normalization.unnormalize(out["actions"], self.action_stats, self.norm_mode)
    return jnp.where(out["valid"][:, None, None], actions, jnp.nan)

  def initial_carry(self, n: int) -> tuple[Any, ...]:
    """``(history, planned chunk [N, H, D], steps since planning int32 [])``."""
    return (self.initial_history(n),
            jnp.zeros((n, self.policy.action_horizon, self.policy.action_dim), jnp.float32),
            jnp.zeros((), jnp.int32))

  def __call__(self, obs, key, carry, params):
    """Replans every ``replan_every`` steps, executing the chunk's actions in between."""
    return self.step_with(obs, key, carry, lambda observation, k: self.chunk(observation, k,
                                                                              params))

  def step_with(self, obs, key, carry, plan):
    """One control step of :meth:`__call__` with another planner: ``plan(observation, key) ->
    env-space chunk [N, H, D]`` (e.g. best-of-N steering, ``vla_jax.world_model.steering``).
    All envs step in lockstep, so the replanning branch is one scalar cond."""
    history, planned, since = carry
    history = self.update_history(history, obs)
    observation = self.observation(history, obs["instruction_id"])
    planned = jax.lax.cond(since % self.replan_every == 0,
                           lambda: plan(observation, key), lambda: planned)
    action = jnp.take(planned, since % self.replan_every, axis=1)
    return action, (history, planned, since + 1), {}


class Evaluator:
  """Closed-loop evaluation of one policy architecture; compiled once, called with any params.

  ``evaluator(params, num_episodes_per_task=..., block="dev" | "test")`` runs the block's first
  ``num_episodes_per_task * num_tasks`` episodes (``vla_jax.eval.seeds.eval_episodes``) in
  batches of ``batch_envs`` (the last batch is padded and the padding discarded). The params are
  an argument of the jitted rollout, so periodic evaluations during training reuse one
  compilation.

  ``camera_names`` and ``window`` must be what the policy was trained on (the data's cameras and
  history window); ``vla_jax.jobs.checks`` verifies data, policy and env agree before anything
  compiles.

  ``steering``: None (the policy's own chunks), or ``steering(adapter) -> policy_fn``, a
  privileged rollout policy (it receives the env ``State``) with the adapter's carry, e.g.
  ``functools.partial(vla_jax.world_model.steering.BestOfN, scorer=..., num_candidates=8)``.
  """

  def __init__(self, env: TabletopEnv, policy, *, norm_stats: Mapping[str, Any], norm_mode: str,
               text_tokenizer, max_text_len: int, batch_envs: int, camera_names: list[str],
               window: int = 1, record_video: bool = True,
               sample_options: Mapping[str, Any] | None = None, replan_every: int = 1,
               steering: Callable[[EnvPolicyAdapter], Any] | None = None):
    if batch_envs < 1:
      raise ValueError(f"Evaluator: batch_envs={batch_envs} must be >= 1")
    missing = [c for c in camera_names if c not in env.camera_names]
    if missing:
      raise ValueError(f"Evaluator: the policy reads cameras {missing} that the env does not "
                       f"render (env cameras: {env.camera_names})")
    self.env, self.policy, self.batch_envs = env, policy, int(batch_envs)
    text_ids, text_mask = text_table(text_tokenizer, env.instructions, max_text_len)
    self.adapter = EnvPolicyAdapter(
        policy, norm_stats=norm_stats, norm_mode=norm_mode, text_ids=text_ids,
        text_mask=text_mask, camera_names=camera_names, image_shape=env.image_size,
        state_dim=env.state_dim, window=window, sample_options=sample_options,
        replan_every=replan_every)
    self._carry0 = self.adapter.initial_carry(self.batch_envs)
    policy_fn = self.adapter if steering is None else steering(self.adapter)
    self._run = rollout_lib.make_seeded_rollout(
        env, rollout_lib.make_rollout(env, policy_fn, record_obs=record_video,
                                      privileged=steering is not None),
        per_env_keys=False)
    self._compiled = False

  def __call__(self, params: Any, *, num_episodes_per_task: int, block: str = "dev",
               offset: int = 0, video_episodes: int = 0, print_fn=print) -> EvalResult:
    """Evaluates ``params`` on the first ``num_episodes_per_task`` per task of ``block``
    (skipping ``offset`` episodes); returns an :class:`EvalResult`."""
    env, bs = self.env, self.batch_envs
    enabled = [env.task_names[int(t)] for t in env.enabled_task_ids]
    all_seeds, all_tasks = seeds_lib.eval_episodes(block, env.enabled_task_ids,
                                                   num_episodes_per_task, offset)
    results: list[dict[str, np.ndarray]] = []
    frames: dict[str, list[np.ndarray]] = {t: [] for t in enabled}
    t_compile = t_run = 0.0
    cam = self.adapter.cameras[0] if self.adapter.cameras else None
    for start in range(0, len(all_seeds), bs):
      n = min(bs, len(all_seeds) - start)
      # The last batch is padded with its last episode (one static shape); padding is dropped.
      index = np.minimum(np.arange(start, start + bs), start + n - 1)
      t0 = time.perf_counter()
      _, traj = self._run(all_seeds[index], all_tasks[index], self._carry0, params)
      traj = jax.device_get(traj)
      dt = time.perf_counter() - t0
      if not self._compiled:
        t_compile, self._compiled = dt, True
      else:
        t_run += dt
      ep = {"success": np.asarray(traj["success"][-1])[:n],
            "error": np.asarray(traj["error"]).any(0)[:n],
            "task_id": np.asarray(traj["task_id"])[:n],
            "instruction_id": np.asarray(traj["instruction_id"])[:n]}
      results.append(ep)
      for i in range(n):
        name = env.task_names[int(ep["task_id"][i])]
        if len(frames[name]) < video_episodes and "obs" in traj and cam is not None:
          frames[name].append(np.asarray(traj["obs"][f"image/{cam}"][:, i]))
      print_fn(f"  eval ({block}) episodes {start + n}/{len(all_seeds)}", flush=True)
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
    return EvalResult(block=block, seeds=all_seeds, success=merged["success"],
                      task_id=merged["task_id"], instruction_id=merged["instruction_id"],
                      error=merged["error"], per_task=per_task, per_instruction=per_instruction,
                      mean_success=mean, seconds=t_run, compile_seconds=t_compile, videos=videos)

  def first_step(self, n: int) -> tuple[Any, dict[str, jax.Array]]:
    """``(state [n], policy observation [n, ...])`` of ``n`` envs reset from key 0, at an
    episode's first step (what latency and chunk statistics are measured on)."""
    adapter = self.adapter
    # Jitted: an eager MJX reset dispatches op by op (18.6 s measured, against 5 s to compile).
    state = jax.jit(jax.vmap(self.env.reset))(jax.random.split(jax.random.PRNGKey(0), n))
    obs = rollout_lib.policy_obs(state)
    return state, adapter.observation(adapter.update_history(adapter.initial_history(n), obs),
                                      obs["instruction_id"])

  def chunk_stats(self, params: Any, num_envs: int = 16) -> dict[str, float]:
    """What one action chunk costs, on the first steps of ``num_envs`` episodes: ``{"nfe":
    network evaluations per chunk (Euler / denoising steps, decoding steps or rounds; for a
    hybrid both heads'), "tokens": mean action tokens per chunk (0 for continuous heads)}``,
    and for the hybrid's ensemble ``"ensembled"``: the share of chunks that averaged both heads."""
    adapter = self.adapter
    _, observation = self.first_step(num_envs)
    out = jax.jit(lambda o, k, p: adapter.policy.sample(p, o, k, **adapter.sample_options))(
        observation, jax.random.PRNGKey(1), params)
    stats = {"nfe": float(out["nfe"]),
             "tokens": float(np.mean(out["num_tokens"])) if "num_tokens" in out else 0.0}
    if "ensembled" in out:
      stats["ensembled"] = float(np.mean(out["ensembled"]))
    return stats

  def latency_ms(self, params: Any, repeats: int = 5) -> float:
    """Milliseconds per action chunk of one jitted ``policy.sample`` for one observation (what a
    robot waits for each time it replans), after compilation."""
    _, observation = self.first_step(1)
    sample = jax.jit(self.adapter.chunk)
    jax.block_until_ready(sample(observation, jax.random.PRNGKey(1), params))
    t0 = time.perf_counter()
    for i in range(repeats):
      jax.block_until_ready(sample(observation, jax.random.PRNGKey(2 + i), params))
    return (time.perf_counter() - t0) / repeats * 1e3
