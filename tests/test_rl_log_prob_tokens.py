"""RL sampling of the token heads (AR binning, AR FAST, discrete diffusion): the log-likelihood a
stochastic sample reports is the one its re-scoring recomputes, and the one an independent
token-by-token loop computes; samples follow the rng and tend to greedy decoding as the
temperature falls; the log-likelihood has usable gradients; bad options are refused by name.

Random-init micro policies (the backbone of tests/test_heads.py, no training): the claims are
about the bookkeeping, which does not need a trained model. The batch is the 4-row synthetic one
tiled to 16 rows, so that with random logits over ~65 ids some AR rows emit EOS early and the
"up to and including the first EOS" rule is exercised.
"""

import dataclasses
import functools

import _micro_heads
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _micro_heads import TEXT_VOCAB, D, H, S, fast_tokenizer

from vla_jax.models import policy as policy_lib
from vla_jax.models.heads import autoregressive as ar_lib
from vla_jax.models.heads import synthetic

TILE = 4
HEADS = ("ar", "ar_fast", "discrete_diffusion")
TEMPERATURE = 0.7  # Of the sampler and re-scorer under test (not 1: the scaling is checked).
COLD = 1e-6  # A temperature at which sampling is argmax for any logit gap above ~1e-4.


def micro_config(head: str):
  # One LM layer (test_heads.py has 2): XLA compilation dominates this file, and scales with it.
  c = _micro_heads.micro_config(head, llm_depth=1)
  c.discrete_diffusion.rounds = 6
  return c


@functools.cache
def setup(head):
  """``(head, params, obs, fns)``: fns are jitted: the sampler and the re-scorer (TEMPERATURE)
  with the gradient of the summed log-likelihood, and the sampler at T = COLD with greedy
  ``sample`` (few compilations: they dominate this file's time)."""
  pol = policy_lib.make_policy(
      micro_config(head), action_dim=D, action_horizon=H, state_dim=S,
      text_vocab_size=TEXT_VOCAB, action_tokenizer=fast_tokenizer() if head == "ar_fast" else None)
  batch, _, _ = synthetic.multimodal_batch(horizon=H, action_dim=D, state_dim=S, modes=1)
  batch = jax.tree.map(lambda x: jnp.asarray(np.concatenate([x] * TILE)), batch)
  obs = {k: v for k, v in batch.items() if not k.startswith("action")}
  h = pol.head
  if head == "ar_fast":  # FAST and binning with 64 ids: the same ARModule, the same params.
    params = setup("ar")[1]
  else:
    params = jax.jit(h.init)(jax.random.key(0), batch)
  if head == "ar":
    params = with_likely_eos(h, params, obs)
  greedy = h
  if head == "discrete_diffusion":  # The RL sampler never re-masks; compare like with like.
    greedy = dataclasses.replace(h, remask_threshold=0.0)
  cold = functools.partial(h.sample_stochastic, temperature=COLD)

  def score(p, o, sample):  # One compilation for the log-likelihood and its gradient.
    def total(p):
      lp = h.log_prob(p, o, sample, temperature=TEMPERATURE)
      return lp.sum(), lp
    return jax.value_and_grad(total, has_aux=True)(p)

  fns = {
      "stochastic": jax.jit(functools.partial(h.sample_stochastic, temperature=TEMPERATURE)),
      "score": jax.jit(score),  # ((sum, log_prob [B]), grads)
      "cold_and_greedy": jax.jit(lambda p, o: (cold(p, o, jax.random.key(2)),
                                               greedy.sample(p, o, jax.random.key(3)))),
  }
  return h, params, obs, fns


@functools.cache
def sequence_logits(h):
  """The AR module's joint pass, jitted once per head: ``(params, obs, inputs) -> logits``."""
  return jax.jit(lambda p, o, x: h.module.apply({"params": p}, o, x,
                                                method=ar_lib.ARModule.sequence_logits))


def with_likely_eos(h, params, obs, target=-2.5):
  """Random init gives EOS ~1/65 per step, so a sample rarely stops early. The logits are
  ``hidden @ table.T`` (tied, table [V, W]), so the hidden states are recovered exactly by least
  squares, and EOS's row is refit so that its logit is about ``target`` from the action block's
  logsumexp at every position (p(EOS) ~ 0.08 per step, about half the rows stop early). Only
  EOS's output logit and its input embedding change; EOS is only fed after a row is done."""
  emb = params["backbone"]["vlm"]["llm"]["embedder"]["embedding"]
  b = obs["obs_mask"].shape[0]
  # 5 slots: the reference test's longest prefix (one compilation for both).
  inputs = jax.random.randint(jax.random.key(5), (b, 5), h.layout.action_start,
                              h.layout.vocab_size).at[:, 0].set(h.layout.special(ar_lib.BOA))
  logits = np.asarray(sequence_logits(h)(params, obs, inputs), np.float64)
  logits = logits.reshape(-1, emb.shape[0])
  hidden = np.linalg.lstsq(np.asarray(emb, np.float64), logits.T, rcond=None)[0].T  # [B * L, W]
  lse = np.log(np.exp(logits[:, h.layout.action_start:]).sum(1))
  row = np.linalg.lstsq(hidden, lse + target, rcond=None)[0]
  eos = h.layout.special(ar_lib.EOS)
  return jax.tree_util.tree_map_with_path(
      lambda path, x: x.at[eos].set(row) if "embedder" in jax.tree_util.keystr(path) else x,
      params)


