"""ViT: variants, position embeddings, MAP pooling, scan layout, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vla_jax.models import vit, weights

CFG = vit.ViTConfig(width=32, depth=2, mlp_dim=64, num_heads=4, patch_size=8, image_size=32)


def _init(cfg, images):
  model = vit.ViT(cfg)
  params = jax.jit(model.init)(jax.random.key(0), images)
  return model, params


@pytest.fixture(scope="module")
def images():
  return jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), minval=-1.0, maxval=1.0)


@pytest.fixture(scope="module")
def base(images):
  model, params = _init(CFG, images)
  return model, params, jax.jit(model.apply)


def test_variants_by_name():
  so = vit.get_config("So400m/14")
  assert (so.width, so.depth, so.mlp_dim, so.num_heads, so.patch_size) == (1152, 27, 4304, 16, 14)
  b16 = vit.get_config("B/16", image_size=256)
  assert (b16.width, b16.depth, b16.patch_size, b16.num_patches) == (768, 12, 16, 256)
  tiny = vit.get_config("tiny", patch_size=8, image_size=64)
  assert tiny.num_patches == 64
  with pytest.raises(KeyError, match="Unknown ViT variant 'Q/16'"):
    vit.get_config("Q/16")
  # The So400m/14 image tower has about 400M parameters (the name), 428M with its MAP head.
  shapes = jax.eval_shape(vit.ViT(vit.get_config("So400m/14", pool_type="map")).init,
                          jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  count = sum(np.prod(x.shape) for x in jax.tree.leaves(shapes))
  assert 4.0e8 < count < 4.4e8, count


def test_tokens_map_head_and_sincos(images, base):
  _, params, apply = base
  out, aux = apply(params, images)
  assert out.shape == (2, 16, 32) and aux["encoded"].shape == (2, 16, 32)
  # Patch order is row-major: a change in the top-right patch moves token 3 first.
  moved = images.at[:, :8, 24:].add(0.5)
  out2, _ = apply(params, moved)
  diff = np.abs(np.asarray(out2 - out)).max(axis=(0, 2))
  assert diff[3] == diff.max()

  cfg = vit.ViTConfig(**{**CFG.to_dict(), "pool_type": "map", "posemb": "sincos2d",
                         "head_dim": 10})
  model, params = _init(cfg, images)
  assert "pos_embedding" not in params["params"] and "MAPHead_0" in params["params"]
  out, aux = jax.jit(model.apply)(params, images)
  assert out.shape == (2, 10) and aux["pre_logits"].shape == (2, 32)
  pe = vit.posemb_sincos_2d(4, 4, 32)
  assert pe.shape == (1, 16, 32)
  np.testing.assert_allclose(pe[0, 0], np.r_[np.zeros(8), np.ones(8), np.zeros(8), np.ones(8)])


def test_scan_and_unrolled_layouts_match(images, base):
  _, params, apply = base
  scan_cfg = vit.ViTConfig(**{**CFG.to_dict(), "scan": True, "remat": True})
  scanned = vit.ViT(scan_cfg)
  converted = weights.layers_to_scan(jax.device_get(params))
  want = jax.eval_shape(scanned.init, jax.random.key(0), images)
  assert jax.tree.map(np.shape, converted) == jax.tree.map(lambda a: a.shape, want)
  out_a, _ = apply(params, images)
  out_b, _ = jax.jit(scanned.apply)(converted, images)
  np.testing.assert_allclose(out_a, out_b, atol=1e-5)
  # And the gradient goes through remat + scan.
  grads = jax.jit(jax.grad(lambda p: jnp.sum(scanned.apply(p, images)[0] ** 2)))(converted)
  g = grads["params"]["Transformer"]["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"]
  assert g.shape == (2, 32, 64) and float(jnp.abs(g).max()) > 0


def test_bad_images_are_named(base):
  _, params, apply = base
  with pytest.raises(ValueError, match=r"images shape \(2, 48, 32, 3\), expected \[B, 32, 32, 3\]"):
    apply(params, jnp.zeros((2, 48, 32, 3)))
  with pytest.raises(ValueError, match="images dtype uint8"):
    apply(params, jnp.zeros((2, 32, 32, 3), jnp.uint8))
  with pytest.raises(ValueError, match="not a multiple of patch_size"):
    vit.ViTConfig(width=32, depth=1, mlp_dim=8, num_heads=4, patch_size=7, image_size=32)


def test_conv_stem_tokens_follow_the_image():
  """The conv stem gives the patch grid's tokens through stride-2 convs; bad stems are named."""
  cfg = vit.ViTConfig(width=32, depth=1, mlp_dim=16, num_heads=4, patch_size=8, image_size=32,
                      stem="conv")
  model = vit.ViT(cfg)
  images = jax.random.uniform(jax.random.key(0), (1, 32, 32, 3), minval=-1, maxval=1)
  params = model.init(jax.random.key(1), images)
  assert [k for k in params["params"] if k.startswith("stem_conv")] == ["stem_conv0",
                                                                       "stem_conv1",
                                                                       "stem_conv2"]
  assert params["params"]["stem_conv2"]["kernel"].shape == (3, 3, 16, 16)  # >= 16 channels
  out, aux = jax.jit(model.apply)(params, images)
  assert out.shape == aux["encoded"].shape == (1, 16, 32)
  with pytest.raises(ValueError, match="stem='conv' needs a power-of-two patch_size"):
    vit.ViTConfig(width=32, depth=1, mlp_dim=8, num_heads=4, patch_size=6, image_size=36,
                  stem="conv")
  with pytest.raises(ValueError, match="stem='lin'"):
    vit.ViTConfig(width=32, depth=1, mlp_dim=8, num_heads=4, stem="lin")


