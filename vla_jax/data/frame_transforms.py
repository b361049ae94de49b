"""Frame transforms (tf.data, one training example at a time): decode, resize, augment.

Images arrive as encoded bytes ``string [W]`` (a history window) and leave as ``uint8
[W, size, size, 3]``. Augmentations are for training only and draw their randomness from a
stateless per-example seed, so an example's augmentation depends only on (pipeline seed, example
position): the order and content of batches are reproducible and resumable.

The same crop and colour change are applied to every frame of one example's history window (and
its goal image), so motion between frames is not confused with augmentation.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Training-time image augmentation (Octo-like defaults; all off when ``enabled`` is False).

  random_resized_crop: crop area fraction in ``crop_scale`` and aspect ratio in ``crop_ratio``,
    resized back to the output size.
  brightness: max additive delta (images in [0, 1]); contrast / saturation: multiplicative
    ranges; hue: max shift (fraction of the hue circle).
  """
  enabled: bool = True
  random_resized_crop: bool = True
  crop_scale: tuple[float, float] = (0.8, 1.0)
  crop_ratio: tuple[float, float] = (0.9, 1.1)
  brightness: float = 0.1
  contrast: tuple[float, float] = (0.9, 1.1)
  saturation: tuple[float, float] = (0.9, 1.1)
  hue: float = 0.05


def decode(encoded: tf.Tensor, stored_shape) -> tf.Tensor:
  """Encoded PNG/JPEG bytes ``string [W]`` -> uint8 ``[W, h, w, 3]``.

  ``stored_shape`` (h, w) is the static size when known; None when a mixture stores different
  sizes under one camera (then the size is dynamic and :func:`resize` always runs).
  """
  h, w = stored_shape if stored_shape is not None else (None, None)

  def one(s):
    img = tf.io.decode_image(s, channels=3, expand_animations=False, dtype=tf.uint8)
    img.set_shape([h, w, 3])
    return img

  return tf.map_fn(one, encoded, fn_output_signature=tf.TensorSpec([h, w, 3], tf.uint8))


def resize(images: tf.Tensor, size: int) -> tf.Tensor:
  """uint8 ``[..., h, w, 3]`` -> uint8 ``[..., size, size, 3]`` (antialiased bilinear).

  A no-op when the static size already matches (our demos are stored at the training size).
  """
  if images.shape[-3] == size and images.shape[-2] == size:
    return images
  out = tf.image.resize(tf.cast(images, tf.float32), [size, size], antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)


def random_resized_crop(images: tf.Tensor, seed: tf.Tensor, size: int, scale, ratio) -> tf.Tensor:
  """One random crop (area fraction in ``scale``, aspect in ``ratio``) of every frame, resized.

  Args:
    images: float32 [N, h, w, 3].
    seed: int [2] stateless seed.
    size: output side.
    scale, ratio: (low, high) ranges.

  Returns:
    float32 [N, size, size, 3].
  """
  s1, s2, s3, s4 = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
  area = tf.random.stateless_uniform([], s1, scale[0], scale[1])
  log_r = tf.random.stateless_uniform([], s2, tf.math.log(ratio[0]), tf.math.log(ratio[1]))
  aspect = tf.exp(log_r)
  # Box height/width as fractions of the image; clipped so the box fits.
  bh = tf.minimum(tf.sqrt(area / aspect), 1.0)
  bw = tf.minimum(tf.sqrt(area * aspect), 1.0)
  y0 = tf.random.stateless_uniform([], s3) * (1.0 - bh)
  x0 = tf.random.stateless_uniform([], s4) * (1.0 - bw)
  n = tf.shape(images)[0]
  box = tf.stack([y0, x0, y0 + bh, x0 + bw])
  boxes = tf.tile(box[None], [n, 1])
  return tf.image.crop_and_resize(images, boxes, tf.range(n), [size, size])


def color_jitter(images: tf.Tensor, seed: tf.Tensor, cfg: AugmentConfig) -> tf.Tensor:
  """Brightness, contrast, saturation, hue jitter of float32 [N, h, w, 3] images in [0, 1]."""
  s1, s2, s3, s4 = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
  x = tf.image.stateless_random_brightness(images, cfg.brightness, s1)
  x = tf.image.stateless_random_contrast(x, cfg.contrast[0], cfg.contrast[1], s2)
  x = tf.image.stateless_random_saturation(x, cfg.saturation[0], cfg.saturation[1], s3)
  x = tf.image.stateless_random_hue(x, cfg.hue, s4)
  return tf.clip_by_value(x, 0.0, 1.0)


def augment(images: tf.Tensor, seed: tf.Tensor, size: int, cfg: AugmentConfig) -> tf.Tensor:
  """uint8 [N, size, size, 3] -> augmented uint8 [N, size, size, 3] (one draw for all N)."""
  if not cfg.enabled:
    return images
  crop_seed, color_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  x = tf.cast(images, tf.float32) / 255.0
  if cfg.random_resized_crop:
    x = random_resized_crop(x, crop_seed, size, cfg.crop_scale, cfg.crop_ratio)
  x = color_jitter(x, color_seed, cfg)
  return tf.cast(tf.round(x * 255.0), tf.uint8)


def process_images(example: dict, *, seed: tf.Tensor | None, image_keys, stored_shapes: dict,
                   size: int, cfg: AugmentConfig | None) -> dict:
  """Decodes, resizes and (when ``seed`` and ``cfg`` are given) augments every image key.

  Args:
    example: one example; ``image_keys`` entries are ``string [W]`` or ``string []`` (goal).
    seed: int64 [2] per-example stateless seed, or None for evaluation (no augmentation).
    image_keys: keys holding encoded images.
    stored_shapes: key -> (h, w) stored in the dataset.
    size: output side.
    cfg: augmentation settings.
  """
  out = dict(example)
  frames, splits = [], []
  for key in image_keys:
    enc = example[key]
    scalar = enc.shape.rank == 0
    imgs = resize(decode(enc[None] if scalar else enc, stored_shapes[key]), size)
    frames.append(imgs)
    splits.append((key, scalar, imgs.shape[0]))
  if seed is not None and cfg is not None and cfg.enabled:
    # One draw per example for all its frames (all cameras share the crop box).
    allframes = augment(tf.concat(frames, 0), seed, size, cfg)
    frames = tf.split(allframes, [n for _, _, n in splits], axis=0)
  for (key, scalar, _), imgs in zip(splits, frames):
    out[key] = imgs[0] if scalar else imgs
  return out
