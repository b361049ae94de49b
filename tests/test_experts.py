"""Scripted experts: >= 95% success over 64 episodes per task; latched success, horizon done,
dense reward; action noise diversifies demonstrations."""

import jax
import jax.numpy as jnp
import numpy as np

from vla_jax.envs import default_env_config, experts, make_env, rollout

PER_TASK = 64


def _env():
  cfg = default_env_config()
  cfg.cameras = ""   # the experts read privileged state; images are not needed here
  return make_env(cfg)


def _expert_rollout(env):
  task_ids = np.repeat(np.arange(len(env.task_names)), PER_TASK)
  run = rollout.make_seeded_rollout(env, rollout.make_rollout(
      env, rollout.expert_policy(env), record_obs=False, privileged=True))
  final, traj = run(2024 + np.arange(len(task_ids)), task_ids)
  return jax.device_get(final), jax.device_get(traj)


def test_experts():
  """One test (one compilation per pytest-xdist worker) with three checks."""
  env = _env()
  final, traj = _expert_rollout(env)
  _check_success_rates(env, final, traj)
  _check_latched_success_horizon_done_dense_reward(env, traj)
  _check_action_noise(env, jax.tree.map(lambda x: x[0], final))


def _check_success_rates(env, final, traj):
  rates = {}
  for k, name in enumerate(env.task_names):
    sel = np.asarray(traj["task_id"]) == k
    assert sel.sum() == PER_TASK
    rates[name] = float(np.asarray(final.success)[sel].mean())
  assert all(r >= 0.95 for r in rates.values()), rates
  assert not np.any(traj["error"])


def _check_latched_success_horizon_done_dense_reward(env, traj):
  succ = np.asarray(traj["success"])                       # [T, N]
  assert np.all(succ[1:] >= succ[:-1])                      # once true, stays true
  done = np.asarray(traj["done"])
  assert not done[:-1].any() and done[-1].all()             # done only at the horizon
  assert succ.shape[0] == env.horizon
  rew = np.asarray(traj["reward"])
  # Shaped reward rises along expert episodes, and the success bonus (+1) shows up.
  assert rew[-1].mean() > rew[0].mean() + 0.5
  np.testing.assert_array_less(rew[~succ], 1.0 + 1e-6)
  assert np.all(rew[succ] >= 1.0)


def _check_action_noise(env, state):
  act = jax.jit(lambda s, k, n: experts.expert_action(env, s, k, n))
  clean = act(state, jax.random.PRNGKey(0), 0.0)
  a, b = act(state, jax.random.PRNGKey(1), 0.2), act(state, jax.random.PRNGKey(2), 0.2)
  assert clean.shape == (4,) and clean.dtype == jnp.float32
  assert np.all(np.abs(np.asarray(clean)) <= 1.0)
  np.testing.assert_array_equal(clean, act(state, jax.random.PRNGKey(9), 0.0))  # deterministic
  assert not np.allclose(a, b) and np.abs(np.asarray(a) - np.asarray(clean)).max() < 1.0
