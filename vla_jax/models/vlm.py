"""PaliGemma-style vision-language backbone: SigLIP ViT tokens -> linear projection -> Gemma.

The prefix is ``[image tokens of camera 0, camera 1, ..., text tokens]``. Image tokens are the ViT
outputs projected to the LM width by the ViT's linear ``head`` (PaliGemma's multi-modal
projector) and enter the LM unscaled; text tokens are embedded and scaled by sqrt(width) (as in
PaliGemma). The prefix attends bidirectionally to itself (``mask_ar`` all zero); heads append
their own streams / suffix tokens through :meth:`VLM.__call__` (the Gemma expert API).

Typical use (all inside ``jit``)::

  vlm = VLM(VLMConfig.from_config(backbone_config("tiny")), experts=(expert_cfg,))
  emb, mask, ar = vlm.apply(params, images, tokens, tok_mask, method=VLM.embed_prefix)
  hidden, cache = vlm.apply(params, images, tokens, tok_mask, method=VLM.run_prefix)[1:]
  # suffix stream of expert 1 attending to the cached prefix (cache not mutated):
  (_, out), _ = vlm.apply(params, [None, suffix], positions, mask, cache)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vla_jax.models import gemma, vit

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class VLMConfig:
  """Backbone shape: image encoder, language model, the cameras it reads, layer stacking.

  The ViT's ``head_dim`` is forced to the LM width (the projection into the LM).
  """

  vit: vit.ViTConfig
  llm: gemma.GemmaConfig
  cameras: tuple[str, ...] = ("base",)
  scan: bool = False
  remat: bool = False

  def __post_init__(self):
    if self.vit.head_dim != self.llm.width:
      object.__setattr__(self, "vit", dataclasses.replace(self.vit, head_dim=self.llm.width))
    if self.vit.pool_type != "none":
      raise ValueError(f"VLMConfig: the ViT must keep all tokens (pool_type='none'), got "
                       f"'{self.vit.pool_type}'")
    object.__setattr__(self, "cameras", tuple(self.cameras))
    if not self.cameras:
      raise ValueError("VLMConfig: at least one camera is required")

  @property
  def tokens_per_image(self) -> int:
    return self.vit.num_tokens

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict | Mapping[str, Any]) -> VLMConfig:
    """From :func:`backbone_config`'s ConfigDict (keys ``vit``, ``llm``, ``cameras``, ``scan``,
    ``remat``, ``variant``); unknown keys fail by name."""
    d = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    known = {"variant", "vit", "llm", "cameras", "scan", "remat"}
    unknown = sorted(set(d) - known)
    if unknown:
      raise KeyError(f"backbone config: unknown keys {unknown}; known: {sorted(known)}")
    scan, remat = bool(d.get("scan", False)), bool(d.get("remat", False))
    return cls(vit=vit.ViTConfig.from_dict({**d["vit"], "scan": scan, "remat": remat}),
               llm=gemma.GemmaConfig.from_dict(d["llm"]),
               cameras=tuple(d.get("cameras", ("base",))), scan=scan, remat=remat)


def backbone_config(variant: str = "tiny", **overrides: Any) -> ml_collections.ConfigDict:
  """The backbone as a ConfigDict that policy configs can embed.

  Variants:
    ``tiny``: ViT depth 2, width 128, MLP 256 over 64x64 images with 8x8 patches (64 tokens);
      Gemma depth 2, width 128, GeGLU 256, 4 heads / 1 KV head of 32, vocab 512 (the text
      tokenizer is fitted on the instruction corpus). About 0.5 s per forward+backward at batch
      64 on 2 CPU cores (benchmarks/backbone.py).
    ``paligemma_3b``: SigLIP So400m/14 at 224 px (256 tokens) + Gemma 2B, vocab 257152
      (PaliGemma-3B; about 2.92B parameters).
  ``overrides`` replace top-level keys (``cameras``, ``scan``, ``remat``).
  """
  if variant == "tiny":
    v = vit.get_config("tiny", patch_size=8, image_size=64)
    llm = gemma.get_config("tiny")
  elif variant == "paligemma_3b":
    v = vit.get_config("So400m/14", image_size=224)
    llm = gemma.get_config("gemma_2b")
  else:
    raise KeyError(f"Unknown backbone variant '{variant}'; known: ['paligemma_3b', 'tiny']")
  v = dataclasses.replace(v, head_dim=llm.width)
  d = {"variant": variant, "vit": v.to_dict(), "llm": llm.to_dict(), "cameras": ("base",),
       "scan": variant != "tiny", "remat": variant != "tiny"}
  for k, val in overrides.items():
    if k not in d:
      raise KeyError(f"backbone_config: unknown override '{k}'; known: {sorted(d)}")
    d[k] = val
  for k in ("vit", "llm"):  # Scan/remat live at top level; the sub-dicts must not disagree.
    d[k].pop("scan", None)
    d[k].pop("remat", None)
  return ml_collections.ConfigDict(d)


def preprocess_images(images: Array, where: str = "image") -> Array:
  """uint8 [..., H, W, 3] in [0, 255] -> float32 in [-1, 1] (SigLIP); floats pass through.

  Raises ValueError for any other dtype or a last axis other than 3, naming ``where``.
  """
  if images.shape[-1] != 3:
    raise ValueError(f"{where}: expected RGB images [..., H, W, 3], got shape "
                     f"{tuple(images.shape)}")
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 127.5 - 1.0
  if jnp.issubdtype(images.dtype, jnp.floating):
    return images
  raise ValueError(f"{where}: images must be uint8 [0, 255] or float [-1, 1], got dtype "
                   f"{images.dtype}")


class VLM(nn.Module):
  """ViT + Gemma backbone with optional extra Gemma experts (for action heads).

  Attributes:
    config: the backbone shape.
    experts: extra :class:`gemma.GemmaConfig` streams (expert 1, 2, ...) that share attention with
      the LM in every layer; their weights live under ``llm`` with ``_i`` suffixes.
  """

  config: VLMConfig
  experts: tuple[gemma.GemmaConfig, ...] = ()

  def setup(self):
    self.img = vit.ViT(self.config.vit, name="img")
    self.llm = gemma.Transformer((self.config.llm, *self.experts), scan=self.config.scan,
                                 remat=self.config.remat, name="llm")

  def embed_images(self, images: Mapping[str, Array], cond: Array | None = None) -> Array:
    """Per-camera images -> LM-width tokens.

    Args:
      images: ``{camera: uint8 [B, H, W, 3] or [B, T, H, W, 3]}`` (or float in [-1, 1]) with at
        least the configured cameras (others are ignored).
      cond: float [B, C], the FiLM conditioning of a ``vit.film`` backbone (shared by every
        camera and frame of a row); None otherwise.

    Returns:
      float [B, C * T * N, W_llm]: camera-major, then frame, then patch (row-major).
    """
    c = self.config
    missing = [cam for cam in c.cameras if f"image/{cam}" not in images and cam not in images]
    if missing:
      raise KeyError(f"VLM: missing camera(s) {missing}; got {sorted(images)} (configured "
                     f"cameras {list(c.cameras)})")
    xs = []
    for cam in c.cameras:
      x = images[f"image/{cam}"] if f"image/{cam}" in images else images[cam]
      if x.ndim not in (4, 5):
        raise ValueError(f"VLM: camera '{cam}' images have shape {tuple(x.shape)}; expected "
                         "[B, H, W, 3] or [B, T, H, W, 3]")
      size = c.vit.image_size
      if tuple(x.shape[-3:]) != (size, size, 3):
        raise ValueError(f"VLM: camera '{cam}' images have shape {tuple(x.shape)}; the backbone "
                         f"expects {size}x{size} RGB ([..., {size}, {size}, 3])")
      xs.append(preprocess_images(x, where=f"VLM camera '{cam}'"))
    shapes = {tuple(x.shape) for x in xs}
    if len(shapes) != 1:
      raise ValueError(f"VLM: cameras {list(c.cameras)} have different shapes {sorted(shapes)}")
    x = jnp.stack(xs, axis=1)  # [B, C, (T,) H, W, 3]
    b = x.shape[0]
    # One ViT call over all cameras and frames: a bigger batch, one compiled graph.
    flat = x.reshape((-1,) + x.shape[-3:])
    if cond is not None:
      cond = jnp.repeat(cond, flat.shape[0] // b, axis=0)  # row-major [B, C, (T)] -> per image
    tokens, _ = self.img(flat, cond)
    return tokens.reshape(b, -1, tokens.shape[-1])

  def embed_text(self, tokens: Array) -> Array:
    """int [B, L] -> [B, L, W] (scaled by sqrt(W)); out-of-vocabulary ids fail (see gemma)."""
    return self.llm.embed(tokens)

  def logits(self, hidden: Array) -> Array:
    """LM hidden [..., W] -> float32 logits [..., V] (tied embedding)."""
    return self.llm.logits(hidden)

  def embed_prefix(self, images: Mapping[str, Array], text_tokens: Array, text_mask: Array,
                   image_masks: Mapping[str, Array] | None = None,
                   ) -> tuple[Array, Array, Array]:
    """The prefix: image tokens first, then text tokens.

    Args:
      images: see :meth:`embed_images`.
      text_tokens: int32 [B, L]; text_mask: bool [B, L].
      image_masks: optional ``{camera: bool [B] or [B, T]}``; False marks a missing image (or a
        padded history frame), whose tokens are masked out. Default: all valid.

    Returns:
      ``(embeddings [B, P, W], prefix_mask bool [B, P], mask_ar int32 [B, P])`` with
      P = C * T * N + L; ``mask_ar`` is all zeros (the prefix is one bidirectional block).
    """
    if text_tokens.shape != text_mask.shape or text_tokens.ndim != 2:
      raise ValueError(f"VLM: text_tokens {tuple(text_tokens.shape)} and text_mask "
                       f"{tuple(text_mask.shape)} must both be [B, L]")
    txt = self.embed_text(text_tokens)
    cond = None
    if self.config.vit.film:
      # The instruction as a bag of token embeddings (masked mean) conditions the image stem.
      w = jnp.asarray(text_mask, txt.dtype)[..., None]
      cond = jnp.sum(txt * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)
    img = self.embed_images(images, cond)
    b = txt.shape[0]
    if img.shape[0] != b:
      raise ValueError(f"VLM: image batch {img.shape[0]} != text batch {b}")
    n = self.config.tokens_per_image
    masks = []
    for cam in self.config.cameras:
      frames = img.shape[1] // (n * len(self.config.cameras))
      m = jnp.ones((b, frames), bool) if not image_masks or cam not in image_masks else (
          jnp.asarray(image_masks[cam], bool).reshape(b, frames))
      masks.append(jnp.repeat(m, n, axis=1))
    prefix_mask = jnp.concatenate([*masks, jnp.asarray(text_mask, bool)], axis=1)
    emb = jnp.concatenate([img.astype(txt.dtype), txt], axis=1)
    return emb, prefix_mask, jnp.zeros(prefix_mask.shape, jnp.int32)

  def run_prefix(self, images: Mapping[str, Array], text_tokens: Array, text_mask: Array,
                 image_masks: Mapping[str, Array] | None = None):
    """Embeds the prefix and runs it through the LM.

    Returns:
      ``(hidden [B, P, W], prefix_mask bool [B, P], cache)`` where ``cache`` is the read-only
      ``{"k", "v"}`` [depth, B, P, K, H]. Positions are ``cumsum(prefix_mask) - 1``; a suffix
      continues at ``prefix_mask.sum(-1)``.
    """
    emb, mask, ar = self.embed_prefix(images, text_tokens, text_mask, image_masks)
    positions = jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1
    (hidden,), cache = self.llm([emb], positions, gemma.make_attn_mask(mask, ar))
    return hidden, mask, cache

  def forward_all(self, images: Mapping[str, Array], text_tokens: Array, text_mask: Array,
                  expert_embedded: Sequence[Array] = (), image_masks=None):
    """Prefix and every expert stream in one pass (training; also the way to ``init`` all
    expert weights, since linen creates a stream's weights only when it is used).

    Masking: the prefix is one bidirectional block; each expert stream i >= 1 is one further
    block (``mask_ar`` = 1 on its first token), so it sees the prefix and earlier streams, and
    the prefix never sees it.

    Args:
      images, text_tokens, text_mask, image_masks: as in :meth:`embed_prefix`.
      expert_embedded: one float [B, L_i, W_i] per expert in ``experts``.

    Returns:
      list of final-normed hidden states: [prefix [B, P, W], expert 1 [B, L_1, W_1], ...].
    """
    if len(expert_embedded) != len(self.experts):
      raise ValueError(f"VLM.forward_all: {len(expert_embedded)} expert streams for "
                       f"{len(self.experts)} experts")
    emb, mask, ar = self.embed_prefix(images, text_tokens, text_mask, image_masks)
    masks, ars = [mask], [ar]
    for x in expert_embedded:
      b, length = x.shape[:2]
      masks.append(jnp.ones((b, length), bool))
      ars.append(jnp.zeros((b, length), jnp.int32).at[:, 0].set(1))
    full_mask = jnp.concatenate(masks, axis=1)
    positions = jnp.cumsum(full_mask.astype(jnp.int32), axis=1) - 1
    attn = gemma.make_attn_mask(full_mask, jnp.concatenate(ars, axis=1))
    hidden, _ = self.llm([emb, *expert_embedded], positions, attn)
    return hidden

  def __call__(self, embedded: Sequence[Array | None], positions: Array, mask: Array,
               cache: dict | None = None):
    """The Gemma expert API (see :meth:`gemma.Transformer.__call__`)."""
    return self.llm(embedded, positions, mask, cache)
