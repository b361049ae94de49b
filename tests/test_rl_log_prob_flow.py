"""The flow head's RL likelihoods: the Flow-Noise chain's log-prob is exact (it equals the sum of
its per-step Gaussian densities computed independently, with velocities from the uncached joint
pass one step at a time), re-scoring a sample reproduces it, it has gradients, and FPO's
per-sample losses equal an independent recomputation. Micro policy as in ``test_heads``, random
init (a likelihood is exact for any params)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _micro_heads import TEXT_VOCAB, D, H, S, micro_batch, micro_config
from scipy import stats

from vla_jax.models import policy as policy_lib
from vla_jax.models.heads import flow as flow_lib

K, STD, TEMP = 3, 0.2, 0.8


@pytest.fixture(scope="module")
def setup():
  pol = policy_lib.make_policy(micro_config("flow"), action_dim=D, action_horizon=H, state_dim=S,
                               text_vocab_size=TEXT_VOCAB)
  _, obs, _, _ = micro_batch()
  params = jax.jit(pol.init)(jax.random.key(0), obs)
  opts = {"num_steps": K, "noise_std": STD, "noise_temperature": TEMP}
  sample = jax.jit(functools.partial(pol.sample_stochastic, **opts))
  log_prob = jax.jit(functools.partial(pol.log_prob, **opts))
  return pol, params, obs, sample, log_prob, opts


def test_chain_log_prob_equals_independent_gaussian_densities(setup):
  pol, params, obs, sample, log_prob, _ = setup
  out = sample(params, obs, jax.random.key(3))
  chain = np.asarray(out["sample"]["chain"], np.float64)  # [B, K+1, H, D]
  assert chain.shape == (obs["obs_mask"].shape[0], K + 1, H, D)
  np.testing.assert_array_equal(out["actions"], out["sample"]["chain"][:, -1])
  # Independent: velocities of the uncached joint pass, one Euler step at a time; scipy densities.
  mod = pol.head.module
  x0_term = stats.norm.logpdf(chain[:, 0], 0.0, TEMP).sum(axis=(1, 2))
  step_terms = 0.0  # [B, H]: per chunk action, summed over steps and action dims
  for k in range(K):
    t = np.full((chain.shape[0], 1), 1.0 - k / K, np.float32)
    v = mod.apply({"params": params}, obs, jnp.asarray(chain[:, k][:, None], jnp.float32),
                  jnp.asarray(t), method=flow_lib.FlowModule.velocity_uncached)[:, 0]
    mean = chain[:, k] - np.asarray(v, np.float64) / K
    step_terms = step_terms + stats.norm.logpdf(chain[:, k + 1], mean, STD).sum(axis=2)
  ref = x0_term + step_terms.sum(axis=1)
  np.testing.assert_allclose(out["log_prob"], ref, rtol=1e-5, atol=1e-3)
  np.testing.assert_allclose(log_prob(params, obs, out["sample"]), out["log_prob"], rtol=1e-5,
                             atol=1e-3)
  # Scoring only the first (executed) action's steps: the same chain for the same key, and
  # sampler and re-score agree on the partial sum.
  opts = {"num_steps": K, "noise_std": STD, "noise_temperature": TEMP, "scored_actions": 1}
  part = jax.jit(functools.partial(pol.sample_stochastic, **opts))(params, obs,
                                                                   jax.random.key(3))
  np.testing.assert_array_equal(part["sample"]["chain"], out["sample"]["chain"])
  ref_part = x0_term + step_terms[:, 0]
  np.testing.assert_allclose(part["log_prob"], ref_part, rtol=1e-5, atol=1e-3)
  rescored = jax.jit(functools.partial(pol.log_prob, **opts))(params, obs, part["sample"])
  np.testing.assert_allclose(rescored, ref_part, rtol=1e-5, atol=1e-3)
  with pytest.raises(ValueError, match=r"scored_actions=0 must be in \[1, H=" + str(H)):
    pol.log_prob(params, obs, part["sample"], **dict(opts, scored_actions=0))


def test_sampling_is_seeded_and_log_prob_has_gradients(setup):
  _, params, obs, sample, log_prob, _ = setup
  a, b = sample(params, obs, jax.random.key(1)), sample(params, obs, jax.random.key(1))
  c = sample(params, obs, jax.random.key(2))
  np.testing.assert_array_equal(a["actions"], b["actions"])
  assert not np.allclose(a["actions"], c["actions"])
  grads = jax.grad(lambda p: log_prob(p, obs, a["sample"]).sum())(params)
  norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
  assert all(np.isfinite(norms)) and sum(norms) > 0
  # The action expert's output layer moves the chain's means: its gradient cannot vanish.
  assert float(jnp.abs(grads["action_out_proj"]["kernel"]).sum()) > 0


def test_fpo_losses_match_recomputation(setup):
  pol, params, obs, *_ = setup
  b = obs["obs_mask"].shape[0]
  k1, k2, k3 = jax.random.split(jax.random.key(4), 3)
  actions = jax.random.normal(k1, (b, H, D))
  noise = jax.random.normal(k2, (b, 2, H, D))
  t = jax.random.uniform(k3, (b, 2))
  losses = jax.jit(pol.cfm_losses)(params, obs, actions, noise, t)
  assert losses.shape == (b, 2)
  for m in range(2):
    x_t = t[:, m, None, None] * noise[:, m] + (1 - t[:, m, None, None]) * actions
    v = pol.head.module.apply({"params": params}, obs, x_t[:, None], t[:, m, None],
                              method=flow_lib.FlowModule.velocity_uncached)[:, 0]
    want = jnp.mean(jnp.square(v - (noise[:, m] - actions)), axis=(1, 2))
    np.testing.assert_allclose(losses[:, m], want, rtol=1e-4, atol=1e-6)


def test_bad_options_are_named(setup):
  pol, params, obs, _, _, opts = setup
  with pytest.raises(ValueError, match="noise_std"):
    pol.sample_stochastic(params, obs, jax.random.key(0), **{**opts, "noise_std": 0.0})
  with pytest.raises(ValueError, match=r"sample\['chain'\]"):
    pol.log_prob(params, obs, {"chain": jnp.zeros((1, K + 1, H, D))}, **opts)
  diffusion = policy_lib.make_policy(micro_config("diffusion"), action_dim=D, action_horizon=H,
                                     state_dim=S, text_vocab_size=TEXT_VOCAB)
  with pytest.raises(NotImplementedError, match="'diffusion' head has no cfm_losses"):
    diffusion.cfm_losses(params, obs, None, None, None)
