"""RL rollouts: the policy samples stochastically and records what an update re-scores.

:class:`RLActor` is a rollout policy (``vla_jax.envs.rollout.make_rollout``) built on the one
env-to-policy adapter (``vla_jax.eval.closed_loop.EnvPolicyAdapter``: history window, text,
normalization). At every decision (every ``replan_every`` control steps) it calls a sampler
``sample_fn(params, observation, key) -> {"actions" [N, H, D] normalized, "valid" [N],
"log_prob" [N], "sample": {...}}`` and its per-step ``extras`` record, for each env:

* ``history``: the policy's observation window (``image/<camera>`` uint8 [N, T, h, w, 3],
  ``state`` float32 [N, T, S], ``obs_mask`` [N, T]); the text is ``instruction_id``'s row of the
  adapter's table, so it is not stored;
* ``sample`` / ``log_prob`` (and ``value``, PPO's critic, when the sampler adds it): what the
  sampler returned at the last decision;
* ``decision`` bool [N]: this step drew a new chunk (False while executing the rest of one).

The rollout is a pure function of ``(params, env_state, policy_state, rng)``; RL start states
are named by seeds of the ``demo`` block (:func:`train_episodes`), never ``dev`` or ``test``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vla_jax.data import normalization
from vla_jax.envs import rollout as rollout_lib
from vla_jax.eval import seeds as seeds_lib
from vla_jax.eval.closed_loop import EnvPolicyAdapter

# RL start states come from the demo block, far past the demonstrations' seeds (they start at 0).
TRAIN_SEED_OFFSET = 50_000_000


class RLActor:
  """Stochastic rollout policy over an :class:`EnvPolicyAdapter` (see the module docstring).

  ``actor(obs, key, carry, params) -> (actions float32 [N, D], carry, extras)`` with ``carry =
  actor.initial_carry(n, params, example_observation)``.
  """

  def __init__(self, adapter: EnvPolicyAdapter, sample_fn: Callable[..., dict]):
    self.adapter, self.sample_fn = adapter, sample_fn

  def _record_template(self, params, n: int) -> dict:
    obs = self.adapter.observation(self.adapter.initial_history(n), jnp.zeros((n,), jnp.int32))
    out = jax.eval_shape(self.sample_fn, params, obs, jax.random.PRNGKey(0))
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), _recorded(out))

  def initial_carry(self, n: int, params: Any) -> tuple[Any, ...]:
    """``(history, planned chunk [N, H, D], steps since planning int32 [], last record)``."""
    history, planned, since = self.adapter.initial_carry(n)
    return history, planned, since, self._record_template(params, n)

  def __call__(self, obs, key, carry, params):
    adapter = self.adapter
    history, planned, since, record = carry
    history = adapter.update_history(history, obs)
    observation = adapter.observation(history, obs["instruction_id"])
    decide = since % adapter.replan_every == 0

    def plan():
      out = self.sample_fn(params, observation, key)
      actions = normalization.unnormalize(out["actions"], adapter.action_stats, adapter.norm_mode)
      actions = jnp.where(out["valid"][:, None, None], actions, jnp.nan)
      return actions, _recorded(out)

    planned, record = jax.lax.cond(decide, plan, lambda: (planned, record))
    action = jnp.take(planned, since % adapter.replan_every, axis=1)
    n = action.shape[0]
    extras = {"history": history, "decision": jnp.full((n,), decide), **record}
    return action, (history, planned, since + 1, record), extras


def _recorded(out: dict) -> dict:
  """What a decision records of the sampler's output (``value``: PPO's critic, when present)."""
  return {k: out[k] for k in ("sample", "log_prob", "value") if k in out}


def start_states(env, batch: dict):
  """The batched env states [N] an RL iteration starts from: ``batch["seeds"]`` int32 [N]
  reset (``vla_jax.envs.rollout.seed_keys``) with ``batch["task_ids"]`` int32 [N]."""
  reset_keys, _ = rollout_lib.seed_keys(batch["seeds"])
  return rollout_lib.reset_batch(env, reset_keys, batch["task_ids"])


def train_episodes(step: int, num_groups: int, group_size: int, task_ids: Sequence[int]
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Start states of RL iteration ``step``: ``(seeds int32 [num_groups * G], tasks int32 [...])``.

  Group ``g`` of iteration ``s`` is demo-block episode ``TRAIN_SEED_OFFSET + s * num_groups + g``
  with task ``task_ids[(s * num_groups + g) % len(task_ids)]``, repeated G times (contiguous),
  so the G rollouts of a group start from identical states and only the policy's sampling
  differs. A function of ``step`` alone: a resumed run sees the same start states.
  """
  block = seeds_lib.block("demo")
  index = step * num_groups + np.arange(num_groups)
  seeds = block.start + TRAIN_SEED_OFFSET + index
  if seeds[-1] >= block.stop:
    raise ValueError(f"train_episodes: iteration {step} runs past the demo seed block")
  tasks = np.asarray(task_ids, np.int32)[index % len(task_ids)]
  return (np.repeat(seeds, group_size).astype(np.int32),
          np.repeat(tasks, group_size).astype(np.int32))


def make_episode_iterator(num_groups: int, group_size: int, task_ids: Sequence[int]):
  """A ``make_data_iterator`` for the train loop: batches ``{"seeds", "task_ids"}`` int32
  [local rows] of :func:`train_episodes`, this process's rows of every global batch."""
  def factory(*, start_step, local_batch_size, process_index, process_count):
    total = num_groups * group_size
    if local_batch_size * process_count != total:
      raise ValueError(f"RL batch: {process_count} processes x {local_batch_size} envs != "
                       f"rl.num_groups x rl.group_size = {total} (train.batch_size)")
    lo = process_index * local_batch_size
    step = start_step
    while True:
      seeds, tasks = train_episodes(step, num_groups, group_size, task_ids)
      yield {"seeds": seeds[lo:lo + local_batch_size], "task_ids": tasks[lo:lo + local_batch_size]}
      step += 1
  return factory