@functools.cache
def stochastic_sample(head, seed=0):
  _, params, obs, fns = setup(head)
  return jax.device_get(fns["stochastic"](params, obs, jax.random.key(seed)))


@pytest.mark.parametrize("head", HEADS)
def test_sampled_log_prob_equals_rescored(head):
  h, params, obs, fns = setup(head)
  out = stochastic_sample(head)
  b = obs["obs_mask"].shape[0]
  lp = np.asarray(out["log_prob"])
  assert out["actions"].shape == (b, H, D) and out["valid"].shape == (b,)
  assert lp.shape == (b,) and lp.dtype == np.float32 and np.isfinite(lp).all() and (lp < 0).all()
  (_, rescored), _ = fns["score"](params, obs, out["sample"])
  rescored = np.asarray(rescored)
  np.testing.assert_allclose(rescored, lp, atol=1e-4, rtol=0)
  tokens = np.asarray(out["sample"]["tokens"])
  assert tokens.dtype == np.int32
  if head == "discrete_diffusion":
    rounds = np.asarray(out["sample"]["round"])
    assert tokens.shape == rounds.shape == (b, H * D) and rounds.dtype == np.int32
    assert ((rounds >= 0) & (rounds < h.rounds)).all() and np.asarray(out["valid"]).all()
  else:
    eos = h.layout.special(ar_lib.EOS)
    first = np.argmax(tokens == eos, axis=1)
    stopped = (tokens == eos).any(1)
    first = np.where(stopped, first, tokens.shape[1])
    assert (first < h.max_tokens).any(), "no row stopped early: the EOS rule is untested"
    assert (first >= h.max_tokens).any(), "every row stopped early"
    after = np.arange(tokens.shape[1])[None] > first[:, None]
    assert (tokens[after] == eos).all()
    # Binning: valid iff all H * D tokens came before the EOS.
    if head == "ar":
      np.testing.assert_array_equal(np.asarray(out["valid"]), first >= h.max_tokens)
      assert np.isnan(np.asarray(out["actions"])[first < h.max_tokens]).all()


