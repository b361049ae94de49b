"""Checkpoint import: parity with `transformers` (PaliGemma, SigLIP vision, Gemma incl. GQA) from
safetensors the test writes, big_vision .npz round trip, scan/unrolled layouts, bad checkpoints."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vla_jax.models import gemma, vit, vlm, weights

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ATOL = 1e-4
B = 2


def _save(model, path):
  """Saves a transformers model the way `save_pretrained` does; returns the directory."""
  model.save_pretrained(str(path))
  return path


def _gemma_fwd(m, tokens):
  t = tokens.shape[1]
  causal = gemma.make_attn_mask(jnp.ones(tokens.shape, bool), jnp.ones(tokens.shape, jnp.int32))
  (h,), _ = m([m.embed(tokens)], jnp.broadcast_to(jnp.arange(t), tokens.shape), causal)
  return h, m.logits(h)


@pytest.fixture(scope="module", params=[(4, 2), (4, 1)], ids=["gqa", "mqa"])
def hf_gemma(request, tmp_path_factory):
  heads, kv_heads = request.param
  torch.manual_seed(0)
  cfg = transformers.GemmaConfig(
      vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
      num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=8)
  model = transformers.GemmaForCausalLM(cfg).eval()
  with torch.no_grad():  # Non-trivial norm scales (the checkpoint stores scale - 1).
    for name, p in model.named_parameters():
      if "norm" in name:
        p.normal_(0.0, 0.3)
  ours = gemma.GemmaConfig(width=32, depth=2, mlp_dim=48, num_heads=heads,
                           num_kv_heads=kv_heads, head_dim=8, vocab_size=64)
  return model, ours, _save(model, tmp_path_factory.mktemp("gemma"))


def test_gemma_parity_logits_and_hidden(hf_gemma):
  model, cfg, path = hf_gemma
  tokens = np.random.default_rng(0).integers(0, 64, (B, 7))
  with torch.no_grad():
    out = model(torch.tensor(tokens), output_hidden_states=True)
    ref_logits = out.logits.numpy()
    ref_hidden = model.model(torch.tensor(tokens)).last_hidden_state.numpy()
  for scan in (False, True):
    params = weights.import_hf(path, "gemma", cfg, scan=scan)
    assert ("layers" in params["params"]) == scan
    module = gemma.Transformer((cfg,), scan=scan)
    hidden, logits = jax.jit(lambda p, t, m=module: m.apply(p, t, method=_gemma_fwd))(
        params, tokens)
    np.testing.assert_allclose(hidden, ref_hidden, atol=ATOL, rtol=1e-4)
    np.testing.assert_allclose(logits, ref_logits, atol=ATOL, rtol=1e-4)


def test_siglip_vision_parity_with_map_head(tmp_path_factory):
  torch.manual_seed(1)
  hf_cfg = transformers.SiglipVisionConfig(
      hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
      image_size=16, patch_size=8, vision_use_head=True)
  model = transformers.SiglipVisionModel(hf_cfg).eval()
  path = _save(model, tmp_path_factory.mktemp("siglip"))
  images = np.random.default_rng(1).uniform(-1, 1, (B, 16, 16, 3)).astype(np.float32)
  with torch.no_grad():
    out = model(pixel_values=torch.tensor(images.transpose(0, 3, 1, 2)))
  cfg = vit.ViTConfig(width=32, depth=2, mlp_dim=64, num_heads=4, patch_size=8, image_size=16,
                      pool_type="map")
  for scan in (False, True):
    params = weights.import_hf(path, "siglip", cfg, scan=scan)
    module = vit.ViT(dataclasses.replace(cfg, scan=scan))
    pooled, aux = jax.jit(module.apply)(params, images)
    np.testing.assert_allclose(aux["encoded"], out.last_hidden_state.numpy(), atol=ATOL)
    np.testing.assert_allclose(pooled, out.pooler_output.numpy(), atol=ATOL)


@pytest.fixture(scope="module")
def hf_paligemma(tmp_path_factory):
  torch.manual_seed(2)
  hf_cfg = transformers.PaliGemmaConfig(
      vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "image_size": 16, "patch_size": 8,
                     "vision_use_head": False},
      text_config={"vocab_size": 64, "hidden_size": 48, "intermediate_size": 96,
                   "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1,
                   "head_dim": 8},
      image_token_index=63, vocab_size=64, projection_dim=48, hidden_size=48)
  model = transformers.PaliGemmaForConditionalGeneration(hf_cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name and "language_model" in name:
        p.normal_(0.0, 0.3)
  cfg = vlm.VLMConfig(
      vit=vit.ViTConfig(width=32, depth=2, mlp_dim=64, num_heads=4, patch_size=8,
                        image_size=16),
      llm=gemma.GemmaConfig(width=48, depth=2, mlp_dim=96, num_heads=4, num_kv_heads=1,
                            head_dim=8, vocab_size=64))
  return model, cfg, _save(model, tmp_path_factory.mktemp("paligemma"))


def _vlm_fwd(m, images, prefix_tokens, suffix_tokens):
  """Prefix (image + prompt, bidirectional) then causal suffix; logits at every position."""
  emb, mask, ar = m.embed_prefix({"base": images}, prefix_tokens,
                                 jnp.ones(prefix_tokens.shape, bool))
  suf = m.embed_text(suffix_tokens)
  full_mask = jnp.concatenate([mask, jnp.ones(suffix_tokens.shape, bool)], axis=1)
  full_ar = jnp.concatenate([ar, jnp.ones(suffix_tokens.shape, jnp.int32)], axis=1)
  positions = jnp.cumsum(full_mask, axis=1) - 1
  (h,), _ = m([jnp.concatenate([emb, suf], axis=1)], positions,
              gemma.make_attn_mask(full_mask, full_ar))
  return h, m.logits(h)


def _bv_npz(params, path):
  """Writes params in big_vision's PaliGemma .npz layout (stacked layers, its leaf names)."""
  p = weights.layers_to_scan(jax.device_get(params["params"]))
  flat = {}
  for k, v in weights.flatten(p).items():
    k = k.replace("embedder/embedding", "embedder/input_embedding")
    k = k.replace("mlp/gating_einsum/w", "mlp/gating_einsum").replace("mlp/linear/w", "mlp/linear")
    flat[f"params/{k}"] = np.asarray(v)
  np.savez(path, **flat)
  return path


