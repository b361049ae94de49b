"""What every action head shares: the observation prefix (images, text, proprio) and helpers.

The prefix of every head is ``[image tokens (all cameras, all T history frames), text tokens,
state tokens]`` run through the VLM backbone as one bidirectional block:

* images ``image/<camera>`` uint8 [B, T, H, W, 3]: every history frame becomes N ViT tokens; the
  tokens of padded history frames (``obs_mask`` False) are masked out (all T frames are used).
* ``text_tokens`` int32 [B, L] with ``text_mask`` bool [B, L].
* ``state`` float32 [B, T, S] (normalized proprio): one token per frame, a linear projection
  ``state_proj`` to the LM width (proprio enters the model directly, never through the text);
  padded frames are masked out.

RoPE positions are ``cumsum(prefix_mask) - 1`` (padding takes no position), and a suffix continues
at ``prefix_mask.sum(-1)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from vla_jax.models import gemma, vlm

Array = jax.Array


def check_observation(obs: Mapping[str, Array], cameras, state_dim: int, where: str) -> None:
  """Raises KeyError/ValueError naming the key and shape when ``obs`` breaks the batch contract.

  Shapes only (static, so this also runs while tracing under ``jit``).
  """
  need = [f"image/{c}" for c in cameras] + ["obs_mask", "state", "text_tokens", "text_mask"]
  missing = [k for k in need if k not in obs]
  if missing:
    raise KeyError(f"{where}: observation is missing key(s) {missing}; got {sorted(obs)}")
  b, t = obs["obs_mask"].shape[:2] if obs["obs_mask"].ndim == 2 else (None, None)
  if b is None:
    raise ValueError(f"{where}: 'obs_mask' must be bool [B, T], got shape "
                     f"{tuple(obs['obs_mask'].shape)}")
  for c in cameras:
    img = obs[f"image/{c}"]
    if img.ndim != 5 or img.shape[:2] != (b, t) or img.shape[-1] != 3:
      raise ValueError(f"{where}: 'image/{c}' must be uint8 [B={b}, T={t}, H, W, 3], got shape "
                       f"{tuple(img.shape)}")
  if obs["state"].shape != (b, t, state_dim):
    raise ValueError(f"{where}: 'state' must be float32 [B={b}, T={t}, S={state_dim}], got shape "
                     f"{tuple(obs['state'].shape)}")
  tt, tm = obs["text_tokens"], obs["text_mask"]
  if tt.ndim != 2 or tt.shape[0] != b or tm.shape != tt.shape:
    raise ValueError(f"{where}: 'text_tokens' and 'text_mask' must be [B={b}, L], got "
                     f"{tuple(tt.shape)} and {tuple(tm.shape)}")


def check_actions(batch: Mapping[str, Array], horizon: int, action_dim: int, where: str) -> None:
  """Raises KeyError/ValueError unless ``actions`` [B, H, D] and ``action_mask`` [B, H] match."""
  for k in ("actions", "action_mask"):
    if k not in batch:
      raise KeyError(f"{where}: batch is missing key '{k}'; got {sorted(batch)}")
  b = batch["obs_mask"].shape[0]
  if batch["actions"].shape != (b, horizon, action_dim):
    raise ValueError(f"{where}: 'actions' must be float32 [B={b}, H={horizon}, D={action_dim}], "
                     f"got shape {tuple(batch['actions'].shape)}")
  if batch["action_mask"].shape != (b, horizon):
    raise ValueError(f"{where}: 'action_mask' must be bool [B={b}, H={horizon}], got shape "
                     f"{tuple(batch['action_mask'].shape)}")


def masked_chunk_mean(err: Array, action_mask: Array) -> Array:
  """Mean of per-step errors ``err`` float [B, M, H] over the valid chunk steps (``action_mask``
  bool [B, H], shared by the M noised copies); 0 when no step is valid."""
  w = jnp.broadcast_to(action_mask.astype(jnp.float32)[:, None], err.shape)
  return jnp.sum(err * w) / jnp.maximum(jnp.sum(w), 1.0)


def sinusoidal_embedding(t: Array, dim: int, min_period: float = 4e-3,
                         max_period: float = 4.0) -> Array:
  """Sine-cosine features of a scalar time in [0, 1] (pi0's ``posemb_sincos`` periods).

  Args:
    t: float [...] times (flow time in [0, 1]; diffusion uses t / num_train_steps).
    dim: even feature size.

  Returns:
    float32 [..., dim].
  """
  if dim % 2:
    raise ValueError(f"sinusoidal_embedding: dim={dim} must be even")
  fraction = jnp.linspace(0.0, 1.0, dim // 2)
  period = min_period * (max_period / min_period) ** fraction
  angle = t.astype(jnp.float32)[..., None] * (2 * math.pi / period)
  return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)


def init_key(rng: Array) -> Array:
  """A typed "rbg" key derived from ``rng`` (typed or raw uint32 [2]) for parameter init.

  Why: with the default threefry PRNG every parameter initializer inlines its own threefry hash,
  and XLA:CPU takes seconds to compile the ~100 of them of a policy; XLA's RngBitGenerator
  ("rbg") halves the init compile time. Deterministic for a fixed ``rng`` on a given backend.
  """
  return jax.random.wrap_key_data(jax.random.bits(rng, (4,), jnp.uint32), impl="rbg")


def suffix_positions(prefix_mask: Array, length: int) -> Array:
  """int32 [B, length]: RoPE positions of suffix tokens, continuing after the valid prefix."""
  return prefix_mask.sum(-1, keepdims=True).astype(jnp.int32) + jnp.arange(length)[None]


def suffix_mask(prefix_mask: Array, block_ids: Array, causal: bool = False) -> Array:
  """Attention mask of suffix queries over ``[prefix, suffix]`` keys.

  Every suffix token sees every valid prefix token; among suffix tokens, token i sees token j iff
  they carry the same ``block_ids`` value (independent samples never see each other: level-2
  minibatching) and, when ``causal``, j <= i.

  Args:
    prefix_mask: bool [B, P].
    block_ids: int [Ls] sample index of every suffix token.
    causal: causal attention inside a block.

  Returns:
    bool [B, Ls, P + Ls].
  """
  b, length = prefix_mask.shape[0], block_ids.shape[0]
  same = block_ids[:, None] == block_ids[None, :]
  if causal:
    same &= jnp.arange(length)[None, :] <= jnp.arange(length)[:, None]
  pre = jnp.broadcast_to(prefix_mask[:, None, :], (b, length, prefix_mask.shape[1]))
  return jnp.concatenate([pre, jnp.broadcast_to(same[None], (b, length, length))], axis=-1)


def setup_token_suffix(module: nn.Module) -> None:
  """The ``setup`` shared by the token heads (AR, discrete diffusion), called from theirs.

  ``module`` has the fields ``backbone_config``, ``state_dim``, ``num_slots`` and ``expert`` (a
  Gemma shape or None). Sets ``module.backbone`` (with the expert stream, if any), and with an
  expert ``module.expert_embedder`` (nn.Embed [V, We], tied to the expert's token output), and
  with ``num_slots`` the param ``slot_embedding`` float [num_slots, W] (W = We with an expert,
  else the LM width). The names are the params' names in checkpoints: keep them.
  """
  experts = () if module.expert is None else (module.expert,)
  module.backbone = Backbone(module.backbone_config, experts, module.state_dim)
  width = module.backbone_config.llm.width if module.expert is None else module.expert.width
  if module.expert is not None:
    module.expert_embedder = nn.Embed(module.backbone_config.llm.vocab_size, width,
                                      embedding_init=nn.initializers.normal(width ** -0.5))
  if module.num_slots:
    module.slot_embedding = module.param("slot_embedding", nn.initializers.normal(1.0),
                                         (module.num_slots, width))


class Backbone(nn.Module):
  """The VLM plus the proprio projection; builds and runs the observation prefix.

  Attributes:
    config: the VLM shape.
    experts: extra Gemma experts sharing attention with the LM (the flow head's action expert).
    state_dim: S, proprio size.
  """

  config: vlm.VLMConfig
  experts: tuple[gemma.GemmaConfig, ...] = ()
  state_dim: int = 0

  def setup(self):
    self.vlm = vlm.VLM(self.config, experts=self.experts)
    self.state_proj = nn.Dense(self.config.llm.width, name="state_proj")

  def embed_prefix(self, obs: Mapping[str, Array]) -> tuple[Array, Array]:
    """Observation -> ``(embeddings float [B, P, W], prefix_mask bool [B, P])``.

    P = C * T * N image tokens + L text tokens + T state tokens.
    """
    check_observation(obs, self.config.cameras, self.state_dim, "policy prefix")
    obs_mask = jnp.asarray(obs["obs_mask"], bool)
    images = {f"image/{c}": obs[f"image/{c}"] for c in self.config.cameras}
    emb, mask, _ = self.vlm.embed_prefix(images, obs["text_tokens"], obs["text_mask"],
                                         {c: obs_mask for c in self.config.cameras})
    state = self.state_proj(obs["state"].astype(jnp.float32)).astype(emb.dtype)  # [B, T, W]
    return (jnp.concatenate([emb, state], axis=1),
            jnp.concatenate([mask, obs_mask], axis=1))

  def run_prefix(self, obs: Mapping[str, Array]) -> tuple[Array, Array, dict]:
    """``(hidden [B, P, W], prefix_mask [B, P], cache {"k", "v"} [depth, B, P, K, Hd])``."""
    emb, mask = self.embed_prefix(obs)
    positions = jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1
    (hidden,), cache = self.vlm([emb], positions, gemma.make_attn_mask(mask, jnp.zeros_like(
        mask, jnp.int32)))
    return hidden, mask, cache

  def run_suffix(self, streams, prefix_mask: Array, positions: Array, mask: Array,
                 cache: dict) -> list:
    """Suffix streams (``[lm stream or None, expert stream, ...]``) over a read-only prefix cache.

    ``mask`` is [B, Ls, P + Ls] (see :func:`suffix_mask`); returns the final-normed hidden states.
    """
    del prefix_mask  # Carried in ``mask``.
    hidden, _ = self.vlm(list(streams), positions, mask, cache)
    return hidden

  def run_joint(self, prefix_emb: Array, prefix_mask: Array, streams, positions: Array,
                mask: Array) -> list:
    """Prefix and suffix streams in one pass (no cache): the reference for the cached paths.

    Args:
      prefix_emb, prefix_mask: from :meth:`embed_prefix`.
      streams: suffix streams as in :meth:`run_suffix`; the LM stream (index 0) must be None.
      positions: int [B, Ls] suffix positions; mask: bool [B, Ls, P + Ls] suffix rows.

    Returns:
      hidden per stream ``[prefix [B, P, W], ...suffix streams]``.
    """
    if streams[0] is not None:
      raise ValueError("Backbone.run_joint: the LM suffix stream must be None (pass LM suffix "
                       "tokens appended to prefix_emb instead)")
    b, p = prefix_mask.shape
    ls = positions.shape[1]
    pre_pos = jnp.cumsum(prefix_mask.astype(jnp.int32), axis=1) - 1
    pre_rows = jnp.concatenate([gemma.make_attn_mask(prefix_mask, jnp.zeros((b, p), jnp.int32)),
                                jnp.zeros((b, p, ls), bool)], axis=-1)
    full = jnp.concatenate([pre_rows, mask], axis=1)
    hidden, _ = self.vlm([prefix_emb, *streams[1:]], jnp.concatenate([pre_pos, positions], 1),
                         full)
    return hidden

  def logits(self, hidden: Array) -> Array:
    """LM hidden [..., W] -> float32 logits [..., V] (tied embedding)."""
    return self.vlm.logits(hidden)

  def embed_tokens(self, tokens: Array) -> Array:
    """int [B, L] LM ids -> [B, L, W] (scaled embedding)."""
    return self.vlm.embed_text(tokens)