def test_film_stem_is_identity_at_init_and_follows_the_condition():
  """FiLM starts as the plain conv stem; once its projections are trained, cond changes tokens."""
  kw = {"width": 32, "depth": 1, "mlp_dim": 16, "num_heads": 4, "patch_size": 8,
        "image_size": 32, "stem": "conv"}
  images = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1, maxval=1)
  cond = jax.random.normal(jax.random.key(2), (2, 12))
  film = vit.ViT(vit.ViTConfig(**kw, film=True))
  params = film.init(jax.random.key(1), images, cond)
  assert params["params"]["stem_film0"]["kernel"].shape == (12, 2 * 16)
  plain = {"params": {k: v for k, v in params["params"].items()
                      if not k.startswith(("stem_film", "film_norm"))}}
  ref, _ = vit.ViT(vit.ViTConfig(**kw)).apply(plain, images)
  out, _ = film.apply(params, images, cond)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-6)  # zero-init FiLM
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(3), len(leaves))
  moved = jax.tree.unflatten(tree, [p + 0.1 * jax.random.normal(k, p.shape)
                                    for p, k in zip(leaves, keys)])
  a, _ = film.apply(moved, images, cond)
  b, _ = film.apply(moved, images, cond[::-1])
  assert np.abs(np.asarray(a) - np.asarray(b)).max(axis=(1, 2)).min() > 1e-2  # cond matters
  row, _ = film.apply(moved, images[1:], cond[1:])  # each row reads only its own cond
  np.testing.assert_allclose(np.asarray(row[0]), np.asarray(a[1]), atol=1e-5)
  with pytest.raises(ValueError, match=r"film=True needs cond \[B=2, C\], got None"):
    film.apply(params, images)
  with pytest.raises(ValueError, match="film=True needs stem='conv'"):
    vit.ViTConfig(**{**kw, "stem": "patch"}, film=True)


def test_spatial_softmax_finds_the_peak_and_keypoint_token_is_appended():
  """A sharp heatmap peak maps to its cell's coordinates; keypoints add one token per image."""
  h, w = 8, 16
  logits = np.zeros((2, h, w, 2), np.float32)
  logits[0, 0, 0, 0] = logits[0, h - 1, w - 1, 1] = 50.0  # top-left / bottom-right corners
  logits[1, 3, 12, 0] = logits[1, 5, 2, 1] = 50.0
  kp = np.asarray(vit.spatial_softmax(jnp.asarray(logits)))
  col = lambda j: -1 + 2 * j / (w - 1)
  row = lambda i: -1 + 2 * i / (h - 1)
  np.testing.assert_allclose(kp[0], [-1, -1, 1, 1], atol=1e-5)
  np.testing.assert_allclose(kp[1], [col(12), row(3), col(2), row(5)], atol=1e-5)
  flat = np.asarray(vit.spatial_softmax(jnp.zeros((1, h, w, 1))))
  np.testing.assert_allclose(flat, [[0.0, 0.0]], atol=1e-6)  # uniform map -> the centre

  kw = {"width": 32, "depth": 1, "mlp_dim": 16, "num_heads": 4, "patch_size": 8,
        "image_size": 32, "stem": "conv"}
  cfg = vit.ViTConfig(**kw, keypoints=4)
  assert cfg.num_tokens == cfg.num_patches + 1 == 17
  images = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1, maxval=1)
  params = vit.ViT(cfg).init(jax.random.key(1), images)
  assert params["params"]["keypoint_logits"]["kernel"].shape == (3, 3, 16, 4)  # stride-4 map
  (out, _), state = vit.ViT(cfg).apply(params, images, capture_intermediates=True)
  assert out.shape == (2, 17, 32)
  # The token entering the encoder is the projection of the spatial softmax of the stride-4
  # heatmaps (checked before the encoder, whose attention would mix in the patches anyway).
  inter = state["intermediates"]
  heat = inter["keypoint_logits"]["__call__"][0]
  assert heat.shape == (2, 8, 8, 4)
  dense = params["params"]["keypoint_embedding"]
  want = vit.spatial_softmax(heat) @ dense["kernel"] + dense["bias"]
  token = inter["keypoint_embedding"]["__call__"][0]
  np.testing.assert_allclose(np.asarray(token), np.asarray(want), atol=1e-5)
  # Shifting the image right by one stride-4 cell moves every heatmap's mass right: the mean x
  # coordinate of each keypoint rises.
  _, moved = vit.ViT(cfg).apply(params, jnp.roll(images, 4, axis=2), capture_intermediates=True)
  x_of = lambda h: np.asarray(vit.spatial_softmax(h)).reshape(2, 4, 2)[..., 0]
  dx = x_of(moved["intermediates"]["keypoint_logits"]["__call__"][0]) - x_of(heat)
  assert np.abs(dx).max() > 1e-3
  with pytest.raises(ValueError, match="keypoints=4 needs"):
    vit.ViTConfig(**{**kw, "stem": "patch"}, keypoints=4)
