"""GRPO's math on hand-made groups, the clipped surrogate, and the RL start states."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vla_jax.rl import collect, grpo
from vla_jax.rl import config as rl_config_lib
from vla_jax.rl import step as rl_step


def test_group_advantages_match_the_formula_and_drop_constant_groups():
  returns = np.array([1, 0, 0, 1,   1, 1, 1, 1,   0, 0, 0, 0,   0.5, 2.0, 1.0, 0.5], np.float32)
  adv, kept = grpo.group_advantages(jnp.asarray(returns), group_size=4)
  want, want_kept = [], []
  for g in returns.reshape(4, 4):
    std = g.std()
    want += list((g - g.mean()) / (std + 1e-6) if std > 0 else np.zeros(4))
    want_kept += [std > 0] * 4
  np.testing.assert_allclose(adv, want, rtol=1e-6)
  np.testing.assert_array_equal(kept, want_kept)
  # All-success and all-failure groups carry no signal: dropped, advantage 0.
  assert not kept[4:12].any() and np.all(np.asarray(adv)[4:12] == 0)
  np.testing.assert_allclose(adv[:4], [1, -1, -1, 1], rtol=1e-5)  # Binary 50/50: +-1.
  with pytest.raises(ValueError, match="groups of 3"):
    grpo.group_advantages(jnp.zeros(8), group_size=3)


def test_clipped_surrogate_is_asymmetric():
  log_ratio = jnp.log(jnp.array([1.5, 1.5, 0.5, 0.5, 1.0]))
  adv = jnp.array([1.0, -1.0, 1.0, -1.0, 2.0])
  w = jnp.array([1.0, 1.0, 1.0, 1.0, 0.0])  # The last decision is not in the loss.
  loss, m = grpo.clipped_surrogate(log_ratio, adv, w, clip_low=0.2, clip_high=0.28)
  # min(r A, clip(r, 0.8, 1.28) A): 1.28, -1.5, 0.5, -0.8.
  np.testing.assert_allclose(loss, -(1.28 - 1.5 + 0.5 - 0.8) / 4, rtol=1e-6)
  np.testing.assert_allclose(m["clip_fraction"], 1.0)  # Every weighted ratio is outside.
  g = jax.grad(lambda lr: grpo.clipped_surrogate(lr, adv, w, 0.2, 0.28)[0])(log_ratio)
  # Clipped terms pass no gradient; unclipped ones pass -w r A / sum(w).
  np.testing.assert_allclose(g, [0.0, 1.5 / 4, -0.5 / 4, 0.0, 0.0], atol=1e-6)


def test_k3_kl_is_zero_at_equal_policies_and_positive_otherwise():
  lp = jnp.array([-1.0, -2.0, -3.0])
  w = jnp.ones(3)
  assert float(grpo.k3_kl(lp, lp, w)) == 0.0
  assert float(grpo.k3_kl(lp, lp + 0.5, w)) > 0


def test_train_episodes_repeat_each_start_state_per_group_and_resume():
  seeds, tasks = collect.train_episodes(3, num_groups=2, group_size=4, task_ids=[0, 2])
  np.testing.assert_array_equal(seeds[:4], seeds[0])
  np.testing.assert_array_equal(seeds[4:], seeds[4])
  assert seeds[0] != seeds[4] and seeds[0] >= collect.TRAIN_SEED_OFFSET
  np.testing.assert_array_equal(tasks, [0] * 4 + [2] * 4)
  it = collect.make_episode_iterator(2, 4, [0, 2])(start_step=3, local_batch_size=4,
                                                  process_index=1, process_count=2)
  np.testing.assert_array_equal(next(it)["seeds"], seeds[4:])
  with pytest.raises(ValueError, match="rl.num_groups x rl.group_size"):
    next(collect.make_episode_iterator(2, 4, [0])(start_step=0, local_batch_size=3,
                                                 process_index=0, process_count=2))


def test_pick_draws_distinct_eligible_decisions():
  eligible = jnp.zeros(50, bool).at[jnp.array([3, 7, 11])].set(True)
  idx, w = rl_step.pick_decisions(jax.random.key(0), eligible, 5)
  assert len(set(np.asarray(idx).tolist())) == 5
  assert set(np.asarray(idx)[np.asarray(w) > 0].tolist()) == {3, 7, 11}


def test_rl_config_errors_name_the_key():
  rl = rl_config_lib.default_rl_config()
  rl_config_lib.check_rl_config(rl, "flow")
  for key, value, match in (("likelihood", "fpo", "rl.likelihood='fpo' needs the flow head"),
                            ("group_size", 1, "rl.group_size=1"),
                            ("replan_every", -1, "rl.replan_every=-1 must be >= 0"),
                            ("algorithm", "reinforce", "rl.algorithm='reinforce'")):
    bad = rl_config_lib.default_rl_config()
    bad[key] = value
    with pytest.raises(ValueError, match=match):
      rl_config_lib.check_rl_config(bad, "ar")
  del rl.sample_options["ar"]  # Each head samples with its own options.
  with pytest.raises(ValueError, match=r"rl.sample_options has no entry for .*'ar' head"):
    rl_config_lib.check_rl_config(rl, "ar")


def _gae_reference(rewards, values, next_values, terminal, done, valid, gamma, lam):
  """GAE as a plain loop over one env's steps (the textbook recursion, per env)."""
  t_len, n = rewards.shape
  adv = np.zeros((t_len, n))
  for i in range(n):
    running = 0.0
    for t in reversed(range(t_len)):
      if not valid[t, i]:
        running = 0.0
        continue
      if done[t, i]:
        running = 0.0  # Nothing flows back across the episode's end.
      boot = 0.0 if terminal[t, i] else gamma * next_values[t, i]
      running = rewards[t, i] + boot - values[t, i] + gamma * lam * running
      adv[t, i] = running
  return adv


