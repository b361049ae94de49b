"""Discrete diffusion over binned action tokens (Discrete Diffusion VLA, Liang et al. 2025).

Tokens: a chunk is H * D binning tokens (:mod:`vla_jax.tokenizers.binning`) in the LM vocabulary
with one extra MASK id (layout: :mod:`.action_tokens`). The n = H * D token slots follow the prefix
in the LM stream as one block: they attend to the valid prefix and bidirectionally to each other;
the prefix never attends to them. The LM's tied output layer, restricted to the N bin ids, predicts
every slot.

Training: per chunk a mask ratio ``r = cos(pi / 2 * u)``, u ~ U(0, 1) (the cosine schedule the
decoder follows, MaskGIT-style); each slot is replaced by MASK with probability r (at least one
per chunk); cross-entropy on the masked slots (of valid chunk steps) only.

Decoding in ``lax.scan`` over T rounds (default 12), one suffix pass per round over the prefix KV
cache computed once: after round k, ``floor(n * cos(pi / 2 * (k + 1) / T))`` slots stay masked
(cosine unmasking, 0 after the last round). Each round predicts every slot (greedy, or sampled at
``temperature``), scores masked slots by the probability of their candidate, and commits the
highest-scoring ones (confidence-ordered commitment). Secondary re-masking (our reading of the
paper's "secondary re-masking" of uncertain tokens): an already committed slot whose current
probability fell below ``remask_threshold`` competes with the masked candidates at that
probability; when it is outranked it is masked again and re-predicted in a later round. Committed
slots at or above the threshold stay fixed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vla_jax.models import gemma, vlm
from vla_jax.models.heads import action_tokens, common
from vla_jax.tokenizers import binning

Array = jax.Array
MASK = 0  # Special id index in the layout.


class DiscreteDiffusionModule(nn.Module):
  """Backbone whose LM denoises masked action tokens; one-shot methods."""

  backbone_config: vlm.VLMConfig
  state_dim: int
  action_start: int
  num_bins: int

  def setup(self):
    self.backbone = common.Backbone(self.backbone_config, (), self.state_dim)

  def _bin_logits(self, hidden: Array) -> Array:
    logits = self.backbone.logits(hidden)
    return logits[..., self.action_start:self.action_start + self.num_bins]

  def joint_logits(self, obs: Mapping[str, Array], tokens: Array) -> Array:
    """Joint pass ``[prefix | tokens]`` -> bin logits float32 [B, n, N] (training, init)."""
    emb, prefix_mask = self.backbone.embed_prefix(obs)
    b, p = prefix_mask.shape
    n = tokens.shape[1]
    x = jnp.concatenate([emb, self.backbone.embed_tokens(tokens).astype(emb.dtype)], axis=1)
    mask = jnp.concatenate([prefix_mask, jnp.ones((b, n), bool)], axis=1)
    ar = jnp.zeros((b, p + n), jnp.int32).at[:, p].set(1)
    positions = jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1
    (hidden,), _ = self.backbone.vlm([x], positions, gemma.make_attn_mask(mask, ar))
    return self._bin_logits(hidden[:, p:])

  def prefix(self, obs: Mapping[str, Array]) -> tuple[Array, dict]:
    _, mask, cache = self.backbone.run_prefix(obs)
    return mask, cache

  def cached_logits(self, tokens: Array, prefix_mask: Array, cache: dict) -> Array:
    """tokens int [B, n] over a read-only prefix cache -> bin logits float32 [B, n, N]."""
    n = tokens.shape[1]
    positions = common.suffix_positions(prefix_mask, n)
    mask = common.suffix_mask(prefix_mask, jnp.zeros((n,), jnp.int32))
    hidden = self.backbone.run_suffix([self.backbone.embed_tokens(tokens)], prefix_mask,
                                      positions, mask, cache)[0]
    return self._bin_logits(hidden)


def unmask_schedule(n: int, rounds: int) -> np.ndarray:
  """int32 [rounds]: slots still masked after each round, cosine, ending at 0."""
  k = np.arange(1, rounds + 1)
  return np.floor(n * np.cos(math.pi / 2 * k / rounds)).astype(np.int32)


def commit_round(ids: Array, committed: Array, probs: Array, cand: Array, n_keep: Array,
                 remask_threshold: float) -> tuple[Array, Array]:
  """One decoding round's commitment with secondary re-masking (see the module docstring).

  Args:
    ids: int [B, n] bin ids (meaningful where ``committed``); committed: bool [B, n].
    probs: float [B, n, N] this round's predicted bin probabilities; cand: int [B, n] the
      candidate bin of every slot.
    n_keep: int [] slots committed after this round (>= the number committed before).
    remask_threshold: committed slots with probability below it may be re-masked.

  Returns:
    ``(ids, committed)``: newly committed slots take their candidate, kept slots their old id;
    exactly ``n_keep`` slots per row are committed.
  """
  cand_conf = jnp.take_along_axis(probs, cand[..., None], -1)[..., 0]
  cur_conf = jnp.take_along_axis(probs, jnp.clip(ids, 0)[..., None], -1)[..., 0]
  # Committed & confident: 2 (> any probability, always kept); committed & unsure: its current
  # probability (re-masked when outranked); masked: the candidate's probability.
  score = jnp.where(committed, jnp.where(cur_conf < remask_threshold, cur_conf, 2.0), cand_conf)
  rank = jnp.argsort(jnp.argsort(-score, axis=1), axis=1)
  return jnp.where(committed, ids, cand), rank < n_keep


@dataclasses.dataclass(frozen=True, eq=False)  # Hashed by identity (jit of bound methods).
class DiscreteDiffusionHead:
  """Masked discrete diffusion behind the policy interface (see the module docstring).

  Attributes:
    module, tokenizer (a ``BinningTokenizer``), layout (1 special: MASK), horizon, action_dim.
    rounds: T decoding rounds; temperature: 0 = greedy candidates.
    remask_threshold: committed slots below this probability may be re-masked.
  """

  module: DiscreteDiffusionModule
  tokenizer: binning.BinningTokenizer
  layout: action_tokens.TokenLayout
  horizon: int
  action_dim: int
  rounds: int = 12
  temperature: float = 0.0
  remask_threshold: float = 0.5

  def __post_init__(self):
    if not isinstance(self.tokenizer, binning.BinningTokenizer):
      raise TypeError(f"DiscreteDiffusionHead: needs a BinningTokenizer, got "
                      f"{type(self.tokenizer).__name__}")
    if self.rounds < 1:
      raise ValueError(f"DiscreteDiffusionHead: rounds must be >= 1, got {self.rounds}")

  @property
  def num_tokens(self) -> int:
    return self.horizon * self.action_dim

  def init(self, rng: Array, batch: Mapping[str, Array]):
    b = batch["obs_mask"].shape[0]
    tokens = jnp.full((b, self.num_tokens), self.layout.special(MASK), jnp.int32)
    return self.module.init(common.init_key(rng), batch, tokens,
                            method=DiscreteDiffusionModule.joint_logits)["params"]

  def loss(self, params, batch, rng):
    common.check_actions(batch, self.horizon, self.action_dim, "DiscreteDiffusionHead.loss")
    ids = self.tokenizer.encode(batch["actions"])  # [B, n] bins
    b, n = ids.shape
    r_rng, m_rng = jax.random.split(rng)
    ratio = jnp.cos(math.pi / 2 * jax.random.uniform(r_rng, (b, 1)))
    u = jax.random.uniform(m_rng, (b, n))
    masked = (u < ratio) | (jnp.arange(n)[None] == jnp.argmin(u, axis=1)[:, None])
    tokens = jnp.where(masked, self.layout.special(MASK), self.layout.to_lm(ids))
    logits = self.module.apply({"params": params}, batch, tokens,
                               method=DiscreteDiffusionModule.joint_logits)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, ids[..., None], axis=-1)[..., 0]
    step_ok = jnp.repeat(batch["action_mask"], self.action_dim, axis=1)  # Time-major tokens.
    w = (masked & step_ok).astype(jnp.float32)
    loss = jnp.sum(nll * w) / jnp.maximum(jnp.sum(w), 1.0)
    acc = jnp.sum((jnp.argmax(logits, -1) == ids) * w) / jnp.maximum(jnp.sum(w), 1.0)
    return loss, {"masked_ce": loss, "token_accuracy": acc}

  def sample(self, params, obs, rng, rounds: int | None = None) -> dict[str, Array]:
    """T rounds of parallel decoding -> ``{"actions" [B, H, D], "valid" [B], "tokens" [B, n]
    (bin ids), "nfe" int32 []}``."""
    mod, n = self.module, self.num_tokens
    t = int(rounds or self.rounds)
    mask_id = self.layout.special(MASK)
    b = obs["obs_mask"].shape[0]
    prefix_mask, cache = mod.apply({"params": params}, obs, method=DiscreteDiffusionModule.prefix)
    keep = jnp.asarray(n - unmask_schedule(n, t))  # Committed slots after each round.

    def round_fn(carry, inputs):
      ids, committed = carry  # bin ids [B, n] (garbage where not committed), bool [B, n]
      n_keep, key = inputs
      tokens = jnp.where(committed, self.layout.to_lm(ids), mask_id)
      logits = mod.apply({"params": params}, tokens, prefix_mask, cache,
                         method=DiscreteDiffusionModule.cached_logits)
      if self.temperature > 0:
        cand = jax.random.categorical(key, logits / self.temperature).astype(jnp.int32)
      else:
        cand = jnp.argmax(logits, axis=-1).astype(jnp.int32)
      ids, new_committed = commit_round(ids, committed, jax.nn.softmax(logits, axis=-1), cand,
                                        n_keep, self.remask_threshold)
      return (ids, new_committed), None

    init = (jnp.zeros((b, n), jnp.int32), jnp.zeros((b, n), bool))
    keys = jax.random.split(rng, t)
    (ids, committed), _ = jax.lax.scan(round_fn, init, (keep, keys))
    valid = jnp.all(committed, axis=1)
    actions = self.tokenizer.decode(ids)
    return {"actions": jnp.where(valid[:, None, None], actions, jnp.nan), "valid": valid,
            "tokens": ids, "nfe": jnp.asarray(t, jnp.int32)}
