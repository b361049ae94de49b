"""VLM prefix API: token order, masks, prefix cache reused by an expert, configs, bad input."""

import dataclasses
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vla_jax.models import gemma, vit, vlm

B, L = 2, 4
CFG = vlm.VLMConfig(
    vit=vit.ViTConfig(width=32, depth=1, mlp_dim=64, num_heads=4, patch_size=8, image_size=16),
    llm=gemma.GemmaConfig(width=32, depth=2, mlp_dim=64, num_heads=4, num_kv_heads=1,
                          head_dim=8, vocab_size=40),
    cameras=("base", "wrist"))
EXPERT = gemma.GemmaConfig(width=16, depth=2, mlp_dim=32, num_heads=4, num_kv_heads=1, head_dim=8)
N = 4  # tokens per image: (16 / 8)^2


@pytest.fixture(scope="module")
def setup():
  model = vlm.VLM(CFG, experts=(EXPERT,))
  images = {
      "image/base": jax.random.randint(jax.random.key(0), (B, 16, 16, 3), 0, 256).astype(
          jnp.uint8),
      "image/wrist": jax.random.randint(jax.random.key(1), (B, 16, 16, 3), 0, 256).astype(
          jnp.uint8),
  }
  tokens = jnp.array([[1, 2, 3, 0], [4, 5, 0, 0]], jnp.int32)
  text_mask = tokens > 0
  suffix = jax.random.normal(jax.random.key(2), (B, 3, EXPERT.width))
  params = jax.jit(lambda k: model.init(k, images, tokens, text_mask, [suffix],
                                        method=vlm.VLM.forward_all))(jax.random.key(3))
  return model, params, images, tokens, text_mask, suffix


def test_embed_prefix_order_and_masks(setup):
  model, params, images, tokens, text_mask, _ = setup
  emb, mask, ar = jax.jit(lambda p: model.apply(p, images, tokens, text_mask,
                                                method=vlm.VLM.embed_prefix))(params)
  assert emb.shape == (B, 2 * N + L, 32) and mask.shape == ar.shape == (B, 2 * N + L)
  assert not np.asarray(ar).any()
  np.testing.assert_array_equal(mask[:, 2 * N:], text_mask)
  assert np.asarray(mask[:, :2 * N]).all()
  # Image tokens first (camera order base, wrist), then the scaled text embedding.
  img, _ = model.apply(params, vlm.preprocess_images(images["image/wrist"]),
                       method=lambda m, x: m.img(x))
  np.testing.assert_allclose(emb[:, N:2 * N], img, atol=1e-5)
  table = params["params"]["llm"]["embedder"]["embedding"]
  np.testing.assert_allclose(emb[:, 2 * N:], table[tokens] * np.sqrt(32), atol=1e-5)
  # A missing wrist image masks exactly its tokens.
  _, mask2, _ = model.apply(params, images, tokens, text_mask,
                            {"wrist": jnp.array([True, False])}, method=vlm.VLM.embed_prefix)
  assert np.asarray(mask2[0]).sum() == np.asarray(mask[0]).sum()
  assert not np.asarray(mask2[1, N:2 * N]).any() and np.asarray(mask2[1, :N]).all()


def test_prefix_cache_reused_by_expert_equals_joint_pass(setup):
  model, params, images, tokens, text_mask, suffix = setup
  prefix_hidden, expert_hidden = jax.jit(lambda p: model.apply(
      p, images, tokens, text_mask, [suffix], method=vlm.VLM.forward_all))(params)
  hidden, mask, cache = jax.jit(lambda p: model.apply(
      p, images, tokens, text_mask, method=vlm.VLM.run_prefix))(params)
  valid = np.asarray(mask)  # Padded query rows attend to nothing: their output is unused.
  np.testing.assert_allclose(np.asarray(hidden)[valid], np.asarray(prefix_hidden)[valid],
                             atol=1e-5)
  assert cache["k"].shape == (2, B, 2 * N + L, 1, 8)
  # Suffix positions continue after the valid prefix tokens; it sees valid prefix + itself.
  start = mask.sum(-1, keepdims=True)
  positions = start + jnp.arange(3)[None]
  attn = jnp.concatenate([jnp.broadcast_to(mask[:, None], (B, 3, mask.shape[1])),
                          jnp.ones((B, 3, 3), bool)], axis=-1)
  (none, out), same = jax.jit(lambda p, c: model.apply(p, [None, suffix], positions, attn, c))(
      params, cache)
  assert none is None and same is not None
  np.testing.assert_allclose(out, expert_hidden, atol=1e-5)
  logits = model.apply(params, hidden, method=vlm.VLM.logits)
  assert logits.shape == (B, 2 * N + L, 40)