def test_ar_log_prob_equals_token_by_token_reference():
  """Independent reference: ``sequence_logits`` on growing prefixes in a Python loop, the last
  position's logits masked to the action block and EOS in numpy, summed to the first EOS. Rows
  of a sample are cut short by an EOS at slots 2 and 4 (row 0 keeps non-EOS tokens after it,
  which must not count), so the loop runs 5 prefix lengths (one compilation each); all 16 rows
  run, as the jitted re-scorer's batch is static."""
  h, params, obs, fns = setup("ar")
  stops = (2, 4)
  tokens = np.array(stochastic_sample("ar")["sample"]["tokens"])
  eos = h.layout.special(ar_lib.EOS)
  tokens[tokens == eos] = h.layout.action_start  # Only the EOS placed below.
  for r, j in enumerate(stops):
    tokens[r, j] = eos
  tokens[1, 5:] = eos  # As the sampler writes it (row 0 keeps its tail).
  seq = sequence_logits(h)
  ids = np.arange(h.layout.vocab_size)
  allowed = (ids >= h.layout.action_start) | (ids == eos)
  expected = np.zeros(len(stops))
  inputs = np.full((tokens.shape[0], 1), h.layout.special(ar_lib.BOA), np.int32)
  for j in range(max(stops) + 1):
    logits = np.asarray(seq(params, obs, jnp.asarray(inputs)), np.float64)[:, -1]
    z = np.where(allowed, logits, -np.inf) / TEMPERATURE
    logp = z - z.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    for r, stop in enumerate(stops):
      if j <= stop:  # Up to and including the first EOS.
        expected[r] += logp[r, tokens[r, j]]
    inputs = np.concatenate([inputs, tokens[:, j:j + 1]], axis=1)
  (_, got), _ = fns["score"](params, obs, {"tokens": jnp.asarray(tokens)})
  np.testing.assert_allclose(np.asarray(got)[:len(stops)], expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("head", HEADS)
def test_sample_follows_rng_and_cold_sample_is_greedy(head):
  _, params, obs, fns = setup(head)
  first = stochastic_sample(head)
  again = jax.device_get(fns["stochastic"](params, obs, jax.random.key(0)))
  other = jax.device_get(fns["stochastic"](params, obs, jax.random.key(1)))
  for k, v in first["sample"].items():
    np.testing.assert_array_equal(v, again["sample"][k])
  np.testing.assert_array_equal(first["log_prob"], again["log_prob"])
  assert (first["sample"]["tokens"] != other["sample"]["tokens"]).any()
  cold, greedy = fns["cold_and_greedy"](params, obs)
  np.testing.assert_array_equal(np.asarray(cold["sample"]["tokens"]),
                                np.asarray(greedy["tokens"]))
  np.testing.assert_array_equal(np.asarray(cold["actions"]), np.asarray(greedy["actions"]))


@pytest.mark.parametrize("head", HEADS)
def test_log_prob_gradients_are_finite_and_nonzero(head):
  _, params, obs, fns = setup(head)
  _, grads = fns["score"](params, obs, stochastic_sample(head)["sample"])
  leaves = [np.asarray(g) for g in jax.tree.leaves(grads)]
  assert all(np.isfinite(g).all() for g in leaves)
  llm = np.asarray(grads["backbone"]["vlm"]["llm"]["embedder"]["embedding"])
  assert np.abs(llm).max() > 0  # The tied output layer always receives gradient.
  assert sum(float(np.abs(g).sum()) for g in leaves) > 0


@pytest.mark.parametrize("head", HEADS)
def test_bad_options_are_refused_by_name(head):
  h, params, obs, _ = setup(head)
  sample = stochastic_sample(head)["sample"]
  for t in (0.0, -1.0, float("nan")):
    with pytest.raises(ValueError, match="temperature"):
      h.sample_stochastic(params, obs, jax.random.key(0), temperature=t)
    with pytest.raises(ValueError, match="temperature"):
      h.log_prob(params, obs, sample, temperature=t)
  if head == "discrete_diffusion":
    with pytest.raises(ValueError, match="rounds"):
      h.sample_stochastic(params, obs, jax.random.key(0), rounds=-1)


def test_ar_window_sampling_stays_near_each_steps_median_and_rescores_exactly():
  """``window`` = w: every sampled action token lies within w bins of its step's recorded centre,
  each centre is the median bin of the teacher-forced distribution at its slot (so re-scoring
  sees the sampler's distribution), the re-scored log-likelihood under the recorded centres
  equals the sampler's and has finite gradients, and a record without centres is refused."""
  h, params, obs, _ = setup("ar")
  w = 2
  out = jax.device_get(jax.jit(functools.partial(h.sample_stochastic, temperature=TEMPERATURE,
                                                 window=w))(params, obs, jax.random.key(0)))
  tokens, centers = np.asarray(out["sample"]["tokens"]), np.asarray(out["sample"]["center"])
  eos, start, n = h.layout.special(ar_lib.EOS), h.layout.action_start, h.max_tokens
  live = (np.cumsum(tokens == eos, axis=1) - (tokens == eos)) == 0  # Up to the first EOS.
  action = live & (tokens != eos)
  assert action.sum() > 0 and (np.abs(tokens - start - centers)[action] <= w).all()
  inputs = np.concatenate([np.full((len(tokens), 1), h.layout.special(ar_lib.BOA)),
                           tokens[:, :n]], axis=1)
  logits = np.asarray(sequence_logits(h)(params, obs, jnp.asarray(inputs, jnp.int32)))
  median = np.asarray(h._median_bin(h._masked_logits(jnp.asarray(logits))))
  np.testing.assert_array_equal(centers[live], median[live])

  def total(p):
    lp = h.log_prob(p, obs, out["sample"], temperature=TEMPERATURE, window=w)
    return lp.sum(), lp
  (_, rescored), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(params)
  np.testing.assert_allclose(np.asarray(rescored), out["log_prob"], atol=1e-4, rtol=0)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  # A narrower support than the full distribution: each token's log-prob is higher.
  full = np.asarray(h.log_prob(params, obs, out["sample"], temperature=TEMPERATURE))
  assert (np.asarray(rescored) > full).all()
  with pytest.raises(KeyError, match="sample\\['center'\\]"):
    h.log_prob(params, obs, {"tokens": out["sample"]["tokens"]}, window=w)
  with pytest.raises(ValueError, match="window=-1"):
    h.sample_stochastic(params, obs, jax.random.key(0), window=-1)