def test_paligemma_parity_and_big_vision_npz(hf_paligemma, tmp_path):
  model, cfg, path = hf_paligemma
  rng = np.random.default_rng(3)
  images = rng.uniform(-1, 1, (B, 16, 16, 3)).astype(np.float32)
  prompt, suffix = rng.integers(0, 63, (B, 3)), rng.integers(0, 63, (B, 2))
  n_img = 4
  ids = np.concatenate([np.full((B, n_img), 63), prompt, suffix], axis=1)
  token_type = np.concatenate([np.zeros((B, n_img + 3)), np.ones((B, 2))], axis=1)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids), pixel_values=torch.tensor(
        images.transpose(0, 3, 1, 2)), token_type_ids=torch.tensor(token_type, dtype=torch.long),
        attention_mask=torch.ones(ids.shape, dtype=torch.long), output_hidden_states=True)
  ref_logits = out.logits.numpy()
  params = weights.import_hf(path, "paligemma", cfg)
  module = vlm.VLM(cfg)
  fwd = jax.jit(lambda p, m=module: m.apply(p, images, prompt, suffix, method=_vlm_fwd))
  hidden, logits = fwd(params)
  np.testing.assert_allclose(logits, ref_logits, atol=ATOL, rtol=1e-4)
  # The prefix does not depend on the suffix (prefix-LM), the suffix is causal.
  np.testing.assert_allclose(hidden[:, :n_img + 3], jax.jit(
      lambda p, m=module: m.apply(p, images, prompt, suffix * 0, method=_vlm_fwd))(params)[0][
          :, :n_img + 3], atol=1e-6)

  # big_vision .npz of the same weights, loaded into the scan layout, gives the same logits.
  npz = _bv_npz(params, tmp_path / "pg.npz")
  scan_cfg = dataclasses.replace(cfg, scan=True, vit=dataclasses.replace(cfg.vit, scan=True))
  bv = weights.import_big_vision(npz, "paligemma", scan_cfg)
  assert bv["params"]["llm"]["layers"]["attn"]["q_einsum"]["w"].shape == (2, 4, 48, 8)
  scan_model = vlm.VLM(scan_cfg)
  _, bv_logits = jax.jit(lambda p: scan_model.apply(
      p, images, prompt, suffix, method=_vlm_fwd))(bv)
  np.testing.assert_allclose(bv_logits, ref_logits, atol=ATOL, rtol=1e-4)
  # Unrolled import of the same npz equals the HF import leaf for leaf.
  unrolled = weights.import_big_vision(npz, "paligemma", cfg)
  jax.tree.map(np.testing.assert_array_equal, unrolled, params)


