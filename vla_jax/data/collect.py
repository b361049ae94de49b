"""Demonstrations from the scripted experts, rolled out in batch, as RLDS episodes.

:func:`rollout_batch` runs ``N`` episodes at once (``jit(vmap(reset + lax.scan(expert, step)))``,
one compilation for every batch of the same size) and returns numpy arrays; :func:`episodes`
turns a split's rollouts into TFDS-encodable RLDS episodes, which the ``tabletop_demos`` TFDS
builder (:mod:`vla_jax.data.tabletop_demos`) writes.

Episode ``i`` of a split is reset from ``jax.random.PRNGKey(seed)`` with ``seed = base + i``
(``base`` = config seed for train, + 10_000_000 for validation), so every episode can be replayed
alone from its metadata: ``env.reset(jax.random.split(jax.random.PRNGKey(seed))[0])``.

An episode is kept from its first step until ``steps_after_success`` steps after the expert first
succeeds (so demos show the goal being held briefly rather than 30 idle steps), or the full
horizon when it never succeeds (dropped unless ``keep_failures``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from vla_jax.data import rlds_features

VALIDATION_SEED_OFFSET = 10_000_000


def default_collect_config() -> ml_collections.ConfigDict:
  """Collection settings (``config.collect`` of configs/collect_demos.py) + ``config.env``."""
  from vla_jax.envs import tabletop  # pylint: disable=g-import-not-at-top
  env_config = tabletop.default_env_config()
  return ml_collections.ConfigDict({
      "num_train_episodes": 1200,  # over the 4-task suite: ~300 per task (tasks drawn uniformly)
      "num_validation_episodes": 80,
      "seed": 0,
      "batch_envs": 200,  # episodes simulated at once (one compilation)
      "noise_scale": 0.2,  # expert action noise (std, fraction of the action range)
      # "clean": execute the noisy action but record the expert's noiseless one (DART, Laskey
      # et al. 2017): the demos visit perturbed states and show how the expert recovers from
      # them, and the labels carry no injected noise. "executed": record what was executed.
      "action_label": "clean",
      # {task: weight} for drawing each episode's task (absent tasks weigh 1; {} = uniform over
      # env.tasks): spend demonstrations where imitation is hard.
      "task_weights": {},
      "steps_after_success": 5,
      "keep_failures": False,
      "env": env_config,
  })


@dataclasses.dataclass
class RolloutBatch:
  """numpy arrays of ``N`` episodes of ``T = env.horizon`` steps.

  images: camera -> uint8 [N, T, H, W, 3] (observation before each action); state f32 [N, T, S];
  action f32 [N, T, D]; reward f32 [N, T] (after the action); success bool [N, T] (latched, after
  the action); error bool [N, T]; task_id, instruction_id int32 [N]; seed int64 [N].
  """
  images: dict[str, np.ndarray]
  state: np.ndarray
  action: np.ndarray
  reward: np.ndarray
  success: np.ndarray
  error: np.ndarray
  task_id: np.ndarray
  instruction_id: np.ndarray
  seed: np.ndarray


ACTION_LABELS = ("clean", "executed")


def task_probabilities(env, task_weights) -> np.ndarray | None:
  """float64 [len(env.enabled_task_ids)] task probabilities from ``{task name: weight}`` (absent
  tasks weigh 1), or None for uniform (empty weights). Raises ValueError naming a bad entry."""
  weights = dict(task_weights or {})
  if not weights:
    return None
  enabled = [env.task_names[int(t)] for t in env.enabled_task_ids]
  unknown = sorted(set(weights) - set(enabled))
  if unknown:
    raise ValueError(f"collect config 'task_weights': task(s) {unknown} are not among the env's "
                     f"tasks {enabled}")
  w = np.array([float(weights.get(t, 1.0)) for t in enabled])
  if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
    raise ValueError(f"collect config 'task_weights': {weights} must be finite, >= 0 and not "
                     "all zero")
  return w / w.sum()


def make_rollout_fn(env, expert_fn, noise_scale: float, action_label: str = "executed",
                    task_weights=None):
  """``seeds int [N] -> (traj, task_id, instruction_id)``: the expert in ``env`` through the one
  rollout (``vla_jax.envs.rollout``), episode ``i`` named by its seed (reset from
  ``split(PRNGKey(seed))[0]``, the expert's noise from ``[1]``).

  The env executes ``expert_fn(env, state, key, noise_scale=...)``; the recorded ``action`` is
  that executed action (``action_label="executed"``) or the same expert's noiseless action in
  the same state (``"clean"``, DART). ``task_weights``: see :func:`task_probabilities` (None/{}:
  the task is sampled by ``env.reset``; otherwise drawn per seed from the weights on the host).
  """
  from vla_jax.envs import rollout as rollout_lib  # pylint: disable=g-import-not-at-top
  if action_label not in ACTION_LABELS:
    raise ValueError(f"collect config 'action_label': '{action_label}' not in {ACTION_LABELS}")
  probs = task_probabilities(env, task_weights)
  enabled = np.asarray(env.enabled_task_ids, np.int32)
  expert = jax.vmap(lambda s, k, scale: expert_fn(env, s, k, noise_scale=scale),
                    in_axes=(0, 0, None))

  def policy(states, keys, policy_state):
    action = expert(states, keys, noise_scale)
    label = action if action_label == "executed" else expert(states, keys, 0.0)
    return action, policy_state, {"label": label.astype(jnp.float32)}

  run = rollout_lib.make_seeded_rollout(
      env, rollout_lib.make_rollout(env, policy, privileged=True))

  def fn(seeds):
    seeds = np.asarray(seeds)
    task_ids = None
    if probs is not None:  # One host draw per seed: the episode still depends on its seed alone.
      task_ids = np.array([enabled[np.random.default_rng(int(s)).choice(len(probs), p=probs)]
                           for s in seeds], np.int32)
    _, traj = run(jnp.asarray(seeds, jnp.int32), task_ids)
    return traj

  return fn


def rollout_batch(rollout_fn, env, seeds: np.ndarray) -> RolloutBatch:
  """Runs ``rollout_fn`` on int seeds [N] and moves the results to numpy."""
  return _fetch(rollout_fn(seeds), env, seeds)


def _fetch(traj, env, seeds: np.ndarray) -> RolloutBatch:
  """``rollout_fn``'s (possibly still running) trajectory for ``seeds`` as numpy (blocks).

  The rollout is time-major [T, N]; the batch is episode-major [N, T].
  """
  traj = jax.device_get(traj)
  em = lambda x: np.swapaxes(np.asarray(x), 0, 1)
  return RolloutBatch(
      images={c: em(traj["obs"][f"image/{c}"]) for c in env.camera_names},
      state=em(traj["obs"]["state"]).astype(np.float32),
      action=em(traj["extras"]["label"]).astype(np.float32),
      reward=em(traj["reward"]).astype(np.float32), success=em(traj["success"]).astype(bool),
      error=em(traj["error"]).astype(bool), task_id=np.asarray(traj["task_id"], np.int32),
      instruction_id=np.asarray(traj["instruction_id"], np.int32),
      seed=np.asarray(seeds, np.int64))


def episode_length(success: np.ndarray, steps_after_success: int) -> int:
  """Kept steps of one episode given its latched success flags bool [T]."""
  hits = np.flatnonzero(success)
  if not len(hits):
    return len(success)
  return int(min(hits[0] + 1 + steps_after_success, len(success)))


def to_episode(batch: RolloutBatch, i: int, env, steps_after_success: int,
               episode_id: int) -> dict:
  """Episode ``i`` of ``batch`` as a TFDS-encodable RLDS dict (see rlds_features)."""
  n = episode_length(batch.success[i], steps_after_success)
  text = env.instructions[int(batch.instruction_id[i])]
  success = bool(batch.success[i, n - 1])
  flags = rlds_features.rlds_flags(n)
  flags["is_terminal"][-1] = success  # a success ends the task; a horizon cut does not.
  obs = {f"image_{c}": batch.images[c][i, :n] for c in env.camera_names}
  obs["state"] = batch.state[i, :n]
  steps = {"observation": obs, "action": batch.action[i, :n], "reward": batch.reward[i, :n],
           "language_instruction": [text] * n, **flags}
  task_id = int(batch.task_id[i])
  meta = {"task": env.task_names[task_id], "task_id": task_id,
          "instruction_id": int(batch.instruction_id[i]), "seed": int(batch.seed[i]),
          "success": success, "episode_id": episode_id}
  return {"steps": steps, "episode_metadata": meta}


def split_seeds(collect_config, split: str) -> np.ndarray:
  """Reset seeds of every episode of ``split`` ("train" | "validation"), inside the ``demo``
  seed block (``vla_jax.eval.seeds``; a config whose seeds would leave it is refused)."""
  from vla_jax.eval import seeds as seeds_lib  # pylint: disable=g-import-not-at-top
  if split == "train":
    n, offset = collect_config.num_train_episodes, collect_config.seed
  elif split == "validation":
    n = collect_config.num_validation_episodes
    offset = collect_config.seed + VALIDATION_SEED_OFFSET
  else:
    raise KeyError(f"unknown split '{split}'; expected train or validation")
  if split == "train" and n > VALIDATION_SEED_OFFSET:
    raise ValueError(f"collect config: num_train_episodes={n} would reach the validation seeds "
                     f"(offset {VALIDATION_SEED_OFFSET})")
  return seeds_lib.DEMO.seeds(n, offset)


def episodes(collect_config, split: str, env, rollout_fn, stats: dict | None = None
             ) -> Iterator[tuple[int, dict]]:
  """Yields ``(key, episode)`` for ``split``, simulating ``batch_envs`` episodes at a time.

  ``stats`` (if given) receives per-task counts of kept/successful/dropped episodes.
  """
  cfg = collect_config
  seeds = split_seeds(cfg, split)
  bs = cfg.batch_envs
  kept = 0
  bar = tqdm.tqdm(total=len(seeds), desc=f"rollouts {split}", unit="ep")
  starts = list(range(0, len(seeds), bs))

  def dispatch(start):
    chunk = seeds[start:start + bs]
    padded = np.concatenate([chunk, np.full(bs - len(chunk), chunk[-1])])  # one static shape
    return chunk, padded, rollout_fn(padded)  # returns before the rollout has run

  pending = dispatch(starts[0]) if starts else None
  for k, start in enumerate(starts):
    chunk, padded, outputs = pending
    batch = _fetch(outputs, env, padded)
    if k + 1 < len(starts):
      # JAX dispatch is asynchronous: the next batch simulates while this one is encoded and
      # written (the writer is mostly single-threaded Python, the simulation XLA threads).
      pending = dispatch(starts[k + 1])
    for i in range(len(chunk)):
      task = env.task_names[int(batch.task_id[i])]
      if stats is not None:
        counts = stats.setdefault(split, {}).setdefault(task, {"episodes": 0, "success": 0,
                                                               "dropped": 0})
        counts["episodes"] += 1
        counts["success"] += int(batch.success[i].any())
      if batch.error[i].any() or not (cfg.keep_failures or batch.success[i].any()):
        if stats is not None:
          counts["dropped"] += 1
        continue
      yield kept, to_episode(batch, i, env, cfg.steps_after_success, episode_id=start + i)
      kept += 1
    bar.update(len(chunk))
  bar.close()