def test_gae_bootstraps_truncation_but_not_termination():
  from vla_jax.rl import ppo  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  t_len = 5
  rewards = rng.normal(size=(t_len, 3)).astype(np.float32)
  values = rng.normal(size=(t_len, 3)).astype(np.float32)
  next_values = np.concatenate([values[1:], rng.normal(size=(1, 3))]).astype(np.float32)
  # Env 0 runs to the horizon (truncated at the last step); env 1 terminates at step 2 (then
  # frozen: invalid); env 2 is truncated at step 3 and frozen after.
  done = np.zeros((t_len, 3), bool)
  terminal = np.zeros((t_len, 3), bool)
  valid = np.ones((t_len, 3), bool)
  done[4, 0] = True
  done[2, 1] = terminal[2, 1] = True
  valid[3:, 1] = False
  done[3, 2] = True
  valid[4:, 2] = False
  adv, ret = ppo.gae(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(next_values),
                     jnp.asarray(terminal), jnp.asarray(done), jnp.asarray(valid), 0.9, 0.8)
  want = _gae_reference(rewards, values, next_values, terminal, done, valid, 0.9, 0.8)
  np.testing.assert_allclose(adv, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ret, np.where(valid, want + values, 0.0), rtol=1e-5, atol=1e-6)
  # The terminal step has no bootstrap; the truncated ones do.
  np.testing.assert_allclose(adv[2, 1], rewards[2, 1] - values[2, 1], rtol=1e-6)
  np.testing.assert_allclose(adv[3, 2], rewards[3, 2] + 0.9 * next_values[3, 2] - values[3, 2],
                             rtol=1e-5)


