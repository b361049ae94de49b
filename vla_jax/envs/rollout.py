"""Jitted batched rollouts: ``lax.scan`` over time of vmapped env steps.

Used for expert demonstrations, videos and closed-loop evaluation of a policy. A policy is a
function ``policy_fn(obs, rng, *policy_args) -> actions`` float32 [N, D], where ``obs`` is the
batched env observation (``image/<camera>`` uint8 [N, H, W, 3], ``state`` float32 [N, S]) plus
``instruction_id`` / ``task_id`` / ``step`` int32 [N], so that a policy can look up the
instruction text (``env.instructions``) it conditions on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from vla_jax.envs import experts
from vla_jax.envs.tabletop import State, TabletopEnv

PolicyFn = Callable[[dict[str, jax.Array], jax.Array], jax.Array]


def policy_obs(state: State) -> dict[str, jax.Array]:
  """What a policy sees from a (batched) state: obs + instruction/task ids + step."""
  return {**state.obs, "instruction_id": state.info["instruction_id"],
          "task_id": state.info["task_id"], "step": state.info["step"]}


def expert_policy(env: TabletopEnv, noise_scale: float = 0.0) -> Callable[..., jax.Array]:
  """A batched expert as ``fn(states, rng) -> actions [N, D]`` (it reads privileged state)."""
  def fn(states: State, rng: jax.Array) -> jax.Array:
    keys = jax.random.split(rng, states.reward.shape[0])
    return jax.vmap(lambda s, k: experts.expert_action(env, s, k, noise_scale))(states, keys)
  return fn


def make_rollout(env: TabletopEnv, policy_fn: Callable[..., jax.Array], num_envs: int,
                 num_steps: int | None = None, record_obs: bool = True,
                 privileged: bool = False, task_ids: Any = None, stateful: bool = False
                 ) -> Callable[[jax.Array], tuple[State, dict[str, Any]]]:
  """Builds a jitted ``rollout(rng) -> (final_state, trajectory)``.

  Each of ``num_envs`` envs runs one episode of ``num_steps`` (default ``env.horizon``) control
  steps; an env that is ``done`` early (error, or success with ``done_on_success``) is frozen.

  Args:
    env: the env. policy_fn: ``fn(obs, rng) -> actions [N, D]`` (see module docstring), or with
      ``privileged=True`` ``fn(states, rng)`` taking the batched :class:`State` (experts).
    num_envs: N. num_steps: T. record_obs: keep the observations in the trajectory.
    task_ids: optional int [N] task family per env (e.g. a fixed count per task); default: each
      reset samples uniformly among the configured tasks.
    stateful: the policy carries a state across steps (e.g. an action chunk being executed):
      the rollout is then ``rollout(rng, policy_state, *policy_args)`` and the policy
      ``fn(obs, rng, policy_state, *policy_args) -> (actions [N, D], new_policy_state)``.

  Returns:
    A jitted ``rollout(rng, *policy_args)`` (extra arguments, e.g. the policy params, are passed
    on as ``policy_fn(obs, rng, *policy_args)`` and stay jit arguments, so new params reuse the
    compilation) returning the final batched State and a trajectory dict
    with time-major arrays: ``obs`` (dict, [T, N, ...], the observation each action was taken
    from; only if ``record_obs``), ``action`` float32 [T, N, D], ``reward`` float32 [T, N],
    ``success`` bool [T, N] (latched), ``done`` bool [T, N], ``error`` bool [T, N], and
    ``task_id`` / ``instruction_id`` int32 [N].
  """
  steps = env.horizon if num_steps is None else int(num_steps)
  v_step = jax.vmap(env.step)
  if task_ids is None:
    v_reset = jax.vmap(env.reset)
  else:
    task_ids = jnp.asarray(task_ids, jnp.int32)
    if task_ids.shape != (num_envs,):
      raise ValueError(f"make_rollout: task_ids must have shape ({num_envs},), "
                       f"got {task_ids.shape}")
    v_reset = lambda keys: jax.vmap(env.reset_task)(keys, task_ids)

  def one_step(carry, rng):
    state, policy_state, policy_args = carry
    seen = state if privileged else policy_obs(state)
    if stateful:
      act, policy_state = policy_fn(seen, rng, policy_state, *policy_args)
    else:
      act = policy_fn(seen, rng, *policy_args)
    act = act.astype(jnp.float32)
    new = v_step(state, act)
    frozen = state.done
    new = jax.tree.map(
        lambda n, o: jnp.where(jnp.reshape(frozen, frozen.shape + (1,) * (n.ndim - 1)), o, n),
        new, state)
    out = {"action": act, "reward": new.reward, "success": new.success, "done": new.done,
           "error": new.info["error"]}
    if record_obs:
      out["obs"] = state.obs
    return (new, policy_state, policy_args), out

  @jax.jit
  def rollout(rng: jax.Array, *args):
    policy_state, policy_args = (args[0], args[1:]) if stateful else (None, args)
    k_reset, k_run = jax.random.split(rng)
    state = v_reset(jax.random.split(k_reset, num_envs))
    (final, _, _), traj = jax.lax.scan(one_step, (state, policy_state, policy_args),
                                       jax.random.split(k_run, steps))
    traj["task_id"] = state.info["task_id"]
    traj["instruction_id"] = state.info["instruction_id"]
    return final, traj

  return rollout
