"""RL log-likelihood of the diffusion head (DPPO): ``sample_stochastic`` records the DDPM chain
and its log-likelihood; ``log_prob`` re-scores it with gradients. Checked against an independent
numpy/scipy computation (the textbook DDPM posterior mean from the module's eps, one step at a
time), for all steps and for the last ``last_k``; determinism in rng; bad options.

Micro policy as tests/test_heads.py's ``micro_config("diffusion")``, random init, B = 4 rows of the
synthetic reach batch, K = 10 steps (the head's default) over 20 training levels.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _micro_heads import TEXT_VOCAB, D, H, S, micro_batch, micro_config
from scipy import stats

from vla_jax.models import policy as policy_lib
from vla_jax.models.heads import ddpm, diffusion

LAST_K = 3


@pytest.fixture(scope="module")
def setup():
  batch, obs, _, _ = micro_batch()
  pol = policy_lib.make_policy(micro_config("diffusion"), action_dim=D, action_horizon=H, state_dim=S,
                               text_vocab_size=TEXT_VOCAB)
  head = pol.head
  params = jax.jit(pol.init)(jax.random.key(0), batch)
  fns = {
      "sample": jax.jit(head.sample_stochastic),
      "sample_last": jax.jit(functools.partial(head.sample_stochastic, last_k=LAST_K)),
      # Re-scoring and its gradient in one compilation (XLA compiles dominate the runtime; the
      # backward pass through the backbone is the costliest, so last_k is re-scored forward only).
      "score": jax.jit(scored(head.log_prob)),
      "log_prob_last": jax.jit(functools.partial(head.log_prob, last_k=LAST_K)),
  }
  return head, params, obs, fns


def scored(log_prob):
  """``(params, obs, sample) -> (log_prob [B], d sum(log_prob) / d params)``."""
  def total(params, obs, sample):
    lp = log_prob(params, obs, sample)
    return jnp.sum(lp), lp

  def fn(params, obs, sample):
    (_, lp), grads = jax.value_and_grad(total, has_aux=True)(params, obs, sample)
    return lp, grads
  return fn


@pytest.fixture(scope="module")
def scored_sample(setup):
  """A full and a last_k sample from one rng, re-scored: (full, (log_prob, grads), last,
  log_prob_last)."""
  _, params, obs, fns = setup
  rng = jax.random.key(7)
  full, last = fns["sample"](params, obs, rng), fns["sample_last"](params, obs, rng)
  return (full, fns["score"](params, obs, full["sample"]), last,
          fns["log_prob_last"](params, obs, last["sample"]))


def reference_step_log_probs(head, params, obs, chain):
  """float64 [B, K]: log N(x_{k-1}; mu(x_k, k), max(sigma_k, 0.1)^2) per step, from the module's
  eps one step at a time and the textbook DDPM posterior (Ho et al. 2020, eq. 7) in numpy."""
  mod = head.module
  cond = jax.jit(functools.partial(mod.apply, method=diffusion.DiffusionModule.condition))(
      {"params": params}, obs)
  eps_fn = jax.jit(functools.partial(mod.apply, method=diffusion.DiffusionModule.eps))
  steps = ddpm.sampling_timesteps(mod.num_train_steps, head.num_steps)
  ab = ddpm.cosine_alpha_bars(mod.num_train_steps).astype(np.float64)
  chain = np.asarray(chain, np.float64)
  b, k = chain.shape[0], len(steps)
  out = np.zeros((b, k))
  for i, t in enumerate(steps):
    x_t = chain[:, i]
    eps = np.asarray(eps_fn({"params": params}, jnp.asarray(x_t[:, None], jnp.float32),
                            jnp.full((b, 1), t, jnp.int32), cond)[:, 0], np.float64)
    a_t, a_prev = ab[t], (ab[steps[i + 1]] if i + 1 < k else 1.0)
    alpha, beta = a_t / a_prev, 1.0 - a_t / a_prev
    x0 = np.clip((x_t - np.sqrt(1.0 - a_t) * eps) / np.sqrt(a_t), -1.0, 1.0)
    mean = (np.sqrt(a_prev) * beta / (1.0 - a_t) * x0
            + np.sqrt(alpha) * (1.0 - a_prev) / (1.0 - a_t) * x_t)
    std = max(np.sqrt(beta * (1.0 - a_prev) / (1.0 - a_t)), 0.1)
    out[:, i] = stats.norm.logpdf(chain[:, i + 1], mean, std).sum(axis=(1, 2))
  return out


def test_log_prob_matches_rescoring_and_independent_reference(setup, scored_sample):
  """(a) sampled log_prob == re-scored; (b) == numpy/scipy sum of step log-densities;
  (e) last_k gives the partial sum over the last steps, in both methods."""
  head, params, obs, _ = setup
  out, (rescored, _), last, rescored_last = scored_sample
  chain = out["sample"]["chain"]
  k = head.num_steps
  assert chain.shape == (4, k + 1, H, D) and chain.dtype == jnp.float32
  assert out["log_prob"].shape == (4,) and out["nfe"] == k and bool(out["valid"].all())
  np.testing.assert_array_equal(out["actions"], chain[:, -1])
  np.testing.assert_allclose(out["log_prob"], rescored, rtol=1e-5, atol=1e-4)
  ref = reference_step_log_probs(head, params, obs, chain)
  np.testing.assert_allclose(out["log_prob"], ref.sum(axis=1), rtol=1e-5, atol=1e-3)

  np.testing.assert_array_equal(last["sample"]["chain"], chain)  # Same rng, same chain.
  partial_ref = ref[:, k - LAST_K:].sum(axis=1)
  np.testing.assert_allclose(last["log_prob"], partial_ref, rtol=1e-5, atol=1e-3)
  np.testing.assert_allclose(rescored_last, last["log_prob"], rtol=1e-5, atol=1e-4)
  assert np.all(np.abs(ref.sum(axis=1) - partial_ref) > 1.0)  # The restriction matters.


def test_same_rng_same_sample_different_rng_different(setup):
  """(c) the sample is a function of the rng alone."""
  _, params, obs, fns = setup
  a = fns["sample"](params, obs, jax.random.key(1))
  b = fns["sample"](params, obs, jax.random.key(1))
  c = fns["sample"](params, obs, jax.random.key(2))
  np.testing.assert_array_equal(a["sample"]["chain"], b["sample"]["chain"])
  np.testing.assert_array_equal(a["log_prob"], b["log_prob"])
  assert np.all(np.abs(np.asarray(a["actions"] - c["actions"])).max(axis=(1, 2)) > 1e-3)
  assert np.all(np.asarray(a["log_prob"] != c["log_prob"]))


def test_log_prob_gradients_are_finite_and_nonzero(scored_sample):
  """(d) gradients reach the denoiser and, through the readouts, the observation path."""
  grads = jax.tree.map(np.asarray, scored_sample[1][1])
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert all(np.abs(g).max() > 0 for g in jax.tree.leaves(grads["denoiser"]))
  assert np.abs(grads["readouts"]).max() > 0
  assert max(np.abs(g).max() for g in jax.tree.leaves(grads["backbone"])) > 0


@pytest.mark.parametrize("options,name", [({"min_std": -0.1}, "min_std"),
                                          ({"min_std": 0.0}, "min_std"),
                                          ({"last_k": 0}, "last_k"),
                                          ({"last_k": 11}, "last_k"),
                                          ({"num_steps": 5, "last_k": 6}, "last_k")])
def test_bad_options_raise_naming_them(setup, options, name):
  """(f) invalid options fail before any compute, naming the option."""
  head, params, obs, _ = setup
  with pytest.raises(ValueError, match=name):
    head.sample_stochastic(params, obs, jax.random.key(0), **options)
  sample = {"chain": jnp.zeros((4, options.get("num_steps", head.num_steps) + 1, H, D))}
  with pytest.raises(ValueError, match=name):
    head.log_prob(params, obs, sample, **options)