def test_fpo_loss_is_the_surrogate_of_the_flow_matching_ratio_and_moves_it():
  """FPO's update path (``RLStepBuilder._loss``, McAllister et al. 2025) on the micro flow policy
  and its env adapter: with the params equal to the rollout's, every ratio is exactly 1 (the
  loss is -mean(advantage)); a few gradient steps lower the per-sample flow-matching loss (raise
  the ratio) of the positive-advantage chunks and raise it for the negative ones."""
  import _rl_toy  # pylint: disable=g-import-not-at-top
  env = _rl_toy.make_env()
  policy = _rl_toy.make_policy(env)
  adapter = _rl_toy.make_adapter(env, policy)
  builder = rl_step.RLStepBuilder(policy, env, adapter, _rl_toy.rl_config(likelihood="fpo"))
  n = 8
  history = adapter.initial_history(n)  # Blank frames; the rows differ by state and instruction.
  history["state"] = jax.random.normal(jax.random.key(0), history["state"].shape)
  obs = adapter.observation(history, jnp.arange(n) % len(env.instructions))
  params = builder.initial_params(jax.random.key(1), obs)
  # The executed chunks (any chunks: FPO scores what ran, not how it was sampled).
  actions = jax.random.normal(jax.random.key(2), (n, policy.action_horizon, env.action_dim))
  adv = jnp.asarray([1.0, -1.0] * (n // 2))
  mb = {"sample": {"actions": actions}, "advantage": adv}
  weights, key = jnp.ones((n,)), jax.random.key(3)
  loss_and_grad = jax.jit(jax.value_and_grad(
      lambda p: builder._loss(p, params, None, obs, mb, weights, key), has_aux=True))  # pylint: disable=protected-access
  (loss, metrics), _ = loss_and_grad(params)
  np.testing.assert_allclose(float(loss), -float(adv.mean()), atol=1e-6)
  assert float(metrics["clip_fraction"]) == 0.0
  noise, t = rl_step._fpo_pairs(key, actions.shape, builder.rl.fpo_samples)  # pylint: disable=protected-access
  cfm = jax.jit(lambda p: policy.cfm_losses(p, obs, actions, noise, t).mean(1))
  before, p = np.asarray(cfm(params)), params
  for _ in range(3):
    (_, _), grads = loss_and_grad(p)
    p = jax.tree.map(lambda w, g: w - 1e-3 * g, p, grads)
  change = np.asarray(cfm(p)) - before
  assert (change[0::2] < 0).all() and (change[1::2] > 0).all(), change


def test_learned_noise_std_is_scored_exactly_and_trained_by_the_surrogate():
  """``rl.learn_noise_std`` (``vla_jax.rl.noise_std``) on the micro flow policy: the params gain
  the std entry at its starting value; chains sampled with that std re-score to their sampling
  log-likelihood (ratio 1 at the rollout params); the surrogate with positive advantages for the
  likelier chains (small noise) and negative ones for the others lowers the std, inside its
  bounds, after a few gradient steps."""
  import _rl_toy  # pylint: disable=g-import-not-at-top

  from vla_jax.rl import noise_std as noise_lib  # pylint: disable=g-import-not-at-top
  env = _rl_toy.make_env()
  policy = _rl_toy.make_policy(env)
  adapter = _rl_toy.make_adapter(env, policy)
  rl = _rl_toy.rl_config(learn_noise_std=True, noise_std_bounds=(0.05, 0.5))
  rl.sample_options.flow.noise_std = 0.2
  builder = rl_step.RLStepBuilder(policy, env, adapter, rl)
  n = 16
  history = adapter.initial_history(n)
  history["state"] = jax.random.normal(jax.random.key(0), history["state"].shape)
  obs = adapter.observation(history, jnp.arange(n) % len(env.instructions))
  params = builder.initial_params(jax.random.key(1), obs)
  std_fn = functools.partial(noise_lib.noise_std, bounds=tuple(rl.noise_std_bounds),
                             lr_scale=rl.noise_std_lr_scale)
  np.testing.assert_allclose(std_fn(params), [0.2] * env.action_dim, rtol=1e-5)
  out = jax.jit(lambda p: rl_step._with_learned_std(  # pylint: disable=protected-access
      policy.sample_stochastic, {}, std_fn, p, obs, jax.random.key(2)))(params)
  np.testing.assert_allclose(jax.jit(builder.log_prob)(params, obs, out["sample"]),
                             out["log_prob"], rtol=1e-5, atol=1e-3)
  logp = np.asarray(out["log_prob"])
  adv = jnp.asarray(np.where(logp > np.median(logp), 1.0, -1.0))
  mb = {"sample": out["sample"], "log_prob": out["log_prob"], "advantage": adv}
  grad = jax.jit(jax.grad(lambda p: builder._loss(  # pylint: disable=protected-access
      p, params, None, obs, mb, jnp.ones((n,)), jax.random.key(3))[0]))
  p = params
  for _ in range(3):  # Plain gradient steps (lr_scale multiplies this gradient by 100^2).
    p = jax.tree.map(lambda w, g: w - 1e-4 * g, p, grad(p))
  std = np.asarray(std_fn(p))
  assert (std < 0.2).all() and (std >= 0.05).all(), std
  with pytest.raises(ValueError, match="learn_noise_std needs the flow head"):
    rl_config_lib.check_rl_config(rl, "ar")
