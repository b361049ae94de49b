"""Action heads: each overfits a small conditioned dataset, samples deterministically, compiles
once, and fails without its image or its instruction; flow prefix caching and AR KV caching match
full recomputation; level-2 copies do not leak.

Dataset (``heads.synthetic``): 2 images x 2 instructions = 4 conditions. Every image shows the
same two coloured objects at its own random places; instruction k names object k; the target
chunk [H=4, D=2] reaches the named object's place. ``state`` is one vector for all rows, so only
the image and the instruction together identify the target: the negative control blanks either
(empty table, or no text) and the error must rise far above the tolerance. Micro backbone:
ViT 1 x 32 over 16 x 16 images (4 tokens), Gemma 2 x 32, action expert width 16.
"""


import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _micro_heads import TEXT_VOCAB, D, H, S, fast_tokenizer, micro_batch, micro_config

from vla_jax.data import pipeline
from vla_jax.models import policy as policy_lib
from vla_jax.models.heads import action_tokens, synthetic

STEPS, LR = 1000, 3e-3
# Max |sampled - target| over the chunk. Token heads: binning with 64 bins over [-1, 1] has a
# half-bin error of 1/64 ~ 0.016, so 0.05 allows one neighbouring bin; continuous heads: 0.1.
# FAST at scale 10 rounds DCT coefficients to 0.05, spread over time by the inverse DCT: 0.1.
TOLERANCE = {"flow": 0.1, "diffusion": 0.1, "ar": 0.05, "discrete_diffusion": 0.05,
             "ar_fast": 0.1, "diffusion_expert": 0.1, "hybrid": 0.1, "ar_expert": 0.05}
HEADS = (*policy_lib.HEADS, "ar_fast", "diffusion_expert", "ar_expert")
# Negative control. With the image blanked, the two rows naming one object (in two images) get
# one observation, as do the two rows of one image with the text blanked; their targets end in
# distinct grid cells, >= 0.4 apart, so one answer for both misses by >= 0.2 on average. Seen
# here: mean max |error| 0.6 to 0.9 (or undecodable FAST chunks) against <= 0.06 with both inputs.
BLANK_MIN_ERROR = 0.2


@pytest.fixture(scope="module")
def data():
  return micro_batch()


_TRAINED = {}
_POLICIES = {}


