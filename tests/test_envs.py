"""The MJX tabletop env: jit/vmap shapes, determinism, batched == single, clipping, NaN actions,
task sampling and instructions.

The checks share compiled functions (compiling the MJX step dominates the cost), and pytest-xdist
would compile module fixtures again in every worker that runs one of the tests, so they run as
helpers of one test function.
"""

import _env_contract
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vla_jax.envs import default_env_config, make_env, scene, tasks

N = 4
HORIZON = 3


def _env():
  cfg = default_env_config()
  cfg.image_size = 32
  cfg.horizon = HORIZON
  return make_env(cfg)


def _batch_keys(rng):
  """N reset keys [N, 2] from one key (split N ways, first half of each split)."""
  return jax.vmap(jax.random.split)(jax.random.split(rng, N))[:, 0]


def _fns(env):
  return {"b_reset": jax.jit(lambda rng: jax.vmap(env.reset)(_batch_keys(rng))),
          "b_step": jax.jit(jax.vmap(env.step)),
          "reset": jax.jit(env.reset), "step": jax.jit(env.step)}


def _rollout3(fns):
  """Batched reset + HORIZON steps with fixed actions."""
  actions = jnp.array([[1.0, 0.5, -1.0, -1.0], [-1.0, 0.0, -0.5, 1.0], [0.0, -1.0, 0.0, 0.0],
                       [0.3, 0.3, 1.0, -1.0]])
  states = [fns["b_reset"](jax.random.PRNGKey(7))]
  for _ in range(HORIZON):
    states.append(fns["b_step"](states[-1], actions))
  return actions, states


def _assert_tree_equal(a, b, exact=True):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    if exact or not np.issubdtype(np.asarray(x).dtype, np.floating):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    else:
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5)


def _check_jit_vmap_shapes_and_dtypes(env, rollout3):
  _, states = rollout3
  s = states[1]
  assert s.obs["image/base"].shape == (N, 32, 32, 3) and s.obs["image/base"].dtype == jnp.uint8
  assert s.obs["state"].shape == (N, env.state_dim) and s.obs["state"].dtype == jnp.float32
  assert s.reward.shape == (N,) and s.reward.dtype == jnp.float32
  assert s.done.dtype == jnp.bool_ and s.success.dtype == jnp.bool_
  for k in ("task_id", "instruction_id", "step"):
    assert s.info[k].shape == (N,) and s.info[k].dtype == jnp.int32
  assert s.info["error"].dtype == jnp.bool_
  assert env.action_dim == 4 and env.state_dim == 4 and env.camera_names == ["base"]
  assert np.all(np.asarray(s.info["step"]) == 1)


def _check_determinism_for_a_fixed_rng(fns, rollout3):
  actions, states = rollout3
  again = fns["b_step"](fns["b_reset"](jax.random.PRNGKey(7)), actions)
  _assert_tree_equal(again, states[1])
  other = fns["b_reset"](jax.random.PRNGKey(8))
  assert not np.array_equal(np.asarray(other.obs["image/base"]),
                            np.asarray(states[0].obs["image/base"]))


def _check_batched_equals_single_env(fns, rollout3):
  actions, states = rollout3
  keys = _batch_keys(jax.random.PRNGKey(7))
  for i in range(N):
    single = fns["reset"](keys[i])
    row = jax.tree.map(lambda x, i=i: x[i], states[0])
    _assert_tree_equal(single.obs, row.obs, exact=False)
    single = fns["step"](single, actions[i])
    row = jax.tree.map(lambda x, i=i: x[i], states[1])
    np.testing.assert_allclose(single.obs["state"], row.obs["state"], atol=1e-5)
    img_diff = np.abs(np.asarray(single.obs["image/base"], int) - np.asarray(row.obs["image/base"]))
    assert (img_diff > 1).mean() < 0.002   # identical up to rare rounding at silhouettes
    np.testing.assert_allclose(single.reward, row.reward, atol=1e-5)
    assert bool(single.success) == bool(row.success)


def _check_actions_outside_limits_are_clipped(fns, rollout3):
  _, states = rollout3
  same = jax.tree.map(lambda x: jnp.stack([x[0]] * N), states[0])   # four copies of env 0
  wild = jnp.array([[3.0, -7.0, 0.5, 9.0], [1.0, -1.0, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0],
                    [0.0, 0.0, 0.0, 0.0]])
  out = fns["b_step"](same, wild)
  np.testing.assert_allclose(out.obs["state"][0], out.obs["state"][1], atol=1e-6)
  np.testing.assert_array_equal(out.obs["image/base"][0], out.obs["image/base"][1])
  moved = np.asarray(out.obs["state"][1, :3] - same.obs["state"][0, :3])
  np.testing.assert_allclose(moved, [0.03, -0.03, 0.015], atol=1e-5)  # max_speed 0.3 m/s, 10 Hz


