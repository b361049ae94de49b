"""Gemma decoder: prefix-LM mask, expert streams, KV cache modes, scan layout, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vla_jax.models import gemma, weights

B, P, S = 2, 5, 3  # batch, prefix length, suffix (expert) length
LM = gemma.GemmaConfig(width=32, depth=2, mlp_dim=64, num_heads=4, num_kv_heads=2, head_dim=8,
                       vocab_size=50)
EXPERT = gemma.GemmaConfig(width=16, depth=2, mlp_dim=24, num_heads=4, num_kv_heads=2,
                           head_dim=8)


def _joint(module, tokens, suffix):
  """Prefix (LM tokens) + suffix (expert stream) in one pass, prefix-LM mask."""
  x = module.embed(tokens)
  total = tokens.shape[1] + suffix.shape[1]
  ar = jnp.zeros((B, total), jnp.int32).at[:, tokens.shape[1]].set(1)
  mask = gemma.make_attn_mask(jnp.ones((B, total), bool), ar)
  positions = jnp.broadcast_to(jnp.arange(total), (B, total))
  return module([x, suffix], positions, mask)


def _prefix(module, tokens):
  x = module.embed(tokens)
  mask = gemma.make_attn_mask(jnp.ones(tokens.shape, bool), jnp.zeros(tokens.shape, jnp.int32))
  return module([x], jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape), mask)


@pytest.fixture(scope="module")
def setup():
  model = gemma.Transformer((LM, EXPERT))
  tokens = jax.random.randint(jax.random.key(0), (B, P), 0, LM.vocab_size)
  suffix = jax.random.normal(jax.random.key(1), (B, S, EXPERT.width))
  params = jax.jit(lambda k: model.init(k, tokens, suffix, method=_joint))(jax.random.key(2))
  # Non-zero norm scales so that the (1 + scale) convention is exercised.
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map_with_path(
      lambda p, a: a + 0.1 * rng.standard_normal(a.shape, np.float32)
      if "scale" in str(p) else a, params)
  joint = jax.jit(lambda p, t, s: model.apply(p, t, s, method=_joint))
  return model, params, tokens, suffix, joint


def test_make_attn_mask_matches_rule():
  input_mask = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 0, 1, 1, 1]], bool)
  mask_ar = np.array([[0, 0, 1, 1, 0, 1], [0, 0, 0, 1, 1, 0]], np.int32)
  got = np.asarray(gemma.make_attn_mask(input_mask, mask_ar))
  cs = np.cumsum(mask_ar, axis=1)
  for b in range(2):
    for i in range(6):
      for j in range(6):
        want = cs[b, j] <= cs[b, i] and input_mask[b, i] and input_mask[b, j]
        assert got[b, i, j] == want, (b, i, j)
  # Prefix (first two tokens of row 0) does not see the suffix; suffix sees the prefix.
  assert not got[0, 0, 2] and got[0, 2, 0] and not got[0, 2, 3] and got[0, 3, 2]


def test_prefix_does_not_see_suffix_and_expert_sees_prefix(setup):
  _, params, tokens, suffix, joint = setup
  (h0, h1), _ = joint(params, tokens, suffix)
  (g0, g1), _ = joint(params, tokens, suffix + 1.0)
  np.testing.assert_array_equal(np.asarray(h0), np.asarray(g0))  # Prefix blind to suffix.
  assert np.abs(np.asarray(h1 - g1)).max() > 1e-3
  other = (tokens + 1) % LM.vocab_size
  (_, k1), _ = joint(params, other, suffix)
  assert np.abs(np.asarray(h1 - k1)).max() > 1e-3  # The expert reads the prefix.
  assert h0.shape == (B, P, LM.width) and h1.shape == (B, S, EXPERT.width)


def test_read_only_cache_equals_joint_forward(setup):
  model, params, tokens, suffix, joint = setup
  (h0, h1), _ = joint(params, tokens, suffix)
  (p0,), cache = model.apply(params, tokens, method=_prefix)
  assert cache["k"].shape == (LM.depth, B, P, LM.num_kv_heads, LM.head_dim)
  np.testing.assert_allclose(p0, h0, atol=1e-5)
  positions = jnp.broadcast_to(jnp.arange(P, P + S), (B, S))
  mask = jnp.ones((B, S, P + S), bool)
  step = jax.jit(lambda c, s: model.apply(params, [None, s], positions, mask, c))
  for _ in range(2):  # Reused twice: the cache is not mutated.
    (none, out), same = step(cache, suffix)
    assert none is None
    np.testing.assert_allclose(out, h1, atol=1e-5)
    for k in ("k", "v"):
      np.testing.assert_array_equal(same[k], cache[k])


def test_append_cache_decode_equals_full_causal_forward(setup):
  model, params, _, _, _ = setup
  total, prefill = 8, 3
  tokens = jax.random.randint(jax.random.key(3), (B, total), 0, LM.vocab_size)
  causal = gemma.make_attn_mask(jnp.ones((B, total), bool), jnp.ones((B, total), jnp.int32))
  full_pos = jnp.broadcast_to(jnp.arange(total), (B, total))
  (full,), _ = model.apply(params, [model.apply(params, tokens, method=model.embed)], full_pos,
                           causal)

  @jax.jit
  def decode(tokens):
    cache = gemma.init_cache(LM, B, total)
    slots = jnp.arange(total)

    def run(tok, pos, cache):
      x = model.apply(params, tok, method=model.embed)
      mask = jnp.broadcast_to(slots[None, None, :] <= pos[:, :, None], (B,) + pos.shape[1:] +
                              (total,))
      return model.apply(params, [x], pos, mask, cache)

    pos0 = jnp.broadcast_to(jnp.arange(prefill), (B, prefill))
    (h_pre,), cache = run(tokens[:, :prefill], pos0, cache)

    def body(t, carry):  # A while loop (fori_loop): the cache has a static, preallocated shape.
      cache, hs = carry
      tok = jax.lax.dynamic_slice_in_dim(tokens, t, 1, axis=1)
      (h,), cache = run(tok, jnp.full((B, 1), t), cache)
      return cache, jax.lax.dynamic_update_slice_in_dim(hs, h, t - prefill, axis=1)

    hs = jnp.zeros((B, total - prefill, LM.width))
    cache, hs = jax.lax.fori_loop(prefill, total, body, (cache, hs))
    return h_pre, hs, cache

  h_pre, h_dec, cache = decode(tokens)
  assert int(cache["index"]) == total
  np.testing.assert_allclose(h_pre, full[:, :prefill], atol=1e-5)
  np.testing.assert_allclose(h_dec, full[:, prefill:], atol=1e-5)
  # Logits use the tied embedding.
  logits = model.apply(params, full, method=model.logits)
  table = params["params"]["embedder"]["embedding"]
  np.testing.assert_allclose(logits, np.einsum("bld,vd->blv", full, table), rtol=1e-5, atol=1e-5)


def test_extend_cache_continues_decoding(setup):
  model, params, tokens, _, _ = setup
  (_,), cache = model.apply(params, tokens, method=_prefix)
  ext = gemma.extend_cache(cache, P + 4)
  assert ext["k"].shape[2] == P + 4 and int(ext["index"]) == P
  np.testing.assert_array_equal(ext["k"][:, :, :P], cache["k"])
  with pytest.raises(ValueError, match="max_len"):
    gemma.extend_cache(cache, P - 1)


def test_scan_layout_gives_same_outputs(setup):
  _, params, tokens, suffix, joint = setup
  scanned = gemma.Transformer((LM, EXPERT), scan=True, remat=True)
  sparams = jax.eval_shape(lambda: scanned.init(jax.random.key(5), tokens, suffix, method=_joint))
  assert sparams["params"]["layers"]["attn"]["q_einsum"]["w"].shape == (2, 4, 32, 8)
  converted = weights.layers_to_scan(params)
  assert jax.tree.map(jnp.shape, converted) == jax.tree.map(lambda a: a.shape, sparams)
  (a0, a1), kv_a = joint(params, tokens, suffix)
  (b0, b1), kv_b = jax.jit(lambda p: scanned.apply(p, tokens, suffix, method=_joint))(converted)
  np.testing.assert_allclose(a0, b0, atol=1e-5)
  np.testing.assert_allclose(a1, b1, atol=1e-5)
  np.testing.assert_allclose(kv_a["k"], kv_b["k"], atol=1e-5)
  back = weights.scan_to_layers(converted)
  jax.tree.map(np.testing.assert_array_equal, back, jax.device_get(params))


def test_bad_inputs_are_named(setup):
  model, params, tokens, suffix, _ = setup
  with pytest.raises(ValueError, match=r"out of vocabulary \[0, 50\): value 50 at index \(1, 2\)"):
    model.apply(params, tokens.at[1, 2].set(50), suffix, method=_joint)
  with pytest.raises(ValueError, match=r"stream 1 has shape \(2, 3, 8\)"):
    model.apply(params, tokens, suffix[..., :8], method=_joint)
  with pytest.raises(ValueError, match="mask shape"):
    model.apply(params, [suffix * 0 + 1.0][:0] + [None, suffix],
                jnp.zeros((B, S), jnp.int32), jnp.ones((B, S, S + 1), bool))
  bad = gemma.GemmaConfig(width=16, depth=2, mlp_dim=24, num_heads=2, num_kv_heads=2,
                          head_dim=8)
  with pytest.raises(ValueError, match="num_heads"):
    gemma.Transformer((LM, bad)).init(jax.random.key(0), tokens, suffix, method=_joint)
  with pytest.raises(ValueError, match="multiple of num_kv_heads"):
    gemma.GemmaConfig(width=8, depth=1, mlp_dim=8, num_heads=3, num_kv_heads=2, head_dim=4)
  # Under jit the bad id cannot raise; it must not embed as a valid row either.
  emb = jax.jit(lambda t: model.apply(params, t, method=model.embed))(tokens.at[0, 0].set(99))
  assert np.isnan(np.asarray(emb[0, 0])).all() and np.isfinite(np.asarray(emb[0, 1])).all()
