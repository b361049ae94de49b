"""A learned chunk value over the policy's backbone features: the V-GPS-style steering scorer.

V-GPS (Nakamoto et al. 2024) re-ranks a generalist policy's sampled actions with a value
function learned offline. Here the value of an action chunk is regressed on what the MJX oracle
scores exactly (``steering.MJXOracle``): the env's return over the chunk's first ``lookahead``
actions, from the episode's current observation. Its input is the frozen policy's backbone
features of that observation (``Policy.features``: the mean of the VLM prefix's hidden states,
what the policy itself reads) and the chunk in the policy's normalized action units, so it costs
one backbone pass per decision and a small MLP per candidate, not a simulation or an imagination.

The training examples are every (episode, step) of RLDS episodes with executed actions (the
world model's datasets: experts with noise and policies, failures included), the chunk being the
next ``horizon`` executed actions and the target their summed reward over ``lookahead`` steps.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vla_jax.data import normalization
from vla_jax.envs import rollout as rollout_lib
from vla_jax.envs.tabletop import State
from vla_jax.world_model import data as data_lib


class ChunkValue(nn.Module):
  """``(features [B, W], chunk [B, H, D]) -> value float32 [B]`` (a 3-layer MLP)."""
  hidden: int = 256

  @nn.compact
  def __call__(self, features: jax.Array, chunk: jax.Array) -> jax.Array:
    x = jnp.concatenate([nn.LayerNorm()(features.astype(jnp.float32)),
                         chunk.reshape(chunk.shape[0], -1).astype(jnp.float32)], axis=-1)
    for _ in range(2):
      x = nn.gelu(nn.Dense(self.hidden)(x))
    return nn.Dense(1)(x)[:, 0]


class ValueModel:
  """The train loop's model: :class:`ChunkValue` regressed on ``{"features" [B, W], "chunk"
  [B, H, D], "target" [B]}`` (mean squared error)."""

  def __init__(self, hidden: int):
    self.module = ChunkValue(hidden)

  def init(self, rng, example_batch):
    return self.module.init(rng, jnp.asarray(example_batch["features"]),
                            jnp.asarray(example_batch["chunk"]))["params"]

  def loss(self, params, batch, rng):
    del rng
    pred = self.module.apply({"params": params}, batch["features"], batch["chunk"])
    err = pred - batch["target"]
    return jnp.mean(err ** 2), {"mae": jnp.mean(jnp.abs(err))}

  def apply(self, params, features, chunk):
    return self.module.apply({"params": params}, features, chunk)


def frame_observation(adapter: Any, image: jax.Array, state: jax.Array,
                      instruction_id: jax.Array) -> dict[str, jax.Array]:
  """The policy's observation [B, ...] of single frames (image uint8 [B, H, W, 3], state
  [B, S]), the history window filled with that frame as at an episode's first step."""
  b = state.shape[0]
  obs = {f"image/{adapter.cameras[0]}": image, "state": state,
         "step": jnp.zeros((b,), jnp.int32)}
  return adapter.observation(adapter.update_history(adapter.initial_history(b), obs),
                             instruction_id)


def value_examples(episodes: data_lib.Episodes, horizon: int, lookahead: int
                   ) -> dict[str, np.ndarray]:
  """Every step with ``horizon`` recorded actions after it: ``row`` int64 [M] (into the step
  arrays), ``episode`` int64 [M], ``chunk`` float32 [M, H, D] (executed, env units) and
  ``target`` float32 [M] (reward summed over the first ``lookahead`` of them)."""
  rows, eps = [], []
  for e in range(episodes.num_episodes):
    n = int(episodes.length[e]) - horizon + 1
    if n > 0:
      rows.append(int(episodes.start[e]) + np.arange(n))
      eps.append(np.full(n, e))
  row, episode = np.concatenate(rows), np.concatenate(eps)
  offsets = np.arange(horizon)
  chunk = episodes.actions[row[:, None] + offsets]
  target = episodes.reward[row[:, None] + offsets[:lookahead]].sum(-1)
  return {"row": row, "episode": episode, "chunk": chunk.astype(np.float32),
          "target": target.astype(np.float32)}


class ValueScorer:
  """Learned scorer (not privileged): ``scorer(state, chunks [B, N, H, D], key) -> [B, N]``, the
  chunk value of each candidate from the current observation (``state.obs``); ``-inf`` for a
  candidate with non-finite actions.

  Args:
    adapter: the evaluator's ``EnvPolicyAdapter`` (observation, normalization).
    policy_params: the params whose backbone features the value was trained on.
    value: a :class:`ValueModel`. value_params: its trained params.
  """

  def __init__(self, adapter: Any, policy_params: Any, value: ValueModel, value_params: Any):
    self.adapter, self.policy_params = adapter, policy_params
    self.value, self.value_params = value, value_params

  def __call__(self, state: State, chunks: jax.Array, key: jax.Array) -> jax.Array:
    del key
    b, n, h, d = chunks.shape
    obs = rollout_lib.policy_obs(state)
    cam = f"image/{self.adapter.cameras[0]}"
    observation = frame_observation(self.adapter, obs[cam], obs["state"], obs["instruction_id"])
    features = self.adapter.policy.features(self.policy_params, observation)
    finite = jnp.all(jnp.isfinite(chunks), axis=(2, 3)).reshape(b * n)
    norm = normalization.normalize(jnp.nan_to_num(chunks), self.adapter.action_stats,
                                   self.adapter.norm_mode).reshape(b * n, h, d)
    scores = self.value.apply(self.value_params, jnp.repeat(features, n, axis=0), norm)
    return jnp.where(finite, scores, -jnp.inf).reshape(b, n)