def _check_nan_action_ends_episode_with_error_and_does_not_poison(env, fns, rollout3):
  _, states = rollout3
  single = fns["reset"](jax.random.PRNGKey(3))
  out = fns["step"](single, jnp.array([jnp.nan, 0.0, 0.0, 0.0]))
  assert bool(out.info["error"]) and bool(out.done)
  _assert_tree_equal(out.data.qpos, single.data.qpos)   # the physics did not move
  assert np.all(np.isfinite(np.asarray(out.obs["state"])))
  clean = jnp.zeros((N, 4))
  dirty = clean.at[2, 1].set(jnp.inf)
  a, b = fns["b_step"](states[0], clean), fns["b_step"](states[0], dirty)
  assert bool(b.done[2]) and not np.any(np.asarray(b.done)[[0, 1, 3]])
  for i in (0, 1, 3):
    np.testing.assert_array_equal(a.obs["image/base"][i], b.obs["image/base"][i])
    np.testing.assert_array_equal(a.obs["state"][i], b.obs["state"][i])
  assert np.all(np.isfinite(np.asarray(b.data.qpos)))


def _check_done_at_the_horizon(rollout3):
  _, states = rollout3
  assert np.all(np.asarray(states[-1].done)) and not np.any(np.asarray(states[-2].done))


def _many_resets(env, fns):
  """120 episodes from the already compiled single-env reset (stacked)."""
  keys = jax.random.split(jax.random.PRNGKey(0), 120)
  states = [fns["reset"](k) for k in keys]
  return env, jax.tree.map(lambda *x: jnp.stack(x), *states)


def _check_reset_is_uniform_over_tasks_and_instruction_names_the_target(many_resets):
  env, s = many_resets
  counts = np.bincount(np.asarray(s.info["task_id"]), minlength=4)
  assert np.all(counts > 12), counts   # 30 expected each; 12 is > 3.5 sigma below
  names = list(tasks.OBJECT_COLORS)
  palette = np.array(list(tasks.OBJECT_COLORS.values()))
  verbs = {"reach": ("touch", "reach", "move the gripper"), "push": ("push", "slide"),
           "pick_place": ("put", "pick up", "carry"), "lift": ("pick up", "lift", "raise")}
  for i in range(40):
    text = env.instructions[int(s.info["instruction_id"][i])]
    task = env.task_names[int(s.info["task_id"][i])]
    slot = int(s.info["target"][i])
    rgb = np.asarray(s.info["geom_rgb"][i, env.index.obj_geoms[slot]])
    color = names[int(np.argmin(np.abs(palette - rgb).sum(-1)))]
    noun = tasks.SHAPE_NOUNS[scene.slot_shape(slot)]
    assert f"{color} {noun}" in text and any(text.startswith(v) for v in verbs[task]), text
    assert np.asarray(s.info["active"][i]).sum() == 3
  # Active objects are apart from each other and off the zones.
  obj = np.asarray(jax.vmap(env.object_pos)(s.data))[:, :, :2]
  act = np.asarray(s.info["active"])
  zones = np.asarray(jax.vmap(env.zone_pos)(s.data))[:, :, :2]
  for i in range(40):
    p = obj[i][act[i]]
    d = np.linalg.norm(p[:, None] - p[None], axis=-1) + np.eye(len(p))
    assert d.min() > 2 * scene.OBJ_HALF
    assert np.linalg.norm(p[:, None] - zones[i][None], axis=-1).min() > tasks.ZONE_TOL + 0.02


def test_env_api():
  env = _env()
  fns = _fns(env)
  rollout3 = _rollout3(fns)
  _check_jit_vmap_shapes_and_dtypes(env, rollout3)
  _env_contract.check_env_contract(env, fns["b_reset"], fns["b_step"])   # shared with the WM
  _check_determinism_for_a_fixed_rng(fns, rollout3)
  _check_batched_equals_single_env(fns, rollout3)
  _check_actions_outside_limits_are_clipped(fns, rollout3)
  _check_nan_action_ends_episode_with_error_and_does_not_poison(env, fns, rollout3)
  _check_done_at_the_horizon(rollout3)
  _check_reset_is_uniform_over_tasks_and_instruction_names_the_target(_many_resets(env, fns))


def test_task_subset_and_config_errors():
  cfg = default_env_config()
  cfg.cameras = ""
  cfg.tasks = "push,lift"
  env = make_env(cfg)
  ids = jax.jit(jax.vmap(lambda k: env.reset(k).info["task_id"]))(
      jax.random.split(jax.random.PRNGKey(1), 32))
  assert set(np.asarray(ids).tolist()) == {1, 3}
  cfg.tasks = "push,fly"
  with pytest.raises(ValueError, match="tasks.*fly"):
    make_env(cfg)
  cfg.tasks, cfg.cameras = "push", "top"
  with pytest.raises(ValueError, match="cameras"):
    make_env(cfg)
