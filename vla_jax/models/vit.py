"""Vision Transformer (SigLIP image encoder), Flax linen, big_vision parameter names.

Patchify with a strided conv, add learned or 2-D sincos position embeddings, pre-norm encoder
blocks (LayerNorm, multi-head attention, GELU-tanh MLP), a final LayerNorm, then an optional
pooling (``none``: all patch tokens; ``map``: multi-head attention pooling with a learned probe;
``gap``: mean) and an optional linear ``head`` (PaliGemma uses it as the projection into the LM
width).

Parameter tree: ``embedding/{kernel [p, p, 3, W], bias}``, ``pos_embedding`` [1, N, W] (learned
only), ``Transformer/encoderblock`` (scan: leading [depth] axis) or ``Transformer/encoderblock_i``
each with ``LayerNorm_0``, ``MultiHeadDotProductAttention_0/{query,key,value}/kernel`` [W, heads,
W/heads], ``.../out/kernel`` [heads, W/heads, W], ``LayerNorm_1``, ``MlpBlock_0/Dense_{0,1}``;
``Transformer/encoder_norm``; ``MAPHead_0``; ``head``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vla_jax.models import config_dicts

Array = jax.Array

# big_vision ViT shapes by name (SigLIP / big_vision vit.py decode_variant; So400m from "Getting
# ViT in Shape", Alabdulmohsin et al. 2023: width 1152, depth 27, MLP 4304, 16 heads).
_WIDTH = {"mu": 32, "Ti": 192, "S": 384, "M": 512, "B": 768, "L": 1024, "So400m": 1152,
          "H": 1280, "g": 1408, "G": 1664}
_DEPTH = {"mu": 1, "Ti": 12, "S": 12, "M": 12, "B": 12, "L": 24, "So400m": 27, "H": 32, "g": 40,
          "G": 48}
_MLP = {"mu": 128, "Ti": 768, "S": 1536, "M": 2048, "B": 3072, "L": 4096, "So400m": 4304,
        "H": 5120, "g": 6144, "G": 8192}
_HEADS = {"mu": 2, "Ti": 3, "S": 6, "M": 8, "B": 12, "L": 16, "So400m": 16, "H": 16, "g": 16,
          "G": 16}
# Project-specific CPU size (used at 64x64 images, 8x8 patches -> 64 tokens); sized with
# benchmarks/backbone.py so the tiny backbone trains at ~0.5 s/step at batch 64 on 2 CPU cores.
_WIDTH["tiny"], _DEPTH["tiny"], _MLP["tiny"], _HEADS["tiny"] = 128, 2, 256, 4


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """Shape and options of the image encoder.

  Attributes:
    width, depth, mlp_dim, num_heads: transformer shape.
    patch_size: square patch side in pixels.
    stem: "patch" (one linear patch embedding, SigLIP) or "conv" (a stack of stride-2 3x3
      convolutions down to the patch grid, then a 1x1 projection: the "early convolutions" stem
      of Xiao et al. 2021, which trains faster from scratch; for small CPU models only, as
      pretrained SigLIP weights use "patch").
    film: FiLM-condition the conv stem on a vector (RT-1, Brohan et al. 2022, conditions its
      image encoder on the instruction this way): after every stem conv's norm,
      ``x * (1 + gamma(c)) + beta(c)`` with ``gamma, beta`` linear in ``LayerNorm(c)`` and
      zero-initialised (identity at init). The tokens then encode what the instruction asks
      for, which a small from-scratch model otherwise has to learn through attention.
      Needs ``stem="conv"``; the caller passes ``cond`` [B, C].
    keypoints: K > 0 adds one token of spatial-softmax keypoints (Levine et al. 2016; Diffusion
      Policy's image encoder ends in the same layer): a 3x3 conv on the stem's stride-4 feature
      map (after FiLM, so keypoints can follow the instruction) gives K heatmaps, each softmaxed
      over the map; their expected (x, y) image coordinates in [-1, 1] ([B, 2K]) are projected to
      one extra token placed after the patch tokens (``num_tokens = num_patches + 1``). A token
      grid of 16-px patches says *which* patch holds an object; the keypoints say *where* in it,
      with sub-patch precision, as numbers a small head can relate to the proprio state.
      Needs ``stem="conv"`` and ``patch_size >= 8``. 0 = off.
    image_size: square input side in pixels (inputs must match exactly).
    posemb: "learn" (a [1, N, W] parameter) or "sincos2d" (fixed).
    pool_type: "none" (all N tokens), "map" (attention pooling, one token) or "gap" (mean).
    head_dim: output width of the final linear ``head``; 0 = no head.
    ln_eps: LayerNorm epsilon (1e-6 in SigLIP).
    scan: stack layers with ``nn.scan``; remat: rematerialise each block in the backward pass.
    dtype: compute dtype name; parameters stay float32.
  """

  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  patch_size: int = 14
  stem: str = "patch"
  film: bool = False
  keypoints: int = 0
  image_size: int = 224
  posemb: str = "learn"
  pool_type: str = "none"
  head_dim: int = 0
  ln_eps: float = 1e-6
  scan: bool = False
  remat: bool = False
  dtype: str = "float32"

  def __post_init__(self):
    if self.image_size % self.patch_size:
      raise ValueError(f"ViTConfig: image_size={self.image_size} not a multiple of "
                       f"patch_size={self.patch_size}")
    if self.stem not in ("patch", "conv"):
      raise ValueError(f"ViTConfig: stem='{self.stem}' not in ('patch', 'conv')")
    if self.stem == "conv" and self.patch_size & (self.patch_size - 1):
      raise ValueError(f"ViTConfig: stem='conv' needs a power-of-two patch_size, got "
                       f"{self.patch_size}")
    if self.film and self.stem != "conv":
      raise ValueError(f"ViTConfig: film=True needs stem='conv', got stem='{self.stem}'")
    if self.keypoints < 0 or (self.keypoints and (self.stem != "conv" or self.patch_size < 8)):
      raise ValueError(f"ViTConfig: keypoints={self.keypoints} needs keypoints >= 0 and, when on, "
                       f"stem='conv' with patch_size >= 8 (got stem='{self.stem}', "
                       f"patch_size={self.patch_size})")
    if self.posemb not in ("learn", "sincos2d"):
      raise ValueError(f"ViTConfig: posemb='{self.posemb}' not in ('learn', 'sincos2d')")
    if self.pool_type not in ("none", "map", "gap"):
      raise ValueError(f"ViTConfig: pool_type='{self.pool_type}' not in ('none', 'map', 'gap')")
    if self.width % self.num_heads:
      raise ValueError(f"ViTConfig: width={self.width} not divisible by "
                       f"num_heads={self.num_heads}")

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  @property
  def num_tokens(self) -> int:
    """Output tokens per image (pool_type "none"): the patches, plus the keypoint token."""
    return self.num_patches + (1 if self.keypoints else 0)

  @classmethod
  def from_dict(cls, d: Any) -> ViTConfig:
    """Builds a config from a dict / ConfigDict; unknown keys fail by name."""
    return config_dicts.from_dict(cls, d)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def get_config(variant: str, **overrides: Any) -> ViTConfig:
  """``"So400m/14"`` -> ViTConfig (name from the tables above, ``/p`` the patch size)."""
  m = re.fullmatch(r"(\w+)(?:/(\d+))?", variant)
  if not m or m.group(1) not in _WIDTH:
    raise KeyError(f"Unknown ViT variant '{variant}'; known: "
                   f"{sorted(_WIDTH)} with an optional '/patch' suffix")
  name = m.group(1)
  kw = {"width": _WIDTH[name], "depth": _DEPTH[name], "mlp_dim": _MLP[name],
        "num_heads": _HEADS[name]}
  if m.group(2):
    kw["patch_size"] = int(m.group(2))
  kw.update(overrides)
  return ViTConfig(**kw)


def posemb_sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
  """Fixed 2-D sine-cosine position embedding, float32 [1, h * w, width] (MoCo v3 recipe)."""
  if width % 4:
    raise ValueError(f"sincos2d posemb needs width % 4 == 0, got {width}")
  y, x = np.mgrid[:h, :w]
  omega = 1.0 / temperature ** (np.arange(width // 4) / (width // 4 - 1))
  y = y.reshape(-1)[:, None] * omega[None]
  x = x.reshape(-1)[:, None] * omega[None]
  pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
  return pe[None].astype(np.float32)


def spatial_softmax(heatmaps: Array) -> Array:
  """Expected image coordinates of softmaxed heatmaps (Levine et al. 2016).

  Args:
    heatmaps: float [B, h, w, K] logits.

  Returns:
    float32 [B, 2K]: ``(x_1, y_1, ..., x_K, y_K)``, the softmax-weighted mean column (x) and row
    (y) of each map, in [-1, 1] (-1 = left / top cell centre, +1 = right / bottom).
  """
  b, h, w, k = heatmaps.shape
  p = jax.nn.softmax(heatmaps.astype(jnp.float32).reshape(b, h * w, k), axis=1)
  ys, xs = np.meshgrid(np.linspace(-1.0, 1.0, h), np.linspace(-1.0, 1.0, w), indexing="ij")
  coords = jnp.asarray(np.stack([xs.reshape(-1), ys.reshape(-1)], -1), jnp.float32)  # [h*w, 2]
  return jnp.einsum("bnk,nc->bkc", p, coords).reshape(b, 2 * k)


class MlpBlock(nn.Module):
  """Dense -> GELU (tanh approximation, as SigLIP) -> Dense."""

  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    width = x.shape[-1]
    init = {"kernel_init": nn.initializers.xavier_uniform(),
            "bias_init": nn.initializers.normal(stddev=1e-6)}
    x = nn.Dense(self.mlp_dim, dtype=self.dtype, **init)(x)
    x = nn.gelu(x, approximate=True)
    return nn.Dense(width, dtype=self.dtype, **init)(x)


class Encoder1DBlock(nn.Module):
  """Pre-norm block; ``(x, _) -> (x, None)`` so it can be the body of ``nn.scan``."""

  mlp_dim: int
  num_heads: int
  ln_eps: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, _=None):
    y = nn.LayerNorm(epsilon=self.ln_eps, dtype=self.dtype)(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, kernel_init=nn.initializers.xavier_uniform(),
        dtype=self.dtype)(y, y)
    x = x + y
    y = nn.LayerNorm(epsilon=self.ln_eps, dtype=self.dtype)(x)
    y = MlpBlock(self.mlp_dim, dtype=self.dtype)(y)
    return x + y, None


class Encoder(nn.Module):
  """The block stack and the final ``encoder_norm``."""

  config: ViTConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = self.config
    dtype = jnp.dtype(c.dtype)
    block = nn.remat(Encoder1DBlock, prevent_cse=not c.scan) if c.remat else Encoder1DBlock
    if c.scan:
      x, _ = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                     length=c.depth)(c.mlp_dim, c.num_heads, c.ln_eps, dtype,
                                     name="encoderblock")(x, None)
    else:
      for i in range(c.depth):
        x, _ = block(c.mlp_dim, c.num_heads, c.ln_eps, dtype, name=f"encoderblock_{i}")(x, None)
    return nn.LayerNorm(epsilon=c.ln_eps, dtype=dtype, name="encoder_norm")(x)


class MAPHead(nn.Module):
  """Multi-head attention pooling: a learned probe attends over the tokens; [B, N, W] -> [B, W]."""

  mlp_dim: int
  num_heads: int
  ln_eps: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, _, w = x.shape
    probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, w))
    probe = jnp.broadcast_to(probe.astype(x.dtype), (b, 1, w))
    x = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, kernel_init=nn.initializers.xavier_uniform(),
        dtype=self.dtype)(probe, x)
    y = nn.LayerNorm(epsilon=self.ln_eps, dtype=self.dtype)(x)
    x = x + MlpBlock(self.mlp_dim, dtype=self.dtype)(y)
    return x[:, 0]


class ViT(nn.Module):
  """Image encoder.

  ``__call__(images, cond=None)``: float [B, S, S, 3] in [-1, 1] (S = ``config.image_size``)
  and, with ``config.film``, a conditioning vector ``cond`` float [B, C] ->
  ``(out, aux)`` where ``out`` is [B, N, D] for pool_type "none" (N = ``config.num_tokens``:
  the (S / patch)^2 patches in row-major order, then the keypoint token if ``keypoints``) or
  [B, D] otherwise, D = ``head_dim`` or ``width``; ``aux`` holds
  ``encoded`` [B, N, W] (after the final norm) and ``pre_logits``.
  """

  config: ViTConfig

  @nn.compact
  def __call__(self, images: Array, cond: Array | None = None
               ) -> tuple[Array, dict[str, Array]]:
    c = self.config
    dtype = jnp.dtype(c.dtype)
    expect = (c.image_size, c.image_size, 3)
    if images.ndim != 4 or tuple(images.shape[1:]) != expect:
      raise ValueError(f"ViT: images shape {tuple(images.shape)}, expected [B, {expect[0]}, "
                       f"{expect[1]}, 3] (config image_size={c.image_size})")
    if not jnp.issubdtype(images.dtype, jnp.floating):
      raise ValueError(f"ViT: images dtype {images.dtype}; expected float in [-1, 1] "
                       "(convert uint8 with vlm.preprocess_images)")
    if c.film and (cond is None or cond.ndim != 2 or cond.shape[0] != images.shape[0]):
      raise ValueError(f"ViT: config film=True needs cond [B={images.shape[0]}, C], got "
                       f"{None if cond is None else tuple(cond.shape)}")
    if cond is not None and not c.film:
      raise ValueError("ViT: cond given but config film=False")
    p = c.patch_size
    x = images.astype(dtype)
    if c.film:
      cond = nn.LayerNorm(epsilon=c.ln_eps, dtype=dtype, name="film_norm")(cond.astype(dtype))
    if c.stem == "conv":
      # Channels double per stride-2 conv and reach width / 2 at the patch grid.
      n = p.bit_length() - 1
      for i in range(n):
        x = nn.Conv(max(c.width // 2 ** (n - i), 16), (3, 3), strides=(2, 2), padding="SAME",
                    dtype=dtype, name=f"stem_conv{i}")(x)
        x = nn.GroupNorm(num_groups=8, dtype=dtype, name=f"stem_norm{i}")(x)
        if c.film:
          gb = nn.Dense(2 * x.shape[-1], kernel_init=nn.initializers.zeros, dtype=dtype,
                        name=f"stem_film{i}")(cond)[:, None, None]
          x = x * (1.0 + gb[..., :x.shape[-1]]) + gb[..., x.shape[-1]:]
        x = nn.relu(x)
        if c.keypoints and i == 1:  # the stride-4 map
          keypoints = spatial_softmax(
              nn.Conv(c.keypoints, (3, 3), padding="SAME", dtype=dtype, name="keypoint_logits")(x))
      x = nn.Conv(c.width, (1, 1), dtype=dtype, name="embedding")(x)
    else:
      x = nn.Conv(c.width, (p, p), strides=(p, p), padding="VALID", dtype=dtype,
                  name="embedding")(x)
    b, gh, gw, _ = x.shape
    x = x.reshape(b, gh * gw, c.width)
    if c.posemb == "learn":
      pos = self.param("pos_embedding", nn.initializers.normal(stddev=1 / np.sqrt(c.width)),
                       (1, gh * gw, c.width))
    else:
      pos = posemb_sincos_2d(gh, gw, c.width)
    x = x + pos.astype(dtype)
    if c.keypoints:
      kp = nn.Dense(c.width, dtype=dtype, name="keypoint_embedding")(keypoints)
      x = jnp.concatenate([x, kp[:, None]], axis=1)
    encoded = Encoder(c, name="Transformer")(x)
    aux = {"encoded": encoded}
    if c.pool_type == "map":
      x = MAPHead(c.mlp_dim, c.num_heads, c.ln_eps, dtype, name="MAPHead_0")(encoded)
    elif c.pool_type == "gap":
      x = jnp.mean(encoded, axis=1)
    else:
      x = encoded
    aux["pre_logits"] = x
    if c.head_dim:
      x = nn.Dense(c.head_dim, dtype=dtype, name="head")(x)
    return x, aux