def test_bad_checkpoints_are_named(hf_paligemma, hf_gemma, tmp_path):
  _, cfg, path = hf_paligemma
  tensors = weights.load_safetensors(path)
  broken = {k: v for k, v in tensors.items()
            if k not in ("language_model.model.layers.1.mlp.up_proj.weight",
                         "vision_tower.embeddings.position_embedding.weight")}
  broken["vision_tower.extra.weight"] = np.zeros(3, np.float32)
  with pytest.raises(weights.CheckpointMismatchError) as e:
    weights.import_hf(broken, "paligemma", cfg)
  assert "embeddings.position_embedding.weight" in str(e.value)
  assert "extra.weight" in str(e.value)

  wrong = dict(tensors)
  key = "language_model.model.layers.1.mlp.up_proj.weight"
  wrong[key] = wrong[key][:50]
  with pytest.raises(weights.CheckpointMismatchError,
                     match=r"'layers.1.mlp.up_proj.weight' -> \(48, 50\)"):
    weights.import_hf(wrong, "paligemma", cfg)
  key = "multi_modal_projector.linear.weight"
  wrong = {**tensors, key: tensors[key][:, :31]}
  with pytest.raises(weights.CheckpointMismatchError,
                     match=r"img/head/kernel: checkpoint \(31, 48\) vs model \(32, 48\)"):
    weights.import_hf(wrong, "paligemma", cfg)

  # A model bigger than the checkpoint: the absent layer's keys are named.
  _, gcfg, gpath = hf_gemma
  with pytest.raises(weights.CheckpointMismatchError, match=r"layers\.2\.self_attn\.q_proj"):
    weights.import_hf(gpath, "gemma", dataclasses.replace(gcfg, depth=3))
  with pytest.raises(weights.CheckpointMismatchError,
                     match=r"embedder/embedding: checkpoint \(64, 32\) vs model \(65, 32\)"):
    weights.import_hf(gpath, "gemma", dataclasses.replace(gcfg, vocab_size=65))
  with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
    weights.import_hf(tmp_path / "nothing.safetensors", "gemma", gcfg)


def test_merge_pretrained_backbone_into_tree_with_expert(hf_paligemma):
  _, cfg, path = hf_paligemma
  loaded = weights.import_hf(path, "paligemma", cfg)
  expert = gemma.GemmaConfig(width=16, depth=2, mlp_dim=32, num_heads=4, num_kv_heads=1,
                             head_dim=8)
  model = vlm.VLM(cfg, experts=(expert,))
  images = {"base": jnp.zeros((1, 16, 16, 3), jnp.uint8)}
  tok, mask = jnp.ones((1, 2), jnp.int32), jnp.ones((1, 2), bool)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), images, tok, mask,
                                             [jnp.zeros((1, 3, 16))],
                                             method=vlm.VLM.forward_all))
  fresh = jax.tree.map(lambda s: np.full(s.shape, 7.0, np.float32), shapes)
  merged = weights.merge_params(fresh, loaded)
  np.testing.assert_array_equal(merged["params"]["llm"]["layers_1"]["attn"]["q_einsum"]["w"],
                                loaded["params"]["llm"]["layers_1"]["attn"]["q_einsum"]["w"])
  assert (merged["params"]["llm"]["layers_1"]["attn"]["q_einsum_1"]["w"] == 7.0).all()
  assert (merged["params"]["llm"]["final_norm_1"]["scale"] == 7.0).all()
  bad = jax.tree.map(lambda a: a, loaded)
  bad["params"]["img"]["head"]["bias"] = np.zeros(5, np.float32)
  with pytest.raises(weights.CheckpointMismatchError, match=r"params/img/head/bias: loaded \(5,\)"):
    weights.merge_params(fresh, bad)
