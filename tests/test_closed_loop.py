"""The env -> policy adapter: observation contract, history window, unnormalization, replanning,
invalid rows.

The full rollout (env + policy in one jitted scan) runs in tests/test_main_job.py; here the
adapter runs step by step with a stand-in policy so the test needs no env compilation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vla_jax.eval import closed_loop

H, D, S, N = 4, 2, 3, 2
STATS = {
    "action": {"mean": [1.0, -1.0], "std": [2.0, 0.5], "min": [0, 0], "max": [0, 0],
               "q01": [0, 0], "q99": [0, 0], "mask": [True, False]},
    "state": {"mean": [0.0, 1.0, 2.0], "std": [1.0, 2.0, 4.0], "min": [0] * 3, "max": [0] * 3,
              "q01": [0] * 3, "q99": [0] * 3, "mask": [True] * 3},
}


class _Policy:
  """Returns chunk[b, h] = (first normalized state value + h, instruction id); records inputs."""
  action_horizon, action_dim = H, D

  def __init__(self, valid):
    self.valid = valid
    self.seen = []

  def sample(self, params, observation, rng):
    self.seen.append(observation)
    base = observation["state"][:, 0, 0] * params
    h = jnp.arange(H, dtype=jnp.float32)
    actions = jnp.stack([base[:, None] + h, jnp.broadcast_to(
        observation["text_tokens"][:, :1].astype(jnp.float32), (N, H))], axis=-1)
    return {"actions": actions, "valid": jnp.asarray(self.valid)}


def _obs(step):
  return {"image/base": jnp.full((N, 8, 8, 3), step, jnp.uint8),
          "state": jnp.full((N, S), float(step)), "instruction_id": jnp.array([1, 0]),
          "step": jnp.full((N,), step, jnp.int32)}


def _adapter(policy, replan_every, window=1):
  ids = jnp.array([[7, 0], [9, 5]], jnp.int32)
  mask = jnp.array([[True, False], [True, True]])
  return closed_loop.EnvPolicyAdapter(
      policy, norm_stats=STATS, norm_mode="zscore", text_ids=ids, text_mask=mask,
      camera_names=["base"], image_shape=(8, 8), state_dim=S, window=window,
      replan_every=replan_every)


def test_observation_contract_and_unnormalized_actions():
  policy = _Policy(valid=[True, True])
  fn = _adapter(policy, replan_every=1)
  with jax.disable_jit():  # Eager: the stand-in policy can keep the observation it was given.
    action, _, _ = fn(_obs(3), jax.random.key(0), fn.initial_carry(N), 1.0)
  seen = policy.seen[0]
  assert seen["image/base"].shape == (N, 1, 8, 8, 3) and seen["image/base"].dtype == jnp.uint8
  assert seen["obs_mask"].shape == (N, 1) and bool(seen["obs_mask"].all())
  np.testing.assert_allclose(seen["state"][:, 0], [[3.0, 1.0, 0.25]] * N)  # (x - mean) / std
  np.testing.assert_array_equal(seen["text_tokens"], [[9, 5], [7, 0]])  # rows by instruction id
  np.testing.assert_array_equal(seen["text_mask"], [[True, True], [True, False]])
  # Dim 0 normalized: 3.0 * std 2 + mean 1 = 7; dim 1 raw (mask False): the token value.
  np.testing.assert_allclose(action, [[7.0, 9.0], [7.0, 7.0]])


def test_replans_every_k_steps_and_executes_the_chunk_in_between():
  policy = _Policy(valid=[True, True])
  receding = _adapter(policy, replan_every=1)
  adapter = receding.with_replan_every(2)  # RL's way to execute chunks; evaluation keeps 1.
  assert receding.replan_every == 1
  fn, carry = jax.jit(adapter), adapter.initial_carry(N)
  firsts = []
  for step in range(4):
    action, carry, _ = fn(_obs(step), jax.random.key(step), carry, 1.0)
    firsts.append(float(action[0, 0]))
  # Plans at steps 0 and 2 from that step's state s: action h of the chunk = (s + h) * 2 + 1.
  assert firsts == [1.0, 3.0, 5.0, 7.0]
  assert int(carry[2]) == 4


def test_history_window_matches_training_padding():
  """Window 3: the first step repeats its frame with obs_mask [F, F, T], as training pads."""
  policy = _Policy(valid=[True, True])
  adapter = _adapter(policy, replan_every=1, window=3)
  carry = adapter.initial_carry(N)
  with jax.disable_jit():
    for step in range(4):
      _, carry, _ = adapter(_obs(step), jax.random.key(0), carry, 1.0)
  first, last = policy.seen[0], policy.seen[-1]
  assert first["image/base"].shape == (N, 3, 8, 8, 3)
  np.testing.assert_array_equal(first["obs_mask"], [[False, False, True]] * N)
  np.testing.assert_array_equal(first["image/base"][:, :, 0, 0, 0], [[0, 0, 0]] * N)
  np.testing.assert_array_equal(last["obs_mask"], [[True, True, True]] * N)
  np.testing.assert_array_equal(last["image/base"][:, :, 0, 0, 0], [[1, 2, 3]] * N)
  np.testing.assert_allclose(last["state"][0, :, 0], [1.0, 2.0, 3.0])  # oldest first
  # A new episode (step 0 again) starts a fresh window.
  with jax.disable_jit():
    adapter(_obs(0), jax.random.key(0), carry, 1.0)
  np.testing.assert_array_equal(policy.seen[-1]["obs_mask"], [[False, False, True]] * N)


def test_invalid_samples_become_nan_never_zero():
  fn = _adapter(_Policy(valid=[True, False]), replan_every=1)
  action, _, _ = fn(_obs(1), jax.random.key(0), fn.initial_carry(N), 1.0)
  assert np.isfinite(np.asarray(action[0])).all() and np.isnan(np.asarray(action[1])).all()


def test_replan_every_must_fit_the_chunk():
  with pytest.raises(ValueError, match=r"replan_every=5 must be in \[1, H=4\]"):
    _adapter(_Policy([True]), replan_every=5)
  with pytest.raises(ValueError, match=r"replan_every=0 must be in \[1, H=4\]"):
    _adapter(_Policy([True]), replan_every=1).with_replan_every(0)
