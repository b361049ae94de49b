"""Trajectory transforms (tf.data, one whole episode at a time, leading time axis T).

* :func:`history_window`: observation history of ``window`` frames ending at each step, with a pad
  mask that is False for frames before the episode start.
* :func:`action_chunks`: the ``horizon`` actions starting at each step, with a pad mask that is
  False for steps past the episode end.
* :func:`relabel_goals`: a goal frame drawn uniformly from the remaining steps of the episode.
* :func:`check_finite`: fails (naming the dataset and episode) on NaN/inf actions or states.

Padded entries repeat the nearest real entry (first frame / last action) rather than zeros, so a
consumer that forgets the mask sees plausible values; losses must use the masks.
"""

from __future__ import annotations

import tensorflow as tf


def _clipped_gather(x: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
  n = tf.shape(x)[0]
  return tf.gather(x, tf.clip_by_value(index, 0, n - 1))


def history_window(x: tf.Tensor, window: int) -> tuple[tf.Tensor, tf.Tensor]:
  """``x`` [T, ...] -> (windows [T, window, ...], mask bool [T, window]).

  ``windows[t, k] = x[t - window + 1 + k]``; ``mask[t, k]`` is False where that index is < 0 (the
  entry then repeats ``x[0]``).
  """
  t = tf.shape(x)[0]
  index = tf.range(t)[:, None] + tf.range(-window + 1, 1)[None, :]
  return _clipped_gather(x, index), index >= 0


def action_chunks(actions: tf.Tensor, horizon: int) -> tuple[tf.Tensor, tf.Tensor]:
  """``actions`` [T, D] -> (chunks [T, horizon, D], mask bool [T, horizon]).

  ``chunks[t, k] = actions[t + k]``; ``mask[t, k]`` is False where ``t + k >= T`` (the entry then
  repeats the last action).
  """
  t = tf.shape(actions)[0]
  index = tf.range(t)[:, None] + tf.range(horizon)[None, :]
  return _clipped_gather(actions, index), index < t


def relabel_goals(traj: dict, seed: tf.Tensor, keys) -> dict:
  """Adds ``goal/<key>`` = ``traj[key][g_t]`` with ``g_t`` uniform in ``[t, T - 1]`` per step.

  Args:
    traj: trajectory dict (leading axis T).
    seed: int32/int64 [2] stateless seed (derived from the dataset seed and episode index so the
      choice is reproducible).
    keys: keys to copy (e.g. ``["image/base", "state"]``).
  """
  t = tf.shape(traj["actions"])[0]
  u = tf.random.stateless_uniform([t], seed=seed)
  remaining = tf.cast(t - tf.range(t), tf.float32)
  goal = tf.range(t) + tf.cast(tf.floor(u * remaining), tf.int32)
  goal = tf.minimum(goal, t - 1)
  out = dict(traj)
  for k in keys:
    out[f"goal/{k}"] = tf.gather(traj[k], goal)
  return out


def is_finite(traj: dict) -> tf.Tensor:
  """bool []: True when every action and state value of the trajectory is finite."""
  return tf.logical_and(tf.reduce_all(tf.math.is_finite(traj["actions"])),
                        tf.reduce_all(tf.math.is_finite(traj["state"])))


def check_finite(traj: dict, dataset: str) -> dict:
  """Returns ``traj`` unchanged, or fails with an InvalidArgumentError naming dataset + episode."""
  ok = is_finite(traj)
  assert_op = tf.debugging.Assert(
      ok, [f"dataset '{dataset}': NaN or inf in actions/state of episode", traj["episode_index"]],
      name="nonfinite_episode")
  with tf.control_dependencies([assert_op]):
    return {k: tf.identity(v) for k, v in traj.items()}


def window_and_chunk(traj: dict, *, window: int, horizon: int, cameras) -> dict:
  """Turns a standardized, normalized trajectory into per-step training examples (still [T, ...]).

  Returns a dict with leading axis T: ``image/<cam>`` string [T, window], ``obs_mask`` bool
  [T, window], ``state`` f32 [T, window, S], ``actions`` f32 [T, horizon, D], ``action_mask`` bool
  [T, horizon], ``language_instruction`` string [T], ``episode_index`` int64 [T], ``step_index``
  int32 [T], and ``goal/*`` keys (one frame each) when present in ``traj``.
  """
  out = {}
  for cam in cameras:
    out[f"image/{cam}"], obs_mask = history_window(traj[f"image/{cam}"], window)
  out["state"], obs_mask = history_window(traj["state"], window)
  out["obs_mask"] = obs_mask
  out["actions"], out["action_mask"] = action_chunks(traj["actions"], horizon)
  out["language_instruction"] = traj["language_instruction"]
  t = tf.shape(traj["actions"])[0]
  out["episode_index"] = tf.fill([t], traj["episode_index"])
  out["step_index"] = tf.range(t)
  for k, v in traj.items():
    if k.startswith("goal/"):
      out[k] = v
  return out
