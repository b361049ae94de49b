"""Expert iteration (``rl.algorithm = "exit"``): its imitation examples are the data pipeline's
chunks of the steered episodes, and it improves a deliberately weakened policy in the real env
through the one train loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _rl_toy import make_adapter, make_env, make_policy, rl_config, run

from vla_jax.data import traj_transforms
from vla_jax.envs import rollout as rollout_lib
from vla_jax.rl import collect
from vla_jax.rl import config as rl_config_lib
from vla_jax.rl import expert_iteration


def _builder(env, policy, adapter, **overrides):
  rl = rl_config(**{"algorithm": "exit", "group_size": 1, "num_groups": 8, "exit_lookahead": 2,
                    **overrides})
  return expert_iteration.ExpertIterationStep(policy, env, adapter, rl)


@pytest.fixture(scope="module")
def plain():
  """The micro reach env and policy, and the best-of-1 (the policy's own samples) builder whose
  compiled rollout the tests share."""
  env = make_env(task="reach")
  policy = make_policy(env)
  adapter = make_adapter(env, policy)
  return env, policy, adapter, _builder(env, policy, adapter, exit_candidates=1, num_groups=32)


def test_examples_are_the_data_pipelines_chunks_of_successful_episodes(plain):
  env, policy, adapter, builder = plain
  params = jax.jit(policy.init)(jax.random.key(0), adapter.observation(
      adapter.initial_history(1), jnp.zeros((1,), jnp.int32)))
  seeds, tasks = collect.train_episodes(0, 32, 1, [int(i) for i in env.enabled_task_ids])
  _, traj = builder.collect(params, {"seeds": seeds, "task_ids": tasks}, jax.random.key(1))
  traj = jax.tree.map(lambda x: x[:, :8] if x.ndim >= 2 else x[:8], traj)  # 8 envs suffice
  t, n = traj["valid"].shape
  # Episodes of several lengths (done at success or error stops an env: a valid prefix) and
  # both outcomes, whatever this micro policy happened to do.
  lengths = np.array([t, t, 1, 2, t - 1, 3, t, 2])
  valid = np.arange(t)[:, None] < lengths[None]
  success = np.array([True, False, True, False, True, True, False, True])
  traj = {**traj, "valid": jnp.asarray(valid),
          "success": jnp.asarray(np.broadcast_to(success, (t, n)))}
  flat, eligible = builder.examples(traj)
  h = policy.action_horizon
  chunks = np.asarray(flat["actions"]).reshape(t, n, h, -1)
  masks = np.asarray(flat["action_mask"]).reshape(t, n, h)
  for e in range(n):
    length = lengths[e]
    # The reference: how the data pipeline chunks a demonstration's (normalized) actions.
    ref, ref_mask = traj_transforms.action_chunks(np.asarray(traj["action"][:length, e]), h)
    ref, ref_mask = np.asarray(ref), np.asarray(ref_mask)  # identity stats: raw = normalized
    np.testing.assert_array_equal(masks[:length, e], ref_mask)
    np.testing.assert_allclose(np.where(ref_mask[..., None], chunks[:length, e], 0),
                               np.where(ref_mask[..., None], ref, 0), rtol=1e-6)
    assert not masks[length:, e].any()
    np.testing.assert_array_equal(np.asarray(eligible).reshape(t, n)[:, e],
                                  valid[:, e] & success[e])
  # The observation each step's action was chosen from (the adapter's history window).
  assert flat["image/base"].shape == (t * n, adapter.window, *env.image_size, 3)
  reset_keys, _ = rollout_lib.seed_keys(seeds[:8])
  start = rollout_lib.reset_batch(env, reset_keys, tasks[:8])
  first_frames = np.asarray(flat["image/base"]).reshape((t, n) + flat["image/base"].shape[1:])
  np.testing.assert_array_equal(first_frames[0, :, -1], np.asarray(start.obs["image/base"]))


def _weakened_params(policy, adapter):
  """The micro policy with a bias on its action output that pushes the pusher off target."""
  example = adapter.observation(adapter.initial_history(1), jnp.zeros((1,), jnp.int32))
  params = jax.tree.map(np.asarray, jax.jit(policy.init)(jax.random.key(0), example))
  bias = np.array(params["action_out_proj"]["bias"])
  bias[1], bias[2] = 0.5, -0.5  # As colabs/rl_finetune.ipynb: every action moves back and up.
  params["action_out_proj"]["bias"] = bias
  return params


def test_expert_iteration_improves_a_weakened_policy(tmp_path, plain):
  env, policy, adapter, plain = plain
  params = _weakened_params(policy, adapter)
  rl = rl_config(algorithm="exit", num_groups=16, group_size=1, exit_candidates=8,
                 exit_lookahead=2, exit_success_only=False, updates_per_iteration=4,
                 decisions_per_update=32)
  result = run(str(tmp_path), rl=rl, params=params, num_steps=6, learning_rate=1e-2)

  # The plain policy (best of 1 = its own sample) on 32 fixed demo-block start states.
  seeds, tasks = collect.train_episodes(1000, 32, 1, [int(i) for i in env.enabled_task_ids])
  batch = {"seeds": seeds, "task_ids": tasks}

  def plain_return(p):
    _, traj = plain.collect(p, batch, jax.random.key(7))
    return float(jnp.sum(jnp.where(traj["valid"], traj["reward"], 0.0), axis=0).mean())

  before, after = plain_return(params), plain_return(jax.device_get(result.state.params))
  steered = np.mean([h["return_mean"] for h in result.history[:2]])
  # The search is better than the policy it searches over, and imitating it moves the policy.
  print(f"plain return {before:.3f} -> {after:.3f}; steered {steered:.3f}")
  assert steered > 1.2 * before, (steered, before)
  assert after > 1.5 * before, (before, after)


def test_exit_settings_are_checked():
  rl = rl_config(algorithm="exit", exit_candidates=0)
  with pytest.raises(ValueError, match="rl.exit_candidates=0"):
    rl_config_lib.check_rl_config(rl, "flow")
  # Expert iteration needs no likelihood: any head passes the likelihood checks.
  rl_config_lib.check_rl_config(rl_config(algorithm="exit"), "diffusion_token_head_x")


def test_demonstrations_enter_every_update_at_their_weight(plain):
  """``rl.exit_demo_weight``: each update's loss is the steered examples' imitation loss plus
  the weight times the demonstrations', and a step whose batch lacks them is refused."""
  env, policy, adapter, _ = plain
  builder = _builder(env, policy, adapter, exit_candidates=2, exit_demo_weight=0.5)
  n = 6
  states = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.key(3), n))
  history = adapter.update_history(adapter.initial_history(n),
                                   {**states.obs, "step": states.info["step"]})
  obs = adapter.observation(history, states.info["instruction_id"])
  chunk = (n, policy.action_horizon, env.action_dim)
  steered = {**obs, "actions": jax.random.normal(jax.random.key(4), chunk),
             "action_mask": jnp.ones(chunk[:2], bool)}
  demos = {**obs, "actions": jnp.full(chunk, 0.7), "action_mask": jnp.ones(chunk[:2], bool)}
  params = jax.jit(policy.init)(jax.random.key(0), obs)
  key = jax.random.key(5)
  loss, metrics = jax.jit(builder.loss)(params, steered, demos, key)
  k_steered, k_demo = jax.random.split(key)
  head_loss = jax.jit(policy.loss)
  want_s, _ = head_loss(params, steered, k_steered)
  want_d, _ = head_loss(params, demos, k_demo)
  np.testing.assert_allclose(loss, want_s + 0.5 * want_d, rtol=1e-5)
  np.testing.assert_allclose(metrics["demo_loss"], want_d, rtol=1e-6)
  np.testing.assert_allclose(jax.jit(builder.loss)(params, steered, None, key)[0], want_s,
                             rtol=1e-6)

  seeds, tasks = collect.train_episodes(0, 8, 1, [int(i) for i in env.enabled_task_ids])
  with pytest.raises(ValueError, match="no 'demo/<key>' rows"):
    builder.step(None, {"seeds": seeds, "task_ids": tasks}, None, optimizer=None,
                 schedule=None, trainable=".*")


def test_demonstration_rows_travel_in_the_rl_batch():
  def episodes(**kwargs):
    del kwargs
    while True:
      yield {"seeds": np.arange(2), "task_ids": np.zeros(2, np.int32)}

  def demos(**kwargs):
    assert kwargs == {"start_step": 3, "local_batch_size": 2, "process_index": 0,
                      "process_count": 1}
    step = 0
    while True:
      yield {"actions": np.full((2, 4, 1), step), "action_mask": np.ones((2, 4), bool)}
      step += 1

  it = expert_iteration.with_demos(episodes, demos)(start_step=3, local_batch_size=2,
                                                    process_index=0, process_count=1)
  next(it)
  batch = next(it)
  assert sorted(batch) == ["demo/action_mask", "demo/actions", "seeds", "task_ids"]
  demo = expert_iteration.demo_batch(batch)
  assert sorted(demo) == ["action_mask", "actions"] and np.all(demo["actions"] == 1)
  assert expert_iteration.demo_batch({"seeds": 1}) == {}
