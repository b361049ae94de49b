"""The one batched rollout: ``lax.scan`` over time of vmapped env steps, with the reset outside.

Every caller (demonstration collection, videos, closed-loop evaluation, and later RL and steering)
runs episodes through :func:`make_rollout`. The rollout is a pure function of the batched start
state, so a group of G rollouts from one start state is just that state repeated G times
(``jax.tree.map(lambda x: jnp.repeat(x, G, 0), state)``), and a copy of any mid-episode state can
be rolled forward.

A policy is ``policy_fn(obs, key, policy_state, *policy_args) -> (actions float32 [N, D],
new_policy_state, extras)``: ``obs`` is the batched env observation (``image/<camera>`` uint8
[N, H, W, 3], ``state`` float32 [N, S]) plus ``instruction_id`` / ``task_id`` / ``step`` int32
[N] (so the policy can look up the instruction it conditions on), or the batched :class:`State`
itself for a privileged policy (the scripted experts); ``extras`` is a dict of per-env arrays
[N, ...] that the trajectory records at every step (log-probs, sampled noise, clean labels...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from vla_jax.envs import experts
from vla_jax.envs.tabletop import State, TabletopEnv

PolicyFn = Callable[..., tuple[jax.Array, Any, dict[str, jax.Array]]]


def policy_obs(state: State) -> dict[str, jax.Array]:
  """What a policy sees from a (batched) state: obs + instruction/task ids + step."""
  return {**state.obs, "instruction_id": state.info["instruction_id"],
          "task_id": state.info["task_id"], "step": state.info["step"]}


def seed_keys(seeds: Any) -> tuple[jax.Array, jax.Array]:
  """``(reset_keys, episode_keys)``, each [N, 2], of integer episode seeds int [N].

  An episode with seed ``s`` is reset from ``split(PRNGKey(s))[0]``; ``split(PRNGKey(s))[1]``
  is its own randomness (expert noise, policy sampling), see ``vla_jax.eval.seeds``.
  """
  pairs = jax.vmap(lambda s: jax.random.split(jax.random.PRNGKey(s)))(
      jnp.asarray(seeds, jnp.int32))
  return pairs[:, 0], pairs[:, 1]


def reset_batch(env: TabletopEnv, reset_keys: jax.Array, task_ids: Any = None) -> State:
  """Batched start states from reset keys [N, 2]; ``task_ids`` int [N] fixes each env's task
  family (default: each reset samples one among the configured tasks)."""
  if task_ids is None:
    return jax.vmap(env.reset)(reset_keys)
  task_ids = jnp.asarray(task_ids, jnp.int32)
  if task_ids.shape != reset_keys.shape[:1]:
    raise ValueError(f"reset_batch: task_ids shape {task_ids.shape} != ({reset_keys.shape[0]},) "
                     "(one task per reset key)")
  return jax.vmap(env.reset_task)(reset_keys, task_ids)


def per_env_step_keys(episode_keys: jax.Array, num_steps: int) -> jax.Array:
  """Time-major keys [T, N, 2]: env ``i`` uses ``split(episode_keys[i], T)[t]`` at step ``t``,
  so an episode's randomness depends on its own key only, not on the batch it ran in."""
  return jnp.swapaxes(jax.vmap(lambda k: jax.random.split(k, num_steps))(episode_keys), 0, 1)


def stateless(fn: Callable[..., jax.Array]) -> PolicyFn:
  """Wraps ``fn(obs, key, *args) -> actions`` as a policy with no state and no extras."""
  return lambda obs, key, policy_state, *args: (fn(obs, key, *args), policy_state, {})


def expert_policy(env: TabletopEnv, noise_scale: float = 0.0) -> PolicyFn:
  """The scripted experts as a privileged policy (``make_rollout(..., privileged=True)``).

  The key is one per env [N, 2] (see :func:`per_env_step_keys`) or one for the batch [2]
  (split over the envs).
  """
  def fn(states: State, key: jax.Array) -> jax.Array:
    n = states.reward.shape[0]
    keys = key if key.ndim == 2 else jax.random.split(key, n)
    return jax.vmap(lambda s, k: experts.expert_action(env, s, k, noise_scale))(states, keys)
  return stateless(fn)