def policy_and_trainer(head):
  """The head's policy and ONE jitted trainer ``run(params, opt_state, start, batch)`` (500 Adam
  steps per call; the batch is an argument, so every same-shape dataset reuses the compilation)."""
  if head not in _POLICIES:
    pol = policy_lib.make_policy(
        micro_config(head), action_dim=D, action_horizon=H, state_dim=S,
        text_vocab_size=TEXT_VOCAB,
        action_tokenizer=fast_tokenizer() if head == "ar_fast" else None)
    opt = optax.adam(optax.cosine_decay_schedule(LR, STEPS))

    @jax.jit
    def run(params, opt_state, start, batch):
      def body(carry, i):
        p, s = carry
        (loss, _), g = jax.value_and_grad(pol.loss, has_aux=True)(
            p, batch, jax.random.fold_in(jax.random.key(1), i))
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), loss
      (params, opt_state), losses = jax.lax.scan(body, (params, opt_state),
                                                  start + jnp.arange(STEPS // 2))
      return params, opt_state, losses

    _POLICIES[head] = (pol, opt, run, jax.jit(pol.sample))
  return _POLICIES[head]


def train(head, data, key="unimodal"):
  """Trains once per (head, dataset) for the module: two calls of the jitted 500-step scan
  (XLA compilation dominates; the steps themselves take about a second)."""
  if (head, key) in _TRAINED:
    return _TRAINED[head, key]
  batch = data[0]
  if head == "ar_fast":  # FAST tokens come with the batch from the host (as the pipeline does).
    batch = {**batch, **jax.tree.map(jnp.asarray, pipeline.action_token_batch(
        fast_tokenizer(), np.asarray(batch["actions"]), H * D))}
  pol, opt, run, _ = policy_and_trainer(head)
  params = jax.jit(pol.init)(jax.random.key(0), batch)
  opt_state = opt.init(params)
  params, opt_state, l1 = run(params, opt_state, 0, batch)
  params, opt_state, l2 = run(params, opt_state, STEPS // 2, batch)
  losses = np.concatenate([np.asarray(l1), np.asarray(l2)])
  _TRAINED[head, key] = (pol, params, losses, run._cache_size())
  return _TRAINED[head, key]


@pytest.mark.parametrize("head", HEADS)
def test_head_overfits_samples_deterministically_compiles_once(head, data):
  _, obs, cond, targets = data
  pol, params, losses, train_compiles = train(head, data)
  first, last = losses[:10].mean(), losses[-10:].mean()
  sample = policy_and_trainer(head)[3]
  out = sample(params, obs, jax.random.key(7))
  again = sample(params, obs, jax.random.key(7))
  actions = np.asarray(out["actions"])
  err, _ = synthetic.nearest_mode_error(actions, cond, targets)
  print(f"\n[{head}] loss {first:.4f} -> {last:.4f} ({first / last:.1f}x); max |action error| "
        f"per sample {np.round(err, 3).tolist()} (tolerance {TOLERANCE[head]}); "
        f"nfe {int(out['nfe'])}")
  assert first / last >= 10.0, f"{head}: loss fell only {first / last:.1f}x"
  assert np.asarray(out["valid"]).all()
  assert actions.shape == (len(cond), H, D)
  assert err.max() <= TOLERANCE[head], f"{head}: sampled actions off by {err.max():.3f}"
  np.testing.assert_array_equal(actions, np.asarray(again["actions"]))  # Fixed rng: same.
  for what in ("image", "text"):  # Negative control: each input is needed.
    blank = sample(params, jax.tree.map(jnp.asarray, synthetic.blank(obs, what)),
                   jax.random.key(7))
    blank_err, _ = synthetic.nearest_mode_error(np.asarray(blank["actions"]), cond, targets)
    blank_valid = np.asarray(blank["valid"])  # A chunk that does not decode is a failure.
    blank_err = np.where(blank_valid, blank_err, np.inf)
    print(f"[{head}] without the {what}: max |action error| per sample "
          f"{np.round(blank_err, 3).tolist()} ({(~blank_valid).sum()} invalid)")
    assert blank_err.mean() >= max(BLANK_MIN_ERROR, 4 * err.mean()), (
        f"{head}: the action error did not rise without the {what} ({blank_err.mean():.3f} "
        f"vs {err.mean():.3f}): the target leaks through another input")
  assert sample._cache_size() == 1 and train_compiles == 1  # No recompilation.
  actions2 = np.asarray(pol.sample_actions(params, obs, jax.random.key(7)))
  np.testing.assert_allclose(actions2, actions, atol=1e-5)
  if head in ("ar", "discrete_diffusion"):  # Median-bin decoding fits too (peaked: within a bin).
    median = jax.jit(functools.partial(pol.head.sample, point="median"))(params, obs,
                                                                        jax.random.key(7))
    median_err, _ = synthetic.nearest_mode_error(np.asarray(median["actions"]), cond, targets)
    assert np.asarray(median["valid"]).all() and median_err.max() <= TOLERANCE[head]


def test_flow_prefix_cache_matches_recomputation(data):
  _, obs, _, _ = data
  pol, params, _, _ = train("flow", data)
  both = jax.jit(lambda p, o, r: (pol.sample(p, o, r)["actions"],
                                  pol.sample(p, o, r, use_cache=False)["actions"]))
  cached, full = both(params, obs, jax.random.key(3))
  np.testing.assert_allclose(np.asarray(cached), np.asarray(full), atol=1e-5)


def test_flow_noise_temperature(data):
  """Temperature 0 is one deterministic ODE solution (any rng); 1 is the default sampler."""
  _, obs, _, _ = data
  pol, params, _, _ = train("flow", data)
  fn = jax.jit(lambda p, o, r, temp: pol.sample(p, o, r, noise_temperature=temp)["actions"],
               static_argnums=3)
  cold = [np.asarray(fn(params, obs, jax.random.key(k), 0.0)) for k in (1, 2)]
  np.testing.assert_array_equal(cold[0], cold[1])
  np.testing.assert_allclose(np.asarray(fn(params, obs, jax.random.key(1), 1.0)),
                             np.asarray(pol.sample_actions(params, obs, jax.random.key(1))),
                             atol=1e-6)
  assert np.isfinite(cold[0]).all()
  with pytest.raises(ValueError, match="noise_temperature must be >= 0"):
    fn(params, obs, jax.random.key(1), -1.0)


def test_flow_level2_copies_do_not_leak(data):
  """M noised copies folded into the batch give the velocities of M separate single-copy passes."""
  _, obs, _, _ = data
  pol, params, _, _ = train("flow", data)
  mod = pol.head.module
  x = jax.random.normal(jax.random.key(4), (len(obs["obs_mask"]), 3, H, D))
  t = jax.random.uniform(jax.random.key(5), x.shape[:2])

  @jax.jit
  def packed_and_single(p):
    mask, cache = mod.apply({"params": p}, obs, method=type(mod).prefix)
    packed = mod.apply({"params": p}, x, t, mask, cache, method=type(mod).velocity)
    single = [mod.apply({"params": p}, x[:, m:m + 1], t[:, m:m + 1], mask, cache,
                        method=type(mod).velocity) for m in range(3)]
    return packed, jnp.concatenate(single, axis=1)

  packed, single = packed_and_single(params)
  np.testing.assert_allclose(np.asarray(packed), np.asarray(single), atol=1e-5)


def test_ar_kv_cache_matches_recomputation(data):
  _, obs, _, _ = data
  pol, params, _, _ = train("ar", data)
  both = jax.jit(lambda p, o, r: (pol.head.sample_tokens(p, o, r, use_cache=True),
                                  pol.head.sample_tokens(p, o, r, use_cache=False)))
  (cached, n1), (full, n2) = both(params, obs, jax.random.key(3))
  np.testing.assert_array_equal(np.asarray(cached), np.asarray(full))
  assert int(n1) == int(n2) == H * D + 1  # H * D action tokens, then EOS stops every row.
  eos = pol.head.layout.special(1)
  assert (np.asarray(cached)[:, -1] == eos).all()


def test_token_heads_in_an_action_expert_cache_as_their_joint_pass(data):
  """With ``expert`` set (untrained: spread distributions, where a mismatch shows), the AR head's
  KV-cached decoding picks the tokens a full recomputation picks, and discrete diffusion's
  cached suffix pass gives its joint pass's logits."""
  _, obs, _, _ = data
  ar = policy_lib.make_policy(micro_config("ar_expert"), action_dim=D, action_horizon=H,
                              state_dim=S, text_vocab_size=TEXT_VOCAB)
  params = jax.jit(ar.init)(jax.random.key(2), data[0])
  assert "expert_embedder" in params and any("_1" in k for k in params["backbone"]["vlm"]["llm"][
      "layers_0"]["attn"])
  both = jax.jit(lambda p, o, r: (ar.head.sample_tokens(p, o, r, use_cache=True)[0],
                                  ar.head.sample_tokens(p, o, r, use_cache=False)[0]))
  cached, full = both(params, obs, jax.random.key(3))
  np.testing.assert_array_equal(np.asarray(cached), np.asarray(full))
  config = micro_config("discrete_diffusion")
  config.discrete_diffusion.expert = True
  dd = policy_lib.make_policy(config, action_dim=D, action_horizon=H, state_dim=S,
                              text_vocab_size=TEXT_VOCAB)
  params = jax.jit(dd.init)(jax.random.key(2), data[0])
  mod, start = dd.head.module, dd.head.layout.action_start
  tokens = start + jax.random.randint(jax.random.key(4), (obs["state"].shape[0], H * D), 0, 64)

  def both_logits(p):
    mask, cache = mod.apply({"params": p}, obs, method=type(mod).prefix)
    return (mod.apply({"params": p}, tokens, mask, cache, method=type(mod).cached_logits),
            mod.apply({"params": p}, obs, tokens, method=type(mod).joint_logits))

  cached, joint = jax.jit(both_logits)(params)
  assert "expert_embedder" in params and cached.shape == (len(tokens), H * D, 64)
  np.testing.assert_allclose(np.asarray(cached), np.asarray(joint), atol=1e-4, rtol=1e-4)


def test_greedy_bin_mode_median_and_mean():
  probs = np.array([[0.3, 0.0, 0.0, 0.25, 0.25, 0.2], [0.0, 0.1, 0.8, 0.1, 0.0, 0.0]])
  logits = jnp.log(jnp.asarray(probs) + 1e-12)
  np.testing.assert_array_equal(action_tokens.greedy_bin(logits, "mode"), [0, 2])
  # Row 0: the CDF reaches 1/2 at bin 3 (0.55), inside the mass the lone peak at 0 misses.
  np.testing.assert_array_equal(action_tokens.greedy_bin(logits, "median"), [3, 2])
  # Row 0's expected bin: 0.75 + 1.0 + 1.0 = 2.75 -> 3; row 1's: 0.1 + 1.6 + 0.3 = 2.
  np.testing.assert_array_equal(action_tokens.greedy_bin(logits, "mean"), [3, 2])
  probs = np.array([[0.5, 0.0, 0.0, 0.0, 0.0, 0.5], [0.0, 0.0, 0.0, 0.0, 0.4, 0.6]])
  np.testing.assert_array_equal(
      action_tokens.greedy_bin(jnp.log(jnp.asarray(probs) + 1e-12), "mean"), [2, 5])


def test_ar_median_decoding_picks_each_steps_median_bin(data):
  """``point="median"`` on an untrained AR head (spread distributions, where it matters): every
  decoded token is the median bin of the teacher-forced distribution at its slot (cache and
  recomputation agree), and it differs from greedy argmax decoding."""
  _, obs, _, _ = data
  pol, _, _, _ = policy_and_trainer("ar")
  head = pol.head
  params = jax.jit(pol.init)(jax.random.key(5), data[0])
  decode = jax.jit(functools.partial(head.sample, point="median"))
  tokens = np.asarray(decode(params, obs, jax.random.key(0))["tokens"])
  full = jax.jit(lambda p, o, r: dataclasses.replace(head, point="median").sample_tokens(
      p, o, r, use_cache=False)[0])(params, obs, jax.random.key(0))
  np.testing.assert_array_equal(tokens, np.asarray(full))
  n, eos, start = head.max_tokens, head.layout.special(1), head.layout.action_start
  inputs = np.concatenate([np.full((len(tokens), 1), head.layout.special(0)), tokens[:, :n]], 1)
  logits = jax.jit(lambda p: head.module.apply({"params": p}, obs, jnp.asarray(inputs),
                                               method=type(head.module).sequence_logits))(params)
  masked = head._masked_logits(logits)
  want = np.where(np.argmax(masked, -1) == eos, eos,
                  start + np.asarray(action_tokens.greedy_bin(masked[..., start:], "median")))
  live = np.cumsum(tokens == eos, axis=1) - (tokens == eos) == 0  # Up to the first EOS.
  np.testing.assert_array_equal(tokens[live], want[live])
  mode = np.asarray(jax.jit(head.sample)(params, obs, jax.random.key(0))["tokens"])
  assert (mode != tokens).any()
  with pytest.raises(ValueError, match="point must be one of"):
    head.sample(params, obs, jax.random.key(0), point="average")


def test_soft_bin_targets_are_a_discretized_gaussian_around_the_bin():
  ids = jnp.array([0, 20, 39])
  q = np.asarray(action_tokens.soft_bin_targets(ids, 40, 2.0))
  np.testing.assert_allclose(q.sum(-1), 1.0, rtol=1e-6)
  k = np.arange(40)
  np.testing.assert_allclose((q[1] * k).sum(), 20.0, atol=1e-5)  # Centred (away from the edges).
  np.testing.assert_allclose((q[1] * (k - 20.0) ** 2).sum(), 4.0 + 1 / 12, rtol=1e-3)
  assert q[0, 0] > q[0, 1] > q[0, 2] and q[2, 39] > q[2, 38]  # Truncated at the edges.
  np.testing.assert_array_equal(action_tokens.soft_bin_targets(ids, 40, 0.0),
                                np.eye(40)[[0, 20, 39]])


def test_discrete_diffusion_label_sigma_trains_on_soft_targets(data):
  """With ``label_sigma`` the loss is the cross-entropy against the soft targets: larger than the
  one-hot cross-entropy of a model trained on one-hot targets (it puts its mass on the bin
  itself), growing with sigma, while the reported ``masked_ce`` stays the one-hot one."""
  pol, params, _, _ = train("discrete_diffusion", data)
  def loss(sigma):
    head = dataclasses.replace(pol.head, label_sigma=sigma)
    value, metrics = jax.jit(head.loss)(params, data[0], jax.random.key(0))
    return float(value), float(metrics["masked_ce"])
  (l0, ce0), (l1, ce1), (l3, ce3) = loss(0.0), loss(1.0), loss(3.0)
  np.testing.assert_allclose([l0, ce1, ce3], [ce0, ce0, ce0], rtol=1e-6)
  assert l0 < l1 < l3
  with pytest.raises(ValueError, match="label_sigma"):
    dataclasses.replace(pol.head, label_sigma=-1.0)


def _weighted_loss(head_name, data, metric):
  """``w -> (loss, unweighted metric)`` of the trained micro head with ``first_step_weight = w``
  on the batch, at a fixed rng."""
  pol, params, _, _ = train(head_name, data)
  def loss(w):
    head = dataclasses.replace(pol.head, first_step_weight=w)
    value, metrics = jax.jit(head.loss)(params, data[0], jax.random.key(0))
    return float(value), float(metrics[metric])
  return loss


def test_ar_first_step_weight_reweights_the_first_steps_tokens(data):
  """``first_step_weight`` w scales the chunk's first step's D token terms: with the per-token
  sums A (first step) and B (the rest, EOS included) recovered from w = 0 and w = 1, the loss at
  w = 3 is (3A + B) / (3 n_A + n_B); the reported cross-entropy stays the unweighted one."""
  batch = data[0]
  loss = _weighted_loss("ar", data, "ce")
  n_a = D * len(batch["actions"])  # Every micro chunk step is real (action_mask all True).
  n_b = (H - 1) * D * len(batch["actions"]) + len(batch["actions"])  # + the closing EOS
  (l0, ce0), (l1, ce1), (l3, ce3) = loss(0.0), loss(1.0), loss(3.0)
  b = l0 * n_b
  a = l1 * (n_a + n_b) - b
  np.testing.assert_allclose(l3, (3 * a + b) / (3 * n_a + n_b), rtol=1e-4)
  np.testing.assert_allclose([ce0, ce3], [ce1, ce1], rtol=1e-6)
  assert abs(l3 - l1) > 1e-3 * l1  # The weight changes the loss (the two parts differ).


def test_ar_fast_first_step_weight_reweights_the_first_tokens(data):
  """FAST: the weight scales the BPE sequence's first D tokens (the lowest DCT frequencies); the
  loss at w = 3 follows from w = 0 and 1 as for binning, with the counts from the token mask
  (the identity holds for any params: the untrained head, no training cost)."""
  pol = policy_and_trainer("ar_fast")[0]
  fast_tokens = pipeline.action_token_batch(fast_tokenizer(), np.asarray(data[0]["actions"]),
                                            H * D)
  batch = {**data[0], **jax.tree.map(jnp.asarray, fast_tokens)}
  params = jax.jit(pol.init)(jax.random.key(0), batch)
  lengths = np.asarray(fast_tokens["action_token_mask"]).sum(1)
  assert (lengths >= D).all()
  n_a = D * len(lengths)
  n_b = int(lengths.sum()) + len(lengths) - n_a  # + the closing EOS of each row

  def loss(w):
    head = dataclasses.replace(pol.head, first_step_weight=w)
    value, metrics = jax.jit(head.loss)(params, batch, jax.random.key(0))
    return float(value), float(metrics["ce"])
  (l0, ce0), (l1, ce1), (l3, ce3) = loss(0.0), loss(1.0), loss(3.0)
  b = l0 * n_b
  a = l1 * (n_a + n_b) - b
  np.testing.assert_allclose(l3, (3 * a + b) / (3 * n_a + n_b), rtol=1e-4)
  np.testing.assert_allclose([ce0, ce3], [ce1, ce1], rtol=1e-6)
  assert abs(l3 - l1) > 1e-3 * l1


def test_discrete_diffusion_first_step_weight_reweights_the_first_steps_slots(data):
  """The weight scales only the first chunk step's masked slots: at w = 1 the loss is the plain
  masked cross-entropy, the reported metric is that unweighted one at every w, and the loss is a
  weighted mean of the first-step mean a and the rest's mean b (w = 0 gives b): for w = 1, 2, 3
  it is (w r a + b) / (w r + 1) with one slot-count ratio r, solved from w = 1 and checked at 3."""
  loss = _weighted_loss("discrete_diffusion", data, "masked_ce")
  (l0, ce0), (l1, ce1), (l2, _), (l3, ce3) = loss(0.0), loss(1.0), loss(2.0), loss(3.0)
  np.testing.assert_allclose([l1, ce0, ce3], [ce1, ce1, ce1], rtol=1e-6)
  b = l0
  # l1 (r + 1) = r a + b and l2 (2 r + 1) = 2 r a + b: eliminate a, then solve for r and a.
  r = (l2 + b - 2 * l1) / (2 * (l1 - l2))
  a = (l1 * (r + 1) - b) / r
  np.testing.assert_allclose(l3, (3 * r * a + b) / (3 * r + 1), rtol=1e-3)
  assert r > 0 and abs(l3 - l1) > 1e-3 * l1  # Both parts hold masked slots, and they differ.


def test_hybrid_ensemble_averages_the_heads_when_the_ar_tokens_are_confident(data):
  """HybridVLA's collaborative ensemble on the trained micro hybrid: the mean of the flow and AR
  predictions where the AR chunk's mean token probability exceeds the threshold (every row at a
  threshold below all of them), the flow prediction alone elsewhere (every row above them)."""
  _, obs, cond, targets = data
  pol, params, _, _ = train("hybrid", data)

  def run(head, mode):
    return jax.jit(functools.partial(head.sample, mode=mode))(params, obs, jax.random.key(7))

  flow, ar = run(pol.head, "flow"), run(pol.head, "ar")
  conf = np.asarray(ar["confidence"])
  assert np.asarray(ar["valid"]).all() and ((conf > 0.5) & (conf <= 1.0)).all(), conf
  err_ar, _ = synthetic.nearest_mode_error(np.asarray(ar["actions"]), cond, targets)
  assert err_ar.max() <= TOLERANCE["ar"]  # The AR part alone fits too (one shared backbone).
  mean = 0.5 * (np.asarray(flow["actions"]) + np.asarray(ar["actions"]))
  for threshold, want in ((conf.min() - 1e-3, mean), (1.0, np.asarray(flow["actions"]))):
    ens = run(dataclasses.replace(pol.head, threshold=float(threshold)), "ensemble")
    np.testing.assert_allclose(np.asarray(ens["ar_confidence"]), conf, rtol=1e-6)
    assert np.asarray(ens["ensembled"]).all() == (threshold < 1.0)
    np.testing.assert_allclose(np.asarray(ens["actions"]), want, atol=1e-6)
  with pytest.raises(ValueError, match="mode='both'"):
    run(pol.head, "both")


def test_fast_invalid_sequences_are_reported():
  """A FAST sequence that does not decode to H x D coefficients is invalid: NaN, never zeros."""
  tok = fast_tokenizer()
  good = np.asarray(synthetic.multimodal_batch(horizon=H, action_dim=D, modes=1)[0]["actions"])
  ids, lengths = tok.encode(good[:2], max_len=H * D)
  ids = np.asarray(ids).copy()
  lengths = np.asarray(lengths).copy()
  lengths[1] = 1  # Truncated: too few coefficients.
  ids[0, 0] = -1  # Not an action token (e.g. EOS/BOA emitted inside the sequence).
  decode = jax.jit(lambda i, n: action_tokens.decode_ids(tok, i, n, H, D))
  actions, valid = decode(jnp.asarray(ids), jnp.asarray(lengths))
  assert not np.asarray(valid).any()
  assert np.isnan(np.asarray(actions)).all()
  ids2, lengths2 = tok.encode(good[:2], max_len=H * D)
  actions, valid = decode(jnp.asarray(ids2), jnp.asarray(lengths2))
  assert np.asarray(valid).all()
  np.testing.assert_allclose(np.asarray(actions), good[:2], atol=0.1)


def test_flow_samples_both_modes_of_a_bimodal_condition():
  """Conditional multimodality: 2 conditions (images) x 2 chunk modes with identical observations
  for both modes; the flow head must sample near one of the two modes, and both modes, rather
  than their average (an MSE regressor's answer). The loss cannot fall 10x here: which mode a
  sample follows is unpredictable from the observation (irreducible velocity variance)."""
  batch, cond, targets = synthetic.multimodal_batch(horizon=H, action_dim=D, state_dim=S,
                                                    num_images=2, num_instructions=1, modes=2,
                                                    seed=3)
  batch = jax.tree.map(jnp.asarray, batch)
  obs = {k: v for k, v in batch.items() if not k.startswith("action")}
  _, params, _, compiles = train("flow", (batch,), key="bimodal")
  sample = policy_and_trainer("flow")[3]
  actions = np.concatenate([np.asarray(sample(params, obs, jax.random.key(i))["actions"])
                            for i in range(16)])  # 16 draws x 4 rows, one compiled program.
  conds = np.tile(cond, 16)
  err, mode = synthetic.nearest_mode_error(actions, conds, targets)
  mean_err = np.abs(actions - targets[conds].mean(axis=1)).max(axis=(1, 2))
  share = [float(np.mean(mode[conds == c] == 1)) for c in range(2)]
  near = float(np.mean(err <= 0.2))
  print(f"\n[flow bimodal] max |error| to nearest mode: quartiles "
        f"{np.round(np.quantile(err, [0.25, 0.5, 0.75]), 3).tolist()}, within 0.2: {near:.2f}; "
        f"to the modes' mean: median {np.median(mean_err):.3f}; share of mode 1 per condition "
        f"{share}")
  assert compiles == 1
  assert near >= 0.6  # Most samples sit on a mode (a few fall between: 10 Euler steps).
  assert np.median(mean_err) > 3 * np.median(err)  # Not the average of the modes.
  assert all(0.2 <= s <= 0.8 for s in share)
