"""The env interface contract (DESIGN.md, "Env interface"), checked the same way for every env:
the MJX tabletop env (tests/test_envs.py) and a world model behind it (tests/test_world_model.py).

``check_env_contract(env, b_reset, b_step)`` takes the env and its jitted batched functions
(``b_reset(rng) -> State [N]``, ``b_step(State [N], actions [N, D]) -> State [N]``, compiled by
the caller so a module compiles them once) and asserts: observation keys, shapes and dtypes
(one image per ``env.camera_names``, the proprio state), the scalar fields' dtypes; determinism
for a fixed key; the step counter; ``done`` exactly at ``env.horizon``; latched success; a
non-finite action ends only its own env, with an error and finite observations.
"""

import jax
import jax.numpy as jnp
import numpy as np


def _assert_tree_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def check_env_contract(env, b_reset, b_step, rng=jax.random.PRNGKey(11)):
  state = b_reset(rng)
  n = state.reward.shape[0]
  h, w = env.image_size
  for s in (state, b_step(state, jnp.zeros((n, env.action_dim)))):
    assert sorted(s.obs) == sorted([f"image/{c}" for c in env.camera_names] + ["state"])
    for cam in env.camera_names:
      img = s.obs[f"image/{cam}"]
      assert img.shape == (n, h, w, 3) and img.dtype == jnp.uint8, (cam, img.shape, img.dtype)
    assert s.obs["state"].shape == (n, env.state_dim) and s.obs["state"].dtype == jnp.float32
    assert s.reward.shape == (n,) and s.reward.dtype == jnp.float32
    assert s.done.dtype == jnp.bool_ and s.success.dtype == jnp.bool_
    for k in ("task_id", "instruction_id", "step"):
      assert s.info[k].shape == (n,) and s.info[k].dtype == jnp.int32, k
    assert s.info["error"].dtype == jnp.bool_
    assert np.all(np.isin(np.asarray(s.info["task_id"]), np.asarray(env.enabled_task_ids)))
    assert np.all(np.asarray(s.info["instruction_id"]) < len(env.instructions))

  # Determinism for a fixed key, and the step counter.
  actions = jax.random.uniform(jax.random.PRNGKey(1), (n, env.action_dim), minval=-1, maxval=1)
  _assert_tree_equal(b_reset(rng), state)
  one = b_step(state, actions)
  _assert_tree_equal(b_step(b_reset(rng), actions), one)
  assert np.all(np.asarray(one.info["step"]) == 1)

  # done exactly at the horizon; success is latched.
  states = [state]
  for t in range(env.horizon):
    states.append(b_step(states[-1], actions * (-1) ** (t // 3)))
  done = np.stack([np.asarray(s.done) for s in states])
  assert not done[:-1].any() and done[-1].all()
  success = np.stack([np.asarray(s.success) for s in states[1:]])
  assert np.all(success[1:] >= success[:-1])

  # A non-finite action ends its env only, with an error; observations stay finite.
  dirty = jnp.zeros((n, env.action_dim)).at[0, 1].set(jnp.nan)
  clean, bad = b_step(state, jnp.zeros((n, env.action_dim))), b_step(state, dirty)
  assert bool(bad.info["error"][0]) and bool(bad.done[0])
  assert not np.asarray(bad.done[1:]).any() and not np.asarray(bad.info["error"][1:]).any()
  assert np.isfinite(np.asarray(bad.obs["state"])).all()
  for k in bad.obs:
    np.testing.assert_array_equal(np.asarray(bad.obs[k][1:]), np.asarray(clean.obs[k][1:]))