def make_rollout(env: TabletopEnv, policy_fn: PolicyFn, *, record_obs: bool = True,
                 privileged: bool = False) -> Callable[..., tuple[State, dict[str, Any]]]:
  """Builds the jitted ``rollout(state, step_keys, policy_state, *policy_args)``.

  Args:
    env: the env. policy_fn: see the module docstring (``privileged=True``: it receives the
      batched :class:`State` instead of the observation).
    record_obs: keep the observations (``traj["obs"]``, [T, N, ...]) in the trajectory.

  The returned function takes a batched start ``state`` [N] (e.g. :func:`reset_batch`),
  ``step_keys`` with a leading time axis [T, ...] (one key per step, [T, 2], or one per env and
  step, [T, N, 2]; T is the number of control steps), the initial ``policy_state`` (any pytree,
  None for stateless policies) and extra ``policy_args`` (e.g. the params: they stay jit
  arguments, so new params reuse the compilation). An env that is ``done`` (error or horizon, or
  success with ``done_on_success``) is frozen for the remaining steps.

  It returns ``(final_state, trajectory)``, the trajectory time-major: ``obs`` (the observation
  each action was taken from, if ``record_obs``), ``action`` float32 [T, N, D], ``reward``
  float32 [T, N], ``success`` bool [T, N] (latched), ``done``, ``terminal`` (ended by an error, or
  before the horizon, e.g. by success with ``done_on_success``: no bootstrapping), ``truncated``
  (ended by the horizon)
  and ``error`` bool [T, N], ``valid`` bool [T, N] (the env was still running when it took this
  step), ``extras`` (the policy's, [T, N, ...]), and ``task_id`` / ``instruction_id`` int32 [N].
  """
  v_step = jax.vmap(env.step)

  def one_step(carry, key):
    state, policy_state, policy_args = carry
    seen = state if privileged else policy_obs(state)
    act, policy_state, extras = policy_fn(seen, key, policy_state, *policy_args)
    act = act.astype(jnp.float32)
    new = v_step(state, act)
    frozen = state.done
    new = jax.tree.map(
        lambda n, o: jnp.where(jnp.reshape(frozen, frozen.shape + (1,) * (n.ndim - 1)), o, n),
        new, state)
    error = new.info["error"]
    terminal = new.done & (error | (new.info["step"] < env.horizon))
    out = {"action": act, "reward": new.reward, "success": new.success, "done": new.done,
           "terminal": terminal, "truncated": new.done & ~terminal, "error": error,
           "valid": ~frozen, "extras": extras}
    if record_obs:
      out["obs"] = state.obs
    return (new, policy_state, policy_args), out

  @jax.jit
  def rollout(state: State, step_keys: jax.Array, policy_state: Any = None, *policy_args):
    (final, _, _), traj = jax.lax.scan(one_step, (state, policy_state, policy_args), step_keys)
    traj["task_id"] = state.info["task_id"]
    traj["instruction_id"] = state.info["instruction_id"]
    return final, traj

  return rollout


def make_seeded_rollout(env: TabletopEnv, rollout: Callable, num_steps: int | None = None,
                        per_env_keys: bool = True) -> Callable[..., tuple[State, dict[str, Any]]]:
  """Jitted ``run(seeds, task_ids, policy_state, *policy_args)``: episodes named by integer
  seeds int [N] (``vla_jax.eval.seeds``), reset and rolled out for ``num_steps`` (default the
  env horizon) in one XLA program; returns ``rollout``'s output.

  ``task_ids``: int [N] task family per episode, or None (sampled at reset). ``per_env_keys``:
  each env steps with keys split off its own episode key (:func:`per_env_step_keys`: the
  experts' noise depends on the seed alone); False: one key per step for the whole batch, split
  off the first episode's key (a policy that samples its batch from one key).
  """
  steps = env.horizon if num_steps is None else int(num_steps)

  @jax.jit
  def run(seeds, task_ids, policy_state=None, *policy_args):
    reset_keys, episode_keys = seed_keys(seeds)
    state = reset_batch(env, reset_keys, task_ids)
    keys = (per_env_step_keys(episode_keys, steps) if per_env_keys
            else jax.random.split(episode_keys[0], steps))
    return rollout(state, keys, policy_state, *policy_args)

  return run
