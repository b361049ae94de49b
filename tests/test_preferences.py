"""Preference pairs and flow-DPO (vla_jax/world_model/preferences.py) on the real paths: the MJX
tabletop env (reach, 16 px) and the micro flow policy of ``_rl_toy``, with the MJX oracle as the
judge (any steering scorer plugs in; the world model's is tested in tests/test_world_model.py's
module through the same interface).

Asserts: the recorder executes the policy's own first candidate and records the scorer's
scores of the candidates at the decision (checked against the scorer called independently on
the start states); pairs are the best and worst candidate of a decision, only where the gap
reaches the margin; the DPO loss equals the formula from independently computed flow losses,
is log 2 at the reference, and a few gradient steps on it raise the chosen chunks' likelihood
relative to the rejected ones (accuracy and margin up, loss down).
"""

import math

import _rl_toy as toy
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vla_jax.envs import rollout as rollout_lib
from vla_jax.world_model import preferences, steering

B, N = 4, 3


@pytest.fixture(scope="module")
def recorded():
  env = toy.make_env(done_on_success=False)
  policy = toy.make_policy(env)
  adapter = toy.make_adapter(env, policy)
  params = policy.init(jax.random.PRNGKey(0), adapter.observation(
      adapter.initial_history(1), jnp.zeros((1,), jnp.int32)))
  scorer = steering.MJXOracle(env, toy.CHUNK)
  recorder = preferences.PairRecorder(adapter, scorer=scorer, num_candidates=N)
  run = rollout_lib.make_seeded_rollout(
      env, rollout_lib.make_rollout(env, recorder, privileged=True), per_env_keys=False)
  seeds = jnp.arange(B, dtype=jnp.int32) + 11
  _, traj = run(seeds, None, recorder.initial_carry(B), params)
  return env, policy, adapter, params, scorer, seeds, jax.device_get(traj)


def test_recorder_executes_the_policys_sample_and_records_the_scorers_scores(recorded):
  env, _, _, _, scorer, seeds, traj = recorded
  ex = traj["extras"]
  assert ex["candidates"].shape == (toy.HORIZON, B, N, toy.CHUNK, env.action_dim)
  decision = np.asarray(ex["decision"][:, 0])
  np.testing.assert_array_equal(decision, np.arange(toy.HORIZON) % 1 == 0)  # replan_every 1
  # Identity normalization: the executed action is candidate 0's first step.
  np.testing.assert_allclose(traj["action"], ex["candidates"][:, :, 0, 0], atol=1e-6)
  # At t = 0 the recorded scores are the scorer's on the start states.
  reset_keys, _ = rollout_lib.seed_keys(seeds)
  state = rollout_lib.reset_batch(env, reset_keys)
  want = jax.jit(scorer)(state, jnp.asarray(ex["candidates"][0]), jax.random.PRNGKey(0))
  np.testing.assert_allclose(ex["scores"][0], np.asarray(want), rtol=1e-5, atol=1e-6)
  assert float(np.ptp(ex["scores"][0], axis=-1).max()) > 0   # the candidates differ


def test_pairs_are_the_best_and_worst_candidates_above_the_margin(recorded):
  _, _, _, _, _, _, traj = recorded
  scores = np.asarray(traj["extras"]["scores"])
  gaps = scores.max(-1) - scores.min(-1)
  margin = float(np.median(gaps))
  pairs = preferences.select_pairs(traj, min_gap=margin)
  expected = int((gaps >= margin).sum())
  assert len(pairs["gap"]) == expected and expected > 0
  assert (pairs["gap"] >= margin).all()
  t, b = np.nonzero(gaps >= margin)
  cand = traj["extras"]["candidates"][t, b]
  rows = np.arange(len(t))
  np.testing.assert_array_equal(pairs["chosen"], cand[rows, scores[t, b].argmax(-1)])
  np.testing.assert_array_equal(pairs["rejected"], cand[rows, scores[t, b].argmin(-1)])
  np.testing.assert_array_equal(pairs["observation"]["state"],
                                traj["extras"]["observation"]["state"][t, b])
  assert len(preferences.select_pairs(traj, min_gap=np.inf)["gap"]) == 0


def test_dpo_loss_is_the_formula_and_training_on_it_prefers_the_chosen(recorded):
  _, policy, _, params, _, _, traj = recorded
  pairs = preferences.select_pairs(traj, min_gap=0.0)
  p, m = len(pairs["gap"]), 4
  k1, k2 = jax.random.split(jax.random.PRNGKey(3))
  batch = {"observation": pairs["observation"], "chosen": pairs["chosen"],
           "rejected": pairs["rejected"],
           "noise": jax.random.normal(k1, (p, m) + pairs["chosen"].shape[1:]),
           "t": jax.random.uniform(k2, (p, m), minval=0.001, maxval=1.0)}
  batch.update(preferences.reference_losses(policy, params, batch))
  beta = 5.0
  loss, metrics = preferences.dpo_loss(policy, params, batch, beta)
  assert float(loss) == pytest.approx(math.log(2), abs=1e-5)   # at the reference: no margin
  # The formula, from separately computed per-sample flow losses.
  perturbed = jax.tree.map(lambda x: x * 1.05, params)
  obs = batch["observation"]
  lc = policy.cfm_losses(perturbed, obs, batch["chosen"], batch["noise"], batch["t"]).mean(-1)
  lr = policy.cfm_losses(perturbed, obs, batch["rejected"], batch["noise"], batch["t"]).mean(-1)
  margin = (lr - batch["ref_rejected"]) - (lc - batch["ref_chosen"])
  want = -np.mean(np.log(1 / (1 + np.exp(-beta * np.asarray(margin)))))
  got, _ = preferences.dpo_loss(policy, perturbed, batch, beta)
  assert float(got) == pytest.approx(float(want), rel=1e-4)

  opt = optax.adam(3e-3)
  grad_fn = jax.jit(jax.value_and_grad(
      lambda q: preferences.dpo_loss(policy, q, batch, beta), has_aux=True))
  q, state = params, opt.init(params)
  for _ in range(15):
    (loss, metrics), g = grad_fn(q)
    updates, state = opt.update(g, state, q)
    q = optax.apply_updates(q, updates)
  (loss, metrics), _ = grad_fn(q)
  assert float(loss) < 0.9 * math.log(2), (float(loss), metrics)
  assert float(metrics["accuracy"]) > 0.75 and float(metrics["margin"]) > 0, metrics


def test_a_pair_needs_two_candidates(recorded):
  _, _, adapter, _, scorer, _, _ = recorded
  with pytest.raises(ValueError, match="num_candidates=1 must be >= 2"):
    preferences.PairRecorder(adapter, scorer=scorer, num_candidates=1)
