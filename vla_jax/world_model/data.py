"""World-model training data: RLDS episodes in memory, and windows of K control steps from them.

The world model learns dynamics, so it needs the actions that were *executed* (a demo dataset
collected with ``action_label="clean"`` records the expert's noiseless labels instead and is
refused), and failures as well as successes (``keep_failures=True``; see
:func:`vla_jax.jobs.wm_job.collect_datasets`).

Success per step is recovered from the env's reward: the reward after a step is the task term in
[0, 1) plus 1 once success holds (``vla_jax.envs.tasks``), so ``success_t = reward_t >= 1``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from vla_jax.data import rlds


@dataclasses.dataclass
class Episodes:
  """Episodes stored back to back (step arrays have the total step count N as leading axis).

  image: uint8 [N, H, W, 3] (the observation before each action); state f32 [N, S];
  actions f32 [N, D] (executed); reward f32 [N] (after the action); success bool [N] (after the
  action, latched); start, length int64 [E] (each episode's first row and step count);
  instruction_id, task_id int32 [E]; seed int64 [E] (the reset seed); source: the dataset path.
  """
  image: np.ndarray
  state: np.ndarray
  actions: np.ndarray
  reward: np.ndarray
  success: np.ndarray
  start: np.ndarray
  length: np.ndarray
  instruction_id: np.ndarray
  task_id: np.ndarray
  seed: np.ndarray
  source: str

  @property
  def num_episodes(self) -> int:
    return len(self.start)

  def episode(self, i: int) -> dict[str, np.ndarray]:
    """Episode ``i``'s step arrays ([T, ...])."""
    sl = slice(int(self.start[i]), int(self.start[i] + self.length[i]))
    return {"image": self.image[sl], "state": self.state[sl], "actions": self.actions[sl],
            "reward": self.reward[sl], "success": self.success[sl]}


def load_episodes(path: str, split: str, camera: str = "base") -> Episodes:
  """Reads a ``tabletop_demos`` RLDS dataset's ``split`` into memory.

  Raises:
    ValueError: the dataset records clean (not executed) action labels, or lacks the camera.
    KeyError: a missing split.
  """
  builder = rlds.open_builder(path)
  meta = builder.info.metadata or {}
  label = (meta.get("collect_config") or {}).get("action_label")
  if label != "executed":
    raise ValueError(f"world-model data '{path}': actions were recorded as '{label}' labels; the "
                     "world model needs the executed actions (collect with "
                     "action_label='executed')")
  steps = builder.info.features["steps"]
  key = f"image_{camera}"
  if key not in steps["observation"]:
    raise ValueError(f"world-model data '{path}': no camera '{camera}' (observation has "
                     f"{list(steps['observation'].keys())})")
  if split not in builder.info.splits:
    raise KeyError(f"world-model data '{path}' has no split '{split}'; it has "
                   f"{sorted(builder.info.splits.keys())}")
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          read_config=tfds.ReadConfig(interleave_cycle_length=1))
  # Each episode's steps stacked along time (RLDS nests them as a dataset).
  ds = ds.map(lambda ep: {"steps": ep["steps"].batch(rlds.MAX_STEPS).get_single_element(),
                          "episode_metadata": ep["episode_metadata"]})
  parts: dict[str, list] = {k: [] for k in ("image", "state", "actions", "reward")}
  lengths, iids, tids, seeds = [], [], [], []
  total = builder.info.splits[split].num_examples
  for ep in tqdm.tqdm(tfds.as_numpy(ds), total=total, desc=f"load {split}", unit="ep",
                      mininterval=5.0):
    st = ep["steps"]
    parts["image"].append(st["observation"][key])
    parts["state"].append(st["observation"]["state"].astype(np.float32))
    parts["actions"].append(st["action"].astype(np.float32))
    parts["reward"].append(st["reward"].astype(np.float32))
    lengths.append(len(st["action"]))
    md = ep["episode_metadata"]
    iids.append(md["instruction_id"])
    tids.append(md["task_id"])
    seeds.append(md["seed"])
  if not lengths:
    raise ValueError(f"world-model data '{path}' split '{split}' holds no episodes")
  cat = {k: np.concatenate(v) for k, v in parts.items()}
  length = np.asarray(lengths, np.int64)
  start = np.concatenate([[0], np.cumsum(length)[:-1]]).astype(np.int64)
  # Latched, as the env's flag: the reward is the task term [0, 1) plus 1 once successful.
  hit = cat["reward"] >= 1.0
  episode_of = np.repeat(np.arange(len(length)), length)
  first = np.full(len(length), np.iinfo(np.int64).max)
  np.minimum.at(first, episode_of[hit], np.flatnonzero(hit))
  success = np.arange(len(hit)) >= first[episode_of]
  return Episodes(image=cat["image"], state=cat["state"], actions=cat["actions"],
                  reward=cat["reward"], success=success, start=start, length=length,
                  instruction_id=np.asarray(iids, np.int32), task_id=np.asarray(tids, np.int32),
                  seed=np.asarray(seeds, np.int64), source=path)


