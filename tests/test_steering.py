"""Best-of-N steering (vla_jax/world_model/steering.py) on the real paths: the MJX tabletop env
(reach, 16 px) and the micro flow policy of ``_rl_toy``.

Asserts: N copies of an MJX state stepped in a batch equal each env stepped alone; the MJX
oracle's scores are the returns an independent step-by-step simulation gives, read only the
first ``lookahead`` actions, and rank an undecodable (NaN) chunk last; best-of-1 is the policy's
own sample from the same key; best-of-N executes the argmax of the scorer over N
distinct samples; bad settings are named. That the oracle's steering earns more than the policy
alone in closed loop is asserted by tests/test_rl_exit.py (steered return > 1.2x plain), which
compiles the steered rollout anyway.
"""

import _rl_toy as toy
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vla_jax.envs import rollout as rollout_lib
from vla_jax.world_model import steering

B, N = 2, 3


@pytest.fixture(scope="module")
def setup():
  env = toy.make_env(done_on_success=False)
  policy = toy.make_policy(env)
  adapter = toy.make_adapter(env, policy)
  params = policy.init(jax.random.PRNGKey(0), adapter.observation(
      adapter.initial_history(1), jnp.zeros((1,), jnp.int32)))
  state = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(3), B))
  obs = rollout_lib.policy_obs(state)
  observation = adapter.observation(adapter.update_history(adapter.initial_history(B), obs),
                                    obs["instruction_id"])
  return env, adapter, params, state, observation, jax.jit(env.step)


def test_branched_copies_step_like_each_env_alone(setup):
  env, _, _, state, _, step_one = setup
  actions = jax.random.uniform(jax.random.PRNGKey(1), (B * N, env.action_dim), minval=-1,
                               maxval=1)
  batched = jax.jit(jax.vmap(env.step))(steering.branch(state, N), actions)
  for row in range(B * N):
    alone = step_one(jax.tree.map(lambda x: x[row // N], state), actions[row])
    for got, want in zip(jax.tree.leaves(jax.tree.map(lambda x: x[row], batched)),
                         jax.tree.leaves(alone), strict=True):
      np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64),
                                 rtol=1e-6, atol=1e-6)
  # The copies are independent: different actions took them to different places.
  ee = batched.obs["state"][:, :3]
  assert float(jnp.abs(ee[0] - ee[1]).max()) > 1e-3


def _toward_target(env, state, speed):
  """A chunk [B, H, D] that moves the pusher toward (speed > 0) or away from the target."""
  target = jax.vmap(lambda d, t: env.object_pos(d)[t])(state.data, state.info["target"])
  direction = target - state.obs["state"][:, :3]
  direction = direction / jnp.linalg.norm(direction, axis=-1, keepdims=True)
  step = jnp.concatenate([speed * direction, -jnp.ones((B, 1))], axis=-1)
  return jnp.repeat(step[:, None], toy.CHUNK, axis=1)


def test_oracle_scores_are_simulated_returns_of_the_first_lookahead_actions(setup):
  env, _, _, state, _, step_one = setup
  lookahead = 2
  toward, away = _toward_target(env, state, 1.0), _toward_target(env, state, -1.0)
  broken = toward.at[:, 1, 0].set(jnp.nan)
  chunks = jnp.stack([away, toward, broken], axis=1)  # [B, N, H, D]
  oracle = jax.jit(steering.MJXOracle(env, lookahead))
  scores = np.asarray(oracle(state, chunks, jax.random.PRNGKey(0)))
  assert scores.shape == (B, N)
  for b in range(B):
    for j in range(2):
      s, ret = jax.tree.map(lambda x: x[b], state), 0.0
      for t in range(lookahead):
        s = step_one(s, chunks[b, j, t])
        ret += float(s.reward)
      np.testing.assert_allclose(scores[b, j], ret, rtol=1e-5)
  assert (scores[:, 1] > scores[:, 0]).all(), scores  # toward the target beats away
  assert np.isneginf(scores[:, 2]).all()  # NaN in the lookahead: an error, never chosen
  # Actions after the lookahead are not simulated.
  later = chunks.at[:, :, lookahead:].set(0.5)
  np.testing.assert_array_equal(oracle(state, later, jax.random.PRNGKey(0)), scores)


def test_best_of_one_is_the_policys_own_sample(setup):
  _, adapter, params, state, observation, _ = setup
  key = jax.random.PRNGKey(7)
  one = steering.BestOfN(adapter, scorer=None, num_candidates=1)
  chunk, candidates, _ = jax.jit(one.plan)(state, observation, key, params)
  np.testing.assert_array_equal(chunk, jax.jit(adapter.chunk)(observation, key, params))
  assert candidates.shape == (B, 1) + chunk.shape[1:]


def test_best_of_n_executes_the_oracles_best_of_distinct_samples(setup):
  env, adapter, params, state, observation, _ = setup
  n = 8
  best_of = steering.BestOfN(adapter, scorer=steering.MJXOracle(env, toy.CHUNK),
                             num_candidates=n)
  chunk, candidates, scores = jax.jit(best_of.plan)(state, observation, jax.random.PRNGKey(5),
                                                    params)
  assert candidates.shape == (B, n, toy.CHUNK, env.action_dim) and scores.shape == (B, n)
  assert float(jnp.abs(candidates[:, 0] - candidates[:, 1]).max()) > 1e-3  # distinct samples
  assert float(jnp.ptp(scores, axis=1).min()) > 0  # and they score differently
  pick = np.asarray(jnp.argmax(scores, axis=1))
  np.testing.assert_array_equal(chunk, candidates[np.arange(B), pick])


def test_bad_settings_are_named(setup):
  env, adapter, _, state, _, _ = setup
  with pytest.raises(ValueError, match="num_candidates=0 must be >= 1"):
    steering.BestOfN(adapter, scorer=None, num_candidates=0)
  with pytest.raises(ValueError, match="lookahead=0 must be >= 1"):
    steering.MJXOracle(env, 0)
  chunks = jnp.zeros((B, 2, toy.CHUNK, env.action_dim))
  with pytest.raises(ValueError, match=f"lookahead=4 exceeds the chunk length H={toy.CHUNK}"):
    steering.MJXOracle(env, 4)(state, chunks, jax.random.PRNGKey(0))