def test_backbone_configs_from_python():
  tiny = vlm.backbone_config("tiny")
  cfg = vlm.VLMConfig.from_config(tiny)
  assert cfg.vit.image_size == 64 and cfg.tokens_per_image == 64
  assert cfg.vit.head_dim == cfg.llm.width == 128 and cfg.llm.num_kv_heads == 1
  big = vlm.VLMConfig.from_config(vlm.backbone_config("paligemma_3b"))
  assert big.scan and big.vit.scan
  with pytest.raises(KeyError, match="unknown keys \\['typo'\\]"):
    vlm.VLMConfig.from_config({**tiny.to_dict(), "typo": 1})
  with pytest.raises(KeyError, match="Unknown backbone variant"):
    vlm.backbone_config("huge")
  # The config file wraps the same dict and documents its launch command.
  spec = importlib.util.spec_from_file_location(
      "backbone_cfg", pathlib.Path(__file__).parents[1] / "configs" / "backbone.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert "python benchmarks/backbone.py" in module.__doc__
  config = module.get_config("variant=tiny,cameras=base+wrist,batch_size=8")
  assert vlm.VLMConfig.from_config(config.backbone).cameras == ("base", "wrist")
  assert config.batch_size == 8
  with pytest.raises(KeyError, match="Did you mean: variant"):
    module.get_config("varient=tiny")


def test_paligemma_3b_parameter_count():
  # PaliGemma report (Beyer et al. 2024): 2.92B parameters (400M SigLIP-So400m + 2B Gemma).
  cfg = vlm.VLMConfig.from_config(vlm.backbone_config("paligemma_3b"))
  images = {"base": jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.uint8)}
  tok = jax.ShapeDtypeStruct((1, 8), jnp.int32)
  shapes = jax.eval_shape(
      lambda i, t: vlm.VLM(cfg).init(jax.random.key(0), i, t, jnp.ones((1, 8), bool),
                                     method=vlm.VLM.run_prefix), images, tok)
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  assert count == 2_923_335_408, count


def test_bad_inputs_are_named(setup):
  model, params, images, tokens, text_mask, _ = setup
  f = vlm.VLM.embed_prefix
  with pytest.raises(KeyError, match=r"missing camera\(s\) \['wrist'\]"):
    model.apply(params, {"image/base": images["image/base"]}, tokens, text_mask, method=f)
  bad = {**images, "image/wrist": images["image/wrist"].astype(jnp.int32)}
  with pytest.raises(ValueError, match="camera 'wrist'.*dtype int32"):
    model.apply(params, bad, tokens, text_mask, method=f)
  bad = {k: v[:, :8] for k, v in images.items()}
  with pytest.raises(ValueError, match=r"camera 'base' images have shape \(2, 8, 16, 3\); the "
                     r"backbone expects 16x16 RGB"):
    model.apply(params, bad, tokens, text_mask, method=f)
  with pytest.raises(ValueError, match="out of vocabulary"):
    model.apply(params, images, tokens.at[0, 0].set(40), text_mask, method=f)
  with pytest.raises(ValueError, match="pool_type='none'"):
    dataclasses.replace(CFG, vit=dataclasses.replace(CFG.vit, pool_type="map"))


def test_backbone_learns_image_conditioned_text(setup):
  """A few Adam steps fit next-token prediction whose answer is only in the image."""
  optax = pytest.importorskip("optax")
  model, params, _, _, _, _ = setup
  rng = np.random.default_rng(0)
  label = np.arange(8) % 2  # Bright or dark images; the 2nd text token names which.
  level = np.where(label[:, None, None, None] == 1, 220, 30)
  noise = rng.integers(-20, 20, (8, 16, 16, 3))
  imgs = {f"image/{c}": jnp.asarray(np.clip(level + noise, 0, 255).astype(np.uint8))
          for c in ("base", "wrist")}
  tokens = jnp.asarray(np.stack([np.ones(8), 10 + label, np.full(8, 5)], 1).astype(np.int32))

  def loss_fn(p):
    def fwd(m):
      img = m.embed_images(imgs)
      b, n, l = img.shape[0], img.shape[1], tokens.shape[1]
      mask = jnp.ones((b, n + l), bool)
      ar = jnp.concatenate([jnp.zeros((b, n), jnp.int32), jnp.ones((b, l), jnp.int32)], 1)
      (h,), _ = m([jnp.concatenate([img, m.embed_text(tokens)], 1)],
                  jnp.broadcast_to(jnp.arange(n + l), (b, n + l)), gemma.make_attn_mask(mask, ar))
      return m.logits(h[:, n:-1])
    logits = model.apply(p, method=fwd)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1)[..., 0]
    return jnp.mean(nll), logits

  opt = optax.adam(3e-3)

  @jax.jit
  def train(p):
    def step(carry, _):
      p, s = carry
      (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
      updates, s = opt.update(g, s, p)
      return (optax.apply_updates(p, updates), s), loss
    (p, _), losses = jax.lax.scan(step, (p, opt.init(p)), None, length=60)
    return losses, loss_fn(p)[1]

  losses, logits = train(params)
  assert float(losses[-1]) < 0.1 * float(losses[0]), losses
  np.testing.assert_array_equal(np.argmax(logits[:, 0], -1), 10 + label)


def test_keypoint_token_counts_as_an_image_token():
  """With ViT keypoints each image gives patches + 1 tokens; masks cover the keypoint token."""
  cfg = dataclasses.replace(CFG, vit=dataclasses.replace(
      CFG.vit, image_size=32, stem="conv", film=True, keypoints=4))
  assert cfg.tokens_per_image == (32 // 8) ** 2 + 1
  n = cfg.tokens_per_image
  model = vlm.VLM(cfg)
  images = {f"image/{c}": jax.random.randint(jax.random.key(i), (B, 32, 32, 3), 0, 256).astype(
      jnp.uint8) for i, c in enumerate(("base", "wrist"))}
  tokens = jnp.array([[1, 2, 3, 0], [4, 5, 0, 0]], jnp.int32)
  params = model.init(jax.random.key(0), images, tokens, tokens > 0, method=vlm.VLM.embed_prefix)
  emb, mask, _ = model.apply(params, images, tokens, tokens > 0,
                             {"wrist": jnp.array([True, False])}, method=vlm.VLM.embed_prefix)
  assert emb.shape == (B, 2 * n + L, 32)
  assert np.asarray(mask[:, :n]).all() and not np.asarray(mask[1, n:2 * n]).any()
  np.testing.assert_array_equal(mask[:, 2 * n:], tokens > 0)
