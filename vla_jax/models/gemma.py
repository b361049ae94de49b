"""Gemma decoder (Flax linen) with optional expert streams that share attention (pi0 pattern).

Architecture (Gemma 1, as used by PaliGemma): token embedding scaled by sqrt(width) and tied with
the output projection; pre-norm blocks with RMSNorm ``x * rsqrt(mean(x^2) + eps) * (1 + scale)``;
multi-query / grouped-query attention with rotary position embeddings (RoPE, "rotate half"
layout: the first and second halves of each head form the complex pairs); GeGLU MLP
(``gelu_tanh(x W_gate) * (x W_up)``); a final RMSNorm.

Experts. :class:`Transformer` takes a list of token streams, one per expert:
``embedded[0]`` is the language model's stream (width ``configs[0].width``) and ``embedded[i]``,
``i >= 1``, another expert with its own width, MLP size and its own weights in every layer (norms,
q/kv/out projections, MLP). In each layer the queries, keys and values of all present streams are
concatenated along the sequence, so the experts attend to each other as one sequence (the mask
decides who sees whom); the per-expert outputs are then split back. All experts must share
``depth``, ``num_heads``, ``num_kv_heads`` and ``head_dim``. A stream may be ``None`` (absent).

KV cache. ``cache`` selects one of three modes by its contents (all jit-able, static shapes):

* ``cache=None``: plain forward; the call also returns the keys/values of all processed tokens,
  ``{"k", "v"}`` each float [depth, B, L, K, H] (post-RoPE), usable as a read-only prefix cache.
* ``cache={"k", "v"}`` (read-only): the new tokens attend to the cached keys/values followed by
  their own; ``mask`` is [B, Lq, Lc + Lq]. The cache is returned unchanged, so flow matching can
  reuse one prefix cache for every integration step.
* ``cache={"k", "v", "index"}`` (append, for autoregressive decoding in ``lax.while_loop``): the
  buffers are preallocated [depth, B, S_max, K, H]; the new tokens' keys/values are written at
  ``index`` (int32 scalar), attention runs over the whole buffer with ``mask`` [B, Lq, S_max]
  (the caller masks slots not yet written) and the returned cache has ``index + Lq``.
  :func:`init_cache` makes an empty one; :func:`extend_cache` turns a prefix cache into one.

Parameter tree (big_vision names; expert ``i >= 1`` adds a ``_i`` suffix to every leaf module):
``embedder/input_embedding`` [V, W]; per layer ``pre_attention_norm/scale`` [W],
``attn/q_einsum/w`` [N, W, H], ``attn/kv_einsum/w`` [2, K, W, H], ``attn/attn_vec_einsum/w``
[N, H, W], ``pre_ffw_norm/scale`` [W], ``mlp/gating_einsum`` [2, W, F], ``mlp/linear`` [F, W];
``final_norm/scale`` [W]. Layers are ``layers/...`` with a leading [depth] axis when ``scan=True``
and ``layers_0 ... layers_{depth-1}`` otherwise (see ``weights.scan_to_layers``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vla_jax.models import config_dicts

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
  """Shape of one Gemma expert.

  Attributes:
    width: model (residual) width W.
    depth: number of decoder layers.
    mlp_dim: hidden size F of the GeGLU MLP.
    num_heads: query heads N.
    num_kv_heads: key/value heads K (1 = multi-query; N = multi-head; else grouped-query).
    head_dim: per-head size H.
    vocab_size: embedding rows V (only used by expert 0, the language model).
    rope_theta: RoPE max wavelength (10_000 in Gemma).
    rms_eps: RMSNorm epsilon.
    dtype: compute dtype name ("float32" or "bfloat16"); parameters stay float32.
  """

  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  vocab_size: int = 0
  rope_theta: float = 10_000.0
  rms_eps: float = 1e-6
  dtype: str = "float32"

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"GemmaConfig: num_heads={self.num_heads} must be a multiple of "
          f"num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"GemmaConfig: head_dim={self.head_dim} must be even (RoPE pairs)")

  @classmethod
  def from_dict(cls, d: Any) -> GemmaConfig:
    """Builds a config from a dict / ConfigDict; unknown keys fail by name."""
    return config_dicts.from_dict(cls, d)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


# Published Gemma shapes. gemma_2b is the PaliGemma-3B language model (Gemma report, Table 1:
# d_model 2048, 18 layers, 8 heads, 1 KV head, head_dim 256; its "feedforward hidden dims 32768"
# counts the GeGLU gate and up projections together, 2 x 16384); PaliGemma extends the vocabulary
# to 257152 (PaliGemma report, Sec. 3). gemma_300m is the pi0 action expert (pi0 paper, Sec. 4:
# width 1024, mlp 4096, same depth and heads as the 2B model).
_VARIANTS = {
    "gemma_2b": GemmaConfig(width=2048, depth=18, mlp_dim=16_384, num_heads=8, num_kv_heads=1,
                            head_dim=256, vocab_size=257_152),
    "gemma_300m": GemmaConfig(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1,
                              head_dim=256, vocab_size=0),
    # CPU-sized language model and action expert for the tiny VLA configs. Sized with
    # benchmarks/backbone.py: the tiny backbone's forward+backward at batch 64 takes ~0.5 s on a
    # loaded 2-core CPU (depth 4 / MLP 512 took 2 s).
    "tiny": GemmaConfig(width=128, depth=2, mlp_dim=256, num_heads=4, num_kv_heads=1,
                        head_dim=32, vocab_size=512),
    "tiny_expert": GemmaConfig(width=64, depth=2, mlp_dim=128, num_heads=4, num_kv_heads=1,
                               head_dim=32, vocab_size=0),
}


def get_config(variant: str, **overrides: Any) -> GemmaConfig:
  """Returns the named Gemma shape (``gemma_2b``, ``gemma_300m``, ``tiny``, ``tiny_expert``)."""
  if variant not in _VARIANTS:
    raise KeyError(f"Unknown Gemma variant '{variant}'; known: {sorted(_VARIANTS)}")
  return dataclasses.replace(_VARIANTS[variant], **overrides)


def make_attn_mask(input_mask: Array, mask_ar: Array) -> Array:
  """Prefix-LM attention mask from validity and autoregressive markers.

  Token i may attend to token j iff both are valid and ``cumsum(mask_ar)[j] <= cumsum(mask_ar)[i]``.
  ``mask_ar`` = 0 everywhere gives full bidirectional attention; 1 everywhere gives causal
  attention; zeros over a prefix then ones gives a prefix that sees itself only (bidirectionally)
  and a causal suffix that sees the prefix.

  Args:
    input_mask: bool [B, L], True for real tokens.
    mask_ar: int or bool [B, L], 1 where a token starts a new autoregressive block.

  Returns:
    bool [B, L, L] (query, key).
  """
  input_mask = jnp.asarray(input_mask, bool)
  cumsum = jnp.cumsum(jnp.asarray(mask_ar, jnp.int32), axis=1)
  attn = cumsum[:, None, :] <= cumsum[:, :, None]
  valid = input_mask[:, None, :] & input_mask[:, :, None]
  return attn & valid


def init_cache(config: GemmaConfig, batch: int, max_len: int, dtype: Any = jnp.float32) -> dict:
  """An empty append-mode cache: ``k``, ``v`` zeros [depth, B, max_len, K, H]; ``index`` 0."""
  shape = (config.depth, batch, max_len, config.num_kv_heads, config.head_dim)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
          "index": jnp.zeros((), jnp.int32)}


def extend_cache(cache: dict, max_len: int) -> dict:
  """Pads a read-only prefix cache [depth, B, L, K, H] to an append cache of ``max_len`` slots.

  The returned ``index`` is L, so decoding continues right after the prefix.
  """
  length = cache["k"].shape[2]
  if max_len < length:
    raise ValueError(f"extend_cache: max_len={max_len} < cached length {length}")
  pad = [(0, 0), (0, 0), (0, max_len - length), (0, 0), (0, 0)]
  return {"k": jnp.pad(cache["k"], pad), "v": jnp.pad(cache["v"], pad),
          "index": jnp.asarray(length, jnp.int32)}


def _suffix(name: str, i: int) -> str:
  return name if i == 0 else f"{name}_{i}"


class RMSNorm(nn.Module):
  """RMSNorm with Gemma's ``(1 + scale)`` gain (scale initialised at 0); computed in float32."""

  eps: float = 1e-6

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("scale", nn.initializers.zeros_init(), (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(var + self.eps) * (1.0 + scale)
    return y.astype(x.dtype)


class EinsumWeight(nn.Module):
  """Holds a bias-free weight ``w`` of ``shape`` (big_vision's einsum layout) and returns it.

  The callers contract it as one 2-D matmul (weight reshaped to [in, out]); on this project's
  CPUs XLA ran that faster than the equivalent multi-axis einsums (benchmarks/backbone.py).
  """

  shape: tuple[int, ...]
  in_axis: int | tuple[int, ...] = -2
  out_axis: int | tuple[int, ...] = -1

  @nn.compact
  def __call__(self) -> Array:
    init = nn.initializers.variance_scaling(
        1.0, "fan_in", "truncated_normal", in_axis=self.in_axis, out_axis=self.out_axis)
    return self.param("w", init, self.shape)


def _matmul(x: Array, w: Array) -> Array:
  """[..., d] @ [d, f] in the dtype of ``x``."""
  return jnp.dot(x, w.astype(x.dtype))


def apply_rope(x: Array, positions: Array, theta: float) -> Array:
  """Rotary embedding, transformers' ``rotate_half`` layout.

  Args:
    x: [B, L, heads, H].
    positions: int [B, L] absolute positions.
    theta: max wavelength.

  Returns:
    [B, L, heads, H], same dtype as ``x``.
  """
  half = x.shape[-1] // 2
  inv_freq = 1.0 / theta ** (jnp.arange(half, dtype=jnp.float32) * 2.0 / x.shape[-1])
  angle = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, L, H/2]
  sin, cos = jnp.sin(angle)[..., None, :], jnp.cos(angle)[..., None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class Attention(nn.Module):
  """Shared multi-expert GQA attention: per-expert projections, one attention over all tokens."""

  configs: tuple[GemmaConfig, ...]

  @nn.compact
  def __call__(self, xs, positions, mask, kv_cache, index):
    c0 = self.configs[0]
    n, k, h = c0.num_heads, c0.num_kv_heads, c0.head_dim
    qs, ks, vs = [], [], []
    for i, x in enumerate(xs):
      if x is None:
        continue
      w = self.configs[i].width
      wq = EinsumWeight((n, w, h), in_axis=1, out_axis=(0, 2), name=_suffix("q_einsum", i))()
      wkv = EinsumWeight((2, k, w, h), in_axis=2, out_axis=(0, 1, 3),
                         name=_suffix("kv_einsum", i))()
      q = _matmul(x, wq.transpose(1, 0, 2).reshape(w, n * h))
      kv = _matmul(x, wkv.transpose(2, 0, 1, 3).reshape(w, 2 * k * h))
      kv = kv.reshape(x.shape[:2] + (2, k, h))
      qs.append(q.reshape(x.shape[:2] + (n, h)))
      ks.append(kv[:, :, 0])
      vs.append(kv[:, :, 1])
    q = jnp.concatenate(qs, axis=1)
    key = jnp.concatenate(ks, axis=1)
    value = jnp.concatenate(vs, axis=1)
    q = apply_rope(q, positions, c0.rope_theta)
    key = apply_rope(key, positions, c0.rope_theta)
    new_kv = {"k": key, "v": value}  # What this call contributes (returned for cache=None).
    if kv_cache is not None and index is None:  # Read-only: prepend the cached prefix.
      key = jnp.concatenate([kv_cache["k"].astype(key.dtype), key], axis=1)
      value = jnp.concatenate([kv_cache["v"].astype(value.dtype), value], axis=1)
    elif kv_cache is not None:  # Append: write at index, attend over the whole buffer.
      start = (0, index, 0, 0)
      key = jax.lax.dynamic_update_slice(kv_cache["k"], key.astype(kv_cache["k"].dtype), start)
      value = jax.lax.dynamic_update_slice(kv_cache["v"], value.astype(kv_cache["v"].dtype), start)
      new_kv = {"k": key, "v": value}
      key, value = key.astype(q.dtype), value.astype(q.dtype)
    if mask.shape != (q.shape[0], q.shape[1], key.shape[1]):
      raise ValueError(
          f"gemma attention: mask shape {mask.shape} != (batch, queries, keys) = "
          f"{(q.shape[0], q.shape[1], key.shape[1])}")
    # XLA implementation: exact softmax in float32 for float32 inputs; GQA handled natively.
    out = jax.nn.dot_product_attention(q, key, value, mask=mask[:, None, :, :],
                                       implementation="xla")
    outs, start = [], 0
    for i, x in enumerate(xs):
      if x is None:
        outs.append(None)
        continue
      length = x.shape[1]
      o = out[:, start:start + length]
      start += length
      w = self.configs[i].width
      wo = EinsumWeight((n, h, w), in_axis=(0, 1), out_axis=2, name=_suffix("attn_vec_einsum", i))()
      outs.append(_matmul(o.reshape(o.shape[:2] + (n * h,)), wo.reshape(n * h, w)))
    return outs, new_kv


class FeedForward(nn.Module):
  """GeGLU MLP: ``linear(gelu_tanh(x @ gate[0]) * (x @ gate[1]))``."""

  width: int
  mlp_dim: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    w_gate = EinsumWeight((2, self.width, self.mlp_dim), in_axis=1, out_axis=2,
                          name="gating_einsum")()
    w_out = EinsumWeight((self.mlp_dim, self.width), in_axis=0, out_axis=1, name="linear")()
    gate = _matmul(x, w_gate.transpose(1, 0, 2).reshape(self.width, 2 * self.mlp_dim))
    gate = gate.reshape(x.shape[:-1] + (2, self.mlp_dim))
    hidden = nn.gelu(gate[..., 0, :], approximate=True) * gate[..., 1, :]
    return _matmul(hidden, w_out)


class Block(nn.Module):
  """One pre-norm decoder layer over all expert streams.

  ``__call__(xs, positions, mask, kv_cache, index) -> (xs, new_kv)``; ``xs`` is a tuple of
  [B, L_i, W_i] or None; see the module docstring for the cache modes.
  """

  configs: tuple[GemmaConfig, ...]

  @nn.compact
  def __call__(self, xs, positions, mask, kv_cache, index):
    normed = [None if x is None else
              RMSNorm(c.rms_eps, name=_suffix("pre_attention_norm", i))(x)
              for i, (x, c) in enumerate(zip(xs, self.configs))]
    attn, new_kv = Attention(self.configs, name="attn")(normed, positions, mask, kv_cache, index)
    outs = []
    for i, (x, a, c) in enumerate(zip(xs, attn, self.configs)):
      if x is None:
        outs.append(None)
        continue
      x = x + a
      y = RMSNorm(c.rms_eps, name=_suffix("pre_ffw_norm", i))(x)
      y = FeedForward(c.width, c.mlp_dim, name=_suffix("mlp", i))(y)
      outs.append(x + y)
    return tuple(outs), new_kv


class Transformer(nn.Module):
  """Gemma decoder over one or more expert streams (see module docstring).

  Attributes:
    configs: one :class:`GemmaConfig` per expert; expert 0 is the language model (owns the tied
      token embedding).
    scan: stack layers with ``nn.scan`` (params get a leading [depth] axis).
    remat: rematerialise each layer in the backward pass (saves activation memory).
  """

  configs: tuple[GemmaConfig, ...]
  scan: bool = False
  remat: bool = False

  def setup(self):
    c0 = self.configs[0]
    for i, c in enumerate(self.configs[1:], 1):
      for f in ("depth", "num_heads", "num_kv_heads", "head_dim"):
        if getattr(c, f) != getattr(c0, f):
          raise ValueError(f"gemma expert {i}: {f}={getattr(c, f)} differs from expert 0's "
                           f"{getattr(c0, f)}; experts share attention and must match")
    self.embedder = nn.Embed(c0.vocab_size, c0.width,
                             embedding_init=nn.initializers.normal(1.0 / np.sqrt(c0.width)),
                             name="embedder")
    if self.scan:
      block = nn.remat(Block, prevent_cse=False) if self.remat else Block
      self.layers = nn.scan(
          block, variable_axes={"params": 0}, split_rngs={"params": True},
          in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast), length=c0.depth,
      )(self.configs, name="layers")
    else:
      block = nn.remat(Block, prevent_cse=True) if self.remat else Block
      self.layers = [block(self.configs, name=f"layers_{i}") for i in range(c0.depth)]
    self.final_norms = [RMSNorm(c.rms_eps, name=_suffix("final_norm", i))
                        for i, c in enumerate(self.configs)]

  @property
  def _dtype(self):
    return jnp.dtype(self.configs[0].dtype)

  def embed(self, tokens: Array) -> Array:
    """Token ids int [B, L] -> embeddings [B, L, W] scaled by sqrt(W), in the compute dtype.

    Out-of-vocabulary ids raise a ValueError when ``tokens`` is concrete; under ``jit`` they
    embed as NaN (never as a silently valid row).
    """
    vocab = self.configs[0].vocab_size
    if not isinstance(tokens, jax.core.Tracer):
      t = np.asarray(tokens)
      bad = np.argwhere((t < 0) | (t >= vocab))
      if bad.size:
        raise ValueError(
            f"gemma embed: token ids out of vocabulary [0, {vocab}): value {t[tuple(bad[0])]} at "
            f"index {tuple(int(b) for b in bad[0])} ({len(bad)} bad ids in tokens of shape "
            f"{t.shape})")
    table = self.embedder.embedding
    x = jnp.take(table, tokens, axis=0, mode="fill", fill_value=jnp.nan)
    return (x * np.sqrt(self.configs[0].width)).astype(self._dtype)

  def logits(self, hidden: Array) -> Array:
    """Final-normed hidden [..., W] -> float32 logits [..., V] (tied embedding)."""
    table = self.embedder.embedding
    return jnp.einsum("...d,vd->...v", hidden.astype(jnp.float32), table.astype(jnp.float32))

  def __call__(self, embedded: Sequence[Array | None], positions: Array, mask: Array,
               cache: dict | None = None) -> tuple[list[Array | None], dict | None]:
    """Runs all layers.

    Args:
      embedded: one entry per expert (len <= len(configs)): float [B, L_i, W_i] or None.
      positions: int [B, sum L_i] RoPE positions of the present tokens, in stream order.
      mask: bool [B, sum L_i, keys], keys = sum L_i (no cache), Lc + sum L_i (read cache) or
        S_max (append cache).
      cache: None, ``{"k", "v"}`` (read-only) or ``{"k", "v", "index"}`` (append).

    Returns:
      (hidden, cache): ``hidden`` a list with the final-normed [B, L_i, W_i] per expert (None for
      absent streams); ``cache`` the new tokens' ``{"k", "v"}`` [depth, B, sum L_i, K, H] when no
      cache was given, the same cache (read) or the updated one with ``index + sum L_i`` (append).
    """
    if len(embedded) > len(self.configs):
      raise ValueError(f"gemma: {len(embedded)} streams for {len(self.configs)} expert configs")
    xs = list(embedded) + [None] * (len(self.configs) - len(embedded))
    present = [x for x in xs if x is not None]
    if not present:
      raise ValueError("gemma: all streams are None")
    for i, (x, c) in enumerate(zip(xs, self.configs)):
      if x is not None and (x.ndim != 3 or x.shape[-1] != c.width):
        raise ValueError(f"gemma: stream {i} has shape {x.shape}, expected [B, L, {c.width}]")
    total = sum(x.shape[1] for x in present)
    if positions.shape != (present[0].shape[0], total):
      raise ValueError(f"gemma: positions shape {positions.shape} != (batch, sum L_i) = "
                       f"{(present[0].shape[0], total)}")
    xs = tuple(None if x is None else x.astype(self._dtype) for x in xs)
    kv_in = None if cache is None else {"k": cache["k"], "v": cache["v"]}
    index = None if cache is None else cache.get("index")
    if self.scan:
      xs, kv = self.layers(xs, positions, mask, kv_in, index)
    else:
      kvs = []
      for i, layer in enumerate(self.layers):
        layer_kv = None if kv_in is None else jax.tree.map(lambda a, i=i: a[i], kv_in)
        xs, kv_i = layer(xs, positions, mask, layer_kv, index)
        kvs.append(kv_i)
      kv = jax.tree.map(lambda *a: jnp.stack(a), *kvs)
    hidden = [None if x is None else norm(x) for x, norm in zip(xs, self.final_norms)]
    hidden = hidden[:len(embedded)]
    if cache is None:
      return hidden, kv
    if index is None:
      return hidden, cache
    return hidden, {"k": kv["k"], "v": kv["v"], "index": index + total}