def concatenate(parts: Sequence[Episodes]) -> Episodes:
  """One :class:`Episodes` holding every episode of ``parts`` in order."""
  if not parts:
    raise ValueError("concatenate: no episodes given")
  offsets = np.cumsum([0] + [len(p.reward) for p in parts[:-1]])
  return Episodes(
      image=np.concatenate([p.image for p in parts]),
      state=np.concatenate([p.state for p in parts]),
      actions=np.concatenate([p.actions for p in parts]),
      reward=np.concatenate([p.reward for p in parts]),
      success=np.concatenate([p.success for p in parts]),
      start=np.concatenate([p.start + o for p, o in zip(parts, offsets)]),
      length=np.concatenate([p.length for p in parts]),
      instruction_id=np.concatenate([p.instruction_id for p in parts]),
      task_id=np.concatenate([p.task_id for p in parts]),
      seed=np.concatenate([p.seed for p in parts]),
      source="+".join(p.source for p in parts))


def window_batch(episodes: Episodes, episode_index: np.ndarray, t0: np.ndarray, window: int,
                 camera: str = "base", context_t: np.ndarray | None = None
                 ) -> dict[str, np.ndarray]:
  """The world model's batch (``vla_jax.world_model.model``) of windows of ``window`` actions
  starting at step ``t0[i]`` of episode ``episode_index[i]`` (int arrays [B]), with the context
  frame of step ``context_t[i] <= t0[i]`` (default ``t0``); every window must lie inside its
  episode (``t0 + window < length``)."""
  episode_index, t0 = np.asarray(episode_index), np.asarray(t0)
  context_t = t0 if context_t is None else np.asarray(context_t)
  if np.any(t0 + window >= episodes.length[episode_index]) or np.any(t0 < 0):
    raise ValueError(f"window_batch: a window of {window} actions leaves its episode")
  if np.any(context_t > t0) or np.any(context_t < 0):
    raise ValueError("window_batch: a context frame is after its window's start or before its "
                     "episode's")
  first = episodes.start[episode_index]
  rows = first[:, None] + t0[:, None] + np.arange(window + 1)
  acts = rows[:, :-1]
  return {f"image/{camera}": episodes.image[rows], f"context/image/{camera}": episodes.image[first + context_t],
          "state": episodes.state[rows],
          "actions": episodes.actions[acts], "reward": episodes.reward[acts],
          "success": episodes.success[acts],
          "instruction_id": episodes.instruction_id[episode_index]}


def window_iterator(episodes: Episodes, *, window: int, batch_size: int, seed: int,
                    start_step: int = 0, camera: str = "base") -> Iterator[dict[str, np.ndarray]]:
  """Endless batches of uniformly drawn windows (every valid (episode, start) pair equally
  likely), each with a context frame drawn uniformly from its episode's steps up to the window's
  start (imagination runs from an episode's start for up to its horizon, further than one
  window). Batch ``n`` depends on ``(seed, n)`` only, so a resumed run continues the order."""
  starts_per_episode = np.maximum(episodes.length - window, 0)   # t0 in [0, length - window)
  if starts_per_episode.sum() == 0:
    raise ValueError(f"world-model data '{episodes.source}': no episode is longer than the "
                     f"window ({window} actions + 1 observation)")
  p = starts_per_episode / starts_per_episode.sum()
  step = start_step
  while True:
    rng = np.random.default_rng([seed, step])
    ep = rng.choice(len(p), size=batch_size, p=p)
    t0 = (rng.random(batch_size) * starts_per_episode[ep]).astype(np.int64)
    context_t = (rng.random(batch_size) * (t0 + 1)).astype(np.int64)
    yield window_batch(episodes, ep, t0, window, camera, context_t)
    step += 1
