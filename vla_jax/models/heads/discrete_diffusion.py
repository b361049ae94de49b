"""Discrete diffusion over binned action tokens (Discrete Diffusion VLA, Liang et al. 2025).

Tokens: a chunk is H * D binning tokens (:mod:`vla_jax.tokenizers.binning`) in the LM vocabulary
with one extra MASK id (layout: :mod:`.action_tokens`). The n = H * D token slots follow the prefix
in the LM stream as one block: they attend to the valid prefix and bidirectionally to each other;
the prefix never attends to them. The LM's tied output layer, restricted to the N bin ids, predicts
every slot; or, with an action expert (``policy.discrete_diffusion.expert``), the slots run in that
expert's stream (its own weights in every layer, its own tied token embedding), as the AR head's.

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

RL: :meth:`DiscreteDiffusionHead.sample_stochastic` runs the same rounds (one shared scan) with
two changes that make the log-likelihood exact: (1) no re-masking (a committed slot stays), and
(2) masked slots are ranked by the probability of their most likely bin rather than of their
drawn candidate, so which slots commit at round k is a deterministic function of the tokens
committed before k, not of the draw. The sample's probability is then exactly
``prod_k prod_{i committed at k} p_T(x_i | tokens committed before k)`` with ``p_T =
softmax(logits / temperature)`` over the bins; candidates drawn for slots that stay masked are
discarded and carry no probability. ``"sample": {"tokens", "round"}`` records the bins and the
round that committed each slot; :meth:`DiscreteDiffusionHead.log_prob` re-scores them with a
``lax.scan`` over the rounds on one prefix KV cache. Under changed params the recorded order is
kept (the ranking is an argmax: no gradient, and not re-derived), i.e. it is treated as part of
the environment when the policy moves. At a low temperature this sampler equals the greedy
``sample`` without re-masking (``remask_threshold = 0``).
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
  """Backbone whose LM denoises masked action tokens; one-shot methods.

  ``num_slots`` > 0 adds a learned embedding per token slot (float [n, W], MaskGIT's position
  embedding) to the slots' token embeddings: in a mostly masked chunk every slot's input is the
  same MASK embedding, so without it a slot knows which step and action dimension it predicts
  only through RoPE's relative positions.

  ``expert`` (a Gemma shape, or None): the slots run in that expert stream with its own tied
  token embedding ``expert_embedder`` float [V, We], as the AR head's action expert
  (:class:`.autoregressive.ARModule`); None: in the LM itself.
  """

  backbone_config: vlm.VLMConfig
  state_dim: int
  action_start: int
  num_bins: int
  num_slots: int = 0
  expert: gemma.GemmaConfig | None = None

  def setup(self):
    common.setup_token_suffix(self)

  def _embed_slots(self, tokens: Array) -> Array:
    """int [B, n] LM ids -> [B, n, W] (We with an expert): token embeddings (+ the slot
    embeddings)."""
    if self.expert is None:
      emb = self.backbone.embed_tokens(tokens)
    else:  # Scaled by sqrt(We), as Gemma scales its embedding.
      emb = self.expert_embedder(tokens) * self.expert.width ** 0.5
    if self.num_slots:
      if tokens.shape[1] != self.num_slots:
        raise ValueError(f"DiscreteDiffusionModule: {tokens.shape[1]} token slots, the slot "
                         f"embedding has {self.num_slots}")
      emb = emb + self.slot_embedding.astype(emb.dtype)[None]
    return emb

  def _bin_logits(self, hidden: Array) -> Array:
    if self.expert is None:
      logits = self.backbone.logits(hidden)
    else:
      logits = self.expert_embedder.attend(hidden.astype(jnp.float32))
    return logits[..., self.action_start:self.action_start + self.num_bins]

  def joint_logits(self, obs: Mapping[str, Array], tokens: Array) -> Array:
    """Joint pass ``[prefix | tokens]`` -> bin logits float32 [B, n, N] (training, init)."""
    emb, prefix_mask = self.backbone.embed_prefix(obs)
    b, p = prefix_mask.shape
    n = tokens.shape[1]
    if self.expert is not None:
      positions = common.suffix_positions(prefix_mask, n)
      mask = common.suffix_mask(prefix_mask, jnp.zeros((n,), jnp.int32))
      hidden = self.backbone.run_joint(emb, prefix_mask, [None, self._embed_slots(tokens)],
                                       positions, mask)[1]
      return self._bin_logits(hidden)
    x = jnp.concatenate([emb, self._embed_slots(tokens).astype(emb.dtype)], axis=1)
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
    x = self._embed_slots(tokens)
    streams = [x] if self.expert is None else [None, x]
    hidden = self.backbone.run_suffix(streams, prefix_mask, positions, mask, cache)[-1]
    return self._bin_logits(hidden)


def unmask_schedule(n: int, rounds: int) -> np.ndarray:
  """int32 [rounds]: slots still masked after each round, cosine, ending at 0."""
  k = np.arange(1, rounds + 1)
  return np.floor(n * np.cos(math.pi / 2 * k / rounds)).astype(np.int32)


def commit_round(ids: Array, committed: Array, probs: Array, cand: Array, n_keep: Array,
                 remask_threshold: float, cand_conf: Array | None = None) -> tuple[Array, Array]:
  """One decoding round's commitment with secondary re-masking (see the module docstring).

  Args:
    ids: int [B, n] bin ids (meaningful where ``committed``); committed: bool [B, n].
    probs: float [B, n, N] this round's predicted bin probabilities; cand: int [B, n] the
      candidate bin of every slot.
    n_keep: int [] slots committed after this round (>= the number committed before).
    remask_threshold: committed slots with probability below it may be re-masked (0: never).
    cand_conf: float [B, n] the score of masked slots; None = their candidate's probability.

  Returns:
    ``(ids, committed)``: newly committed slots take their candidate, kept slots their old id;
    exactly ``n_keep`` slots per row are committed.
  """
  if cand_conf is None:
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
    first_step_weight: the loss weight of the chunk's first step's D masked slots relative to
      the others (1 = plain masked cross-entropy), as ``ARHead.first_step_weight``: the other
      steps can be inferred from their neighbours, the first only from the observation.
    label_sigma: std in bins of the ordinal soft targets of the masked cross-entropy
      (:func:`action_tokens.soft_bin_targets`; 0 = one-hot).
    point: greedy decoding only: each round's candidate bin, ``"mode"`` (argmax), ``"median"``
      or ``"mean"`` of the slot's distribution (:func:`action_tokens.greedy_bin`); ``sample(point=...)``
      overrides it.
  """

  module: DiscreteDiffusionModule
  tokenizer: binning.BinningTokenizer
  layout: action_tokens.TokenLayout
  horizon: int
  action_dim: int
  rounds: int = 12
  temperature: float = 0.0
  remask_threshold: float = 0.5
  first_step_weight: float = 1.0
  point: str = "mode"
  label_sigma: float = 0.0

  def __post_init__(self):
    action_tokens.check_point(self.point, "DiscreteDiffusionHead")
    if not self.label_sigma >= 0:
      raise ValueError(f"DiscreteDiffusionHead: label_sigma={self.label_sigma} must be >= 0")
    if not isinstance(self.tokenizer, binning.BinningTokenizer):
      raise TypeError(f"DiscreteDiffusionHead: needs a BinningTokenizer, got "
                      f"{type(self.tokenizer).__name__}")
    if self.rounds < 1:
      raise ValueError(f"DiscreteDiffusionHead: rounds must be >= 1, got {self.rounds}")
    if not self.first_step_weight >= 0:
      raise ValueError(f"DiscreteDiffusionHead: first_step_weight={self.first_step_weight} "
                       "must be >= 0")

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
    if self.label_sigma > 0:
      targets = action_tokens.soft_bin_targets(ids, logits.shape[-1], self.label_sigma)
      train_nll = -jnp.sum(targets * logp, axis=-1)
    else:
      train_nll = nll
    step_ok = jnp.repeat(batch["action_mask"], self.action_dim, axis=1)  # Time-major tokens.
    w = (masked & step_ok).astype(jnp.float32)
    lw = w * jnp.where(jnp.arange(n) < self.action_dim, self.first_step_weight, 1.0)[None]
    loss = jnp.sum(train_nll * lw) / jnp.maximum(jnp.sum(lw), 1.0)
    count = jnp.maximum(jnp.sum(w), 1.0)  # The metrics stay unweighted (and one-hot).
    acc = jnp.sum((jnp.argmax(logits, -1) == ids) * w) / count
    return loss, {"masked_ce": jnp.sum(nll * w) / count, "token_accuracy": acc}

  def _decode(self, params, obs, rng, rounds: int | None, temperature: float,
              stochastic: bool, point: str = "mode") -> tuple[Array, ...]:
    """T decoding rounds -> ``(ids int32 [B, n] bin ids, committed bool [B, n], round int32 [B,
    n] (the last round that committed each slot; T if never), log_prob float32 [B], T)``.

    ``stochastic=False``: the decoder of the module docstring (``log_prob`` is 0); greedy
    candidates are the ``point`` of each slot's distribution.
    ``stochastic=True`` (RL): candidates drawn at ``temperature`` > 0, masked slots ranked by
    their most likely bin's probability, no re-masking; ``log_prob`` sums the committed tokens'
    ``log_softmax(logits / temperature)`` at the round that committed them.
    """
    mod, n = self.module, self.num_tokens
    t = int(rounds or self.rounds)
    mask_id = self.layout.special(MASK)
    b = obs["obs_mask"].shape[0]
    prefix_mask, cache = mod.apply({"params": params}, obs, method=DiscreteDiffusionModule.prefix)
    keep = jnp.asarray(n - unmask_schedule(n, t))  # Committed slots after each round.

    def round_fn(carry, inputs):
      ids, committed, when, log_prob = carry  # ids: garbage where not committed.
      k, n_keep, key = inputs
      tokens = jnp.where(committed, self.layout.to_lm(ids), mask_id)
      logits = mod.apply({"params": params}, tokens, prefix_mask, cache,
                         method=DiscreteDiffusionModule.cached_logits)
      probs = jax.nn.softmax(logits, axis=-1)
      if temperature > 0:
        cand = jax.random.categorical(key, logits / temperature).astype(jnp.int32)
      else:
        cand = action_tokens.greedy_bin(logits, point)
      if stochastic:
        # The ranking must not depend on the draw: with the most likely bin's probability the
        # slots committed at round k are a function of the tokens committed before it, so the
        # sample's probability is just the product of its tokens' (no selection term).
        new_ids, new_committed = commit_round(ids, committed, probs, cand, n_keep, 0.0,
                                              cand_conf=jnp.max(probs, axis=-1))
        logp = jax.nn.log_softmax(logits / temperature, axis=-1)
        logp = jnp.take_along_axis(logp, cand[..., None], axis=-1)[..., 0]
        log_prob = log_prob + jnp.sum(jnp.where(new_committed & ~committed, logp, 0.0), axis=1)
      else:
        new_ids, new_committed = commit_round(ids, committed, probs, cand, n_keep,
                                              self.remask_threshold)
      when = jnp.where(new_committed & ~committed, k, when)
      return (new_ids, new_committed, when, log_prob), None

    init = (jnp.zeros((b, n), jnp.int32), jnp.zeros((b, n), bool), jnp.full((b, n), t, jnp.int32),
            jnp.zeros((b,), jnp.float32))
    xs = (jnp.arange(t, dtype=jnp.int32), keep, jax.random.split(rng, t))
    (ids, committed, when, log_prob), _ = jax.lax.scan(round_fn, init, xs)
    return ids, committed, when, log_prob, t

  def _actions(self, ids: Array, committed: Array) -> tuple[Array, Array]:
    """bin ids [B, n], committed [B, n] -> ``(actions float32 [B, H, D] (NaN where invalid),
    valid bool [B])``: a row is valid when every slot is committed."""
    valid = jnp.all(committed, axis=1)
    return jnp.where(valid[:, None, None], self.tokenizer.decode(ids), jnp.nan), valid

  def sample(self, params, obs, rng, rounds: int | None = None,
             point: str | None = None) -> dict[str, Array]:
    """T rounds of parallel decoding -> ``{"actions" [B, H, D], "valid" [B], "tokens" [B, n]
    (bin ids), "num_tokens" int32 [B] (n), "nfe" int32 []}``; ``point`` (None = the head's) is
    the greedy candidate, see the class docstring."""
    point = self.point if point is None else point
    action_tokens.check_point(point, "DiscreteDiffusionHead.sample")
    ids, committed, _, _, t = self._decode(params, obs, rng, rounds, self.temperature, False,
                                           point)
    actions, valid = self._actions(ids, committed)
    return {"actions": actions, "valid": valid, "tokens": ids,
            "num_tokens": jnp.full(ids.shape[:1], ids.shape[1], jnp.int32),
            "nfe": jnp.asarray(t, jnp.int32)}

  def sample_stochastic(self, params, obs, rng, temperature: float = 1.0,
                        rounds: int | None = None) -> dict[str, Array]:
    """T rounds of parallel decoding at ``temperature`` (> 0) with the sample's log-likelihood
    (RL; see the module docstring: no re-masking, order by the most likely bin).

    Returns:
      ``{"actions" float32 [B, H, D], "valid" bool [B], "log_prob" float32 [B], "sample":
      {"tokens": int32 [B, n] (bin ids), "round": int32 [B, n] (round that committed each
      slot)}, "nfe" int32 []}``; ``log_prob`` equals :meth:`log_prob` with the same options.
    """
    _check_options(temperature, rounds, "DiscreteDiffusionHead.sample_stochastic")
    ids, committed, when, log_prob, t = self._decode(params, obs, rng, rounds, temperature, True)
    actions, valid = self._actions(ids, committed)
    return {"actions": actions, "valid": valid, "log_prob": log_prob,
            "sample": {"tokens": ids, "round": when}, "nfe": jnp.asarray(t, jnp.int32)}

  def log_prob(self, params, obs, sample: Mapping[str, Array], temperature: float = 1.0,
               rounds: int | None = None) -> Array:
    """Re-scored log-likelihood float32 [B] of a :meth:`sample_stochastic` record
    (``sample["tokens"]`` bin ids int [B, n], ``sample["round"]`` int [B, n]): a ``lax.scan``
    over the T rounds over one prefix KV cache; round k feeds the tokens committed before k (the
    rest MASK) and adds ``log_softmax(logits / temperature)`` of the tokens committed at k.
    Differentiable w.r.t. ``params``; ``rounds`` must be the sampler's (a slot recorded at a
    round >= T is not scored)."""
    _check_options(temperature, rounds, "DiscreteDiffusionHead.log_prob")
    mod, n = self.module, self.num_tokens
    t = int(rounds or self.rounds)
    ids = jnp.asarray(sample["tokens"], jnp.int32)
    when = jnp.asarray(sample["round"], jnp.int32)
    if ids.shape[1:] != (n,) or when.shape != ids.shape:
      raise ValueError(f"DiscreteDiffusionHead.log_prob: sample['tokens'] {tuple(ids.shape)} "
                       f"and sample['round'] {tuple(when.shape)} must be [B, n={n}]")
    prefix_mask, cache = mod.apply({"params": params}, obs, method=DiscreteDiffusionModule.prefix)
    lm = self.layout.to_lm(ids)
    mask_id = self.layout.special(MASK)

    def round_fn(log_prob, k):
      tokens = jnp.where(when < k, lm, mask_id)
      logits = mod.apply({"params": params}, tokens, prefix_mask, cache,
                         method=DiscreteDiffusionModule.cached_logits)
      logp = jax.nn.log_softmax(logits / temperature, axis=-1)
      logp = jnp.take_along_axis(logp, ids[..., None], axis=-1)[..., 0]
      return log_prob + jnp.sum(jnp.where(when == k, logp, 0.0), axis=1), None

    log_prob, _ = jax.lax.scan(round_fn, jnp.zeros(ids.shape[:1], jnp.float32),
                               jnp.arange(t, dtype=jnp.int32))
    return log_prob


def _check_options(temperature: float, rounds: int | None, where: str) -> None:
  if rounds is not None and rounds < 1:
    raise ValueError(f"{where}: rounds must be >= 1 (or None for the head's), got {rounds}")
  if not temperature > 0:  # Also refuses NaN.
    raise ValueError(f"{where}: temperature must be > 0 (a stochastic sampler with an exact "
                     f"log-likelihood), got temperature={temperature}; use sample() for greedy "
                     "decoding")
