"""Autoregressive action tokens (RT-2 / OpenVLA binning, pi0-FAST) predicted by the LM itself.

Sequence: ``[prefix | BOA a_1 ... a_n]`` in the LM stream, the suffix causal (each token one
autoregressive block: it sees the valid prefix and the earlier suffix tokens; the prefix never sees
the suffix). Targets are ``a_1 ... a_n EOS``; the next-token cross-entropy (over the whole LM
vocabulary, the LM's tied output layer) is taken only on action tokens and the closing EOS, i.e.
never on the prefix. ``n`` is H * D for binning (steps past the episode end, ``action_mask``
False, are left out of the loss) and the FAST sequence length (at most ``max_fast_tokens``; FAST
codes a whole chunk, so padded steps stay in its target). Ids: see :mod:`.action_tokens`.

Action expert (``ARModule.expert`` set, ``policy.ar.expert``): the suffix runs in its own Gemma
expert stream, as the flow head's action expert does (pi0): separate weights in every layer,
sharing attention with the LM's prefix, with its own token embedding table (tied with its output
layer) over the same LM ids. Only the prefix then uses the LM's weights; the action tokens get
parameters of their own instead of sharing the LM's capacity with the image and instruction.

Where the tokens come from: binning encodes ``batch["actions"]`` inside the step (pure jnp). FAST's
BPE runs in Python, so its tokens come with the batch from the input pipeline (as text tokens do):
``action_tokens`` int32 [B, n] (tokenizer ids, 0 after the sequence) and ``action_token_mask`` bool
[B, n] (True on the sequence, a prefix), n = ``max_tokens``
(``vla_jax.data.pipeline.action_token_batch``); ``loss`` raises a KeyError naming them if absent.

Decoding (:meth:`ARHead.sample`) in ``lax.while_loop``: the prefix runs once into a KV cache that
is extended to ``P + n + 1`` slots; every iteration feeds one token (append mode), takes the
logits of the action block and EOS only (a design choice: other ids can never decode), picks
greedily (``temperature = 0``) or samples at the temperature, and marks a sequence done at its
first EOS (later tokens are EOS). The loop stops when every sequence is done or after n + 1
tokens. ``use_cache=False`` recomputes the full sequence (prefix included) at every step: the
reference (same tokens) and the benchmark's baseline.

Validity: ``sample`` returns ``valid`` bool [B]; a binning sequence with fewer than H * D action
tokens, or a FAST sequence that does not decode to H x D coefficients (or never emitted EOS) is
invalid and its actions are NaN (never zeros). FAST's decode at sampling runs on host through a
``jax.pure_callback`` (sampling path only; the train step has no callback), so ``sample`` stays
jit-able end to end.

RL: :meth:`ARHead.sample_stochastic` decodes as ``sample`` (one shared loop) but always samples at
a given ``temperature`` > 0 from that same masked distribution, and sums each sampled token's
``log_softmax(masked logits / temperature)`` up to and including the first EOS (the forced EOS
after it adds nothing); ``"sample": {"tokens"}`` records the LM ids. :meth:`ARHead.log_prob`
re-scores them teacher-forced in one causal pass (``sequence_logits`` on ``[BOA, tokens[:n]]``)
with the same mask, so the two agree to float tolerance. This likelihood is over the masked
distribution; the imitation ``loss`` keeps its normalization over the whole vocabulary.

Window sampling (binning, ``window`` = w > 0): each step samples only among the bins within w of
that step's median bin (and EOS), renormalized: exploration local in action space, as a
continuous head's Gaussian noise is, whose greedy limit is the median decoding of
``point="median"``. Over the whole masked distribution a 256-bin step can jump to any bin, and
rollouts sampled that way fail far more often than greedy ones. The centre of each step is
recorded in ``"sample": {"center"}`` and :meth:`ARHead.log_prob` re-scores under the recorded
centres (as discrete diffusion keeps its recorded unmasking order), so the sampled token is
always inside the re-scored support even after the params move.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vla_jax.models import gemma, vlm
from vla_jax.models.heads import action_tokens, common

Array = jax.Array
BOA, EOS = 0, 1  # Special ids of the layout (begin-of-action, end-of-sequence).


class ARModule(nn.Module):
  """Backbone whose LM (or action expert) predicts action tokens; one-shot methods (loops in
  :class:`ARHead`).

  ``num_slots`` > 0 adds a learned embedding per suffix slot (float [num_slots, W]; slot 0 is
  BOA) to the input tokens' embeddings, as the discrete diffusion head's: which chunk step and
  action dimension a slot predicts is then an input, not only a RoPE position.

  ``expert`` (a Gemma shape, or None): the suffix runs in that expert stream with its own tied
  token embedding ``expert_embedder`` float [V, We] (module docstring); None: in the LM itself.
  """

  backbone_config: vlm.VLMConfig
  state_dim: int
  num_slots: int = 0
  expert: gemma.GemmaConfig | None = None

  def setup(self):
    common.setup_token_suffix(self)

  def _embed(self, tokens: Array, slots: Array) -> Array:
    """int [B, L] LM ids at suffix slots ``slots`` int [L] -> [B, L, W] (We with an expert)."""
    if self.expert is None:
      emb = self.backbone.embed_tokens(tokens)
    else:  # Scaled by sqrt(We), as Gemma scales its embedding.
      emb = self.expert_embedder(tokens) * self.expert.width ** 0.5
    if self.num_slots:
      emb = emb + jnp.take(self.slot_embedding, slots, axis=0).astype(emb.dtype)[None]
    return emb

  def _logits(self, hidden: Array) -> Array:
    """Final-normed suffix hidden [..., W or We] -> float32 logits [..., V] (tied)."""
    if self.expert is None:
      return self.backbone.logits(hidden)
    return self.expert_embedder.attend(hidden.astype(jnp.float32))

  def sequence_logits(self, obs: Mapping[str, Array], inputs: Array) -> Array:
    """Joint pass over ``[prefix | inputs]`` (causal suffix) -> logits float32 [B, Ls, V]."""
    emb, prefix_mask = self.backbone.embed_prefix(obs)
    b, p = prefix_mask.shape
    ls = inputs.shape[1]
    if self.expert is not None:
      tokens = self._embed(inputs, jnp.arange(ls))
      positions = common.suffix_positions(prefix_mask, ls)
      mask = common.suffix_mask(prefix_mask, jnp.zeros((ls,), jnp.int32), causal=True)
      hidden = self.backbone.run_joint(emb, prefix_mask, [None, tokens], positions, mask)[1]
      return self._logits(hidden)
    tokens = self._embed(inputs, jnp.arange(ls)).astype(emb.dtype)
    mask = jnp.concatenate([prefix_mask, jnp.ones((b, ls), bool)], axis=1)
    ar = jnp.concatenate([jnp.zeros((b, p), jnp.int32), jnp.ones((b, ls), jnp.int32)], axis=1)
    positions = jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1
    (hidden,), _ = self.backbone.vlm([jnp.concatenate([emb, tokens], axis=1)], positions,
                                     gemma.make_attn_mask(mask, ar))
    return self.backbone.logits(hidden[:, p:])

  def prefix(self, obs: Mapping[str, Array]) -> tuple[Array, dict]:
    _, mask, cache = self.backbone.run_prefix(obs)
    return mask, cache

  def decode_step(self, token: Array, position: Array, key_mask: Array, cache: dict,
                  slot: Array | int = 0):
    """One cached step: token int [B] at suffix slot ``slot`` int [], position int [B],
    key_mask bool [B, S_max] -> ``(logits float32 [B, V], cache)``."""
    emb = self._embed(token[:, None], jnp.reshape(slot, (1,)))
    streams = [emb] if self.expert is None else [None, emb]
    hidden, cache = self.backbone.vlm(streams, position[:, None], key_mask[:, None, :], cache)
    return self._logits(hidden[-1][:, 0]), cache


@dataclasses.dataclass(frozen=True, eq=False)  # Hashed by identity (jit of bound methods).
class ARHead:
  """Autoregressive token head behind the policy interface (see the module docstring).

  Attributes:
    module: the :class:`ARModule` (its LM vocabulary is ``layout.vocab_size``).
    tokenizer: a ``BinningTokenizer`` or a fitted ``FastTokenizer``.
    layout: the vocabulary layout (2 specials: BOA, EOS).
    horizon, action_dim: H, D.
    max_tokens: n, action-token slots (H * D for binning; the FAST cap).
    temperature: 0 = greedy.
    first_step_weight: the loss weight of the sequence's first D tokens relative to the
      others (1 = plain next-token cross-entropy). Binning: the chunk's first step. Later steps
      are nearly copies of earlier ones, so the plain loss is dominated by copying; the first
      step is the only one predicted from the observation alone (issue 17,
      docs/experiments/heads.md). FAST: the first tokens of the BPE sequence, which code the
      lowest DCT frequencies (the chunk's mean per dimension, first; FAST orders coefficients
      low frequency first): the part fixed by the observation, while the later, mostly
      near-zero high-frequency tokens are the easy majority.
    point: binning, greedy decoding only: which bin a step picks, ``"mode"`` (argmax),
      ``"median"`` or ``"mean"`` of the action-token distribution
      (:func:`action_tokens.greedy_bin`; EOS when it is the argmax); ``sample(point=...)``
      overrides it.
  """

  module: ARModule
  tokenizer: Any
  layout: action_tokens.TokenLayout
  horizon: int
  action_dim: int
  max_tokens: int
  temperature: float = 0.0
  first_step_weight: float = 1.0
  point: str = "mode"

  def __post_init__(self):
    self._check_point(self.point, "ARHead")
    if not self.first_step_weight >= 0:
      raise ValueError(f"ARHead: first_step_weight={self.first_step_weight} must be >= 0")

  def _check_point(self, point: str, where: str) -> None:
    action_tokens.check_point(point, where)
    if point != "mode" and not isinstance(self.tokenizer, action_tokens.binning.BinningTokenizer):
      raise ValueError(f"{where}: point='{point}' needs the binning tokenizer (FAST ids are BPE "
                       "merges, not ordered bins; policy.ar.point)")

  def _action_ids(self, batch) -> tuple[Array, Array]:
    """``(ids int32 [B, n], lengths int32 [B])``: binning encodes in-graph, FAST reads the
    pipeline's host tokens (see the module docstring)."""
    if isinstance(self.tokenizer, action_tokens.binning.BinningTokenizer):
      return action_tokens.encode_chunks(self.tokenizer, batch["actions"], self.max_tokens)
    missing = [k for k in ("action_tokens", "action_token_mask") if k not in batch]
    if missing:
      raise KeyError(f"ARHead.loss: the batch lacks {missing}. FAST tokenizes on host: build the "
                     "data iterator with action_tokenizer=<the FastTokenizer> and "
                     f"max_action_tokens={self.max_tokens} (vla_jax.data.pipeline)")
    ids, mask = batch["action_tokens"], batch["action_token_mask"]
    b = batch["actions"].shape[0]
    if ids.shape != (b, self.max_tokens) or mask.shape != ids.shape:
      raise ValueError(f"ARHead.loss: 'action_tokens' {tuple(ids.shape)} and "
                       f"'action_token_mask' {tuple(mask.shape)} must be [B={b}, "
                       f"max_tokens={self.max_tokens}] (pipeline max_action_tokens = "
                       "policy ar.max_fast_tokens)")
    return ids.astype(jnp.int32), jnp.sum(mask, axis=1, dtype=jnp.int32)

  def _inputs_targets(self, batch):
    """``(inputs [B, n+1], targets [B, n+1], weights float [B, n+1])`` in LM ids."""
    ids, lengths = self._action_ids(batch)
    b, n = ids.shape
    lm = self.layout.to_lm(ids)
    boa, eos = self.layout.special(BOA), self.layout.special(EOS)
    j = jnp.arange(n + 1)[None]
    inputs = jnp.concatenate([jnp.full((b, 1), boa, jnp.int32), lm], axis=1)
    padded = jnp.concatenate([lm, jnp.full((b, 1), eos, jnp.int32)], axis=1)
    targets = jnp.where(j < lengths[:, None], padded, eos)
    inputs = jnp.where(j <= lengths[:, None], inputs, eos)  # Past the end: EOS, never read.
    weights = (j <= lengths[:, None]).astype(jnp.float32)
    if isinstance(self.tokenizer, action_tokens.binning.BinningTokenizer):
      step = jnp.minimum(j // self.action_dim, self.horizon - 1)  # Chunk step of each token.
      step_ok = jnp.take_along_axis(batch["action_mask"], jnp.broadcast_to(step, (b, n + 1)), 1)
      weights = weights * jnp.where(j < n, step_ok, True).astype(jnp.float32)
    return inputs, targets, weights

  def _loss_weights(self, length: int) -> Array:
    """float32 [length]: each target slot's loss weight (``first_step_weight`` on the first
    chunk step's D tokens, 1 elsewhere)."""
    return jnp.where(jnp.arange(length) < self.action_dim, self.first_step_weight, 1.0)

  def init(self, rng: Array, batch: Mapping[str, Array]):
    b = batch["obs_mask"].shape[0]
    inputs = jnp.zeros((b, self.max_tokens + 1), jnp.int32)
    return self.module.init(common.init_key(rng), batch, inputs,
                            method=ARModule.sequence_logits)["params"]

  def loss(self, params, batch, rng):
    del rng  # Teacher forcing is deterministic.
    common.check_actions(batch, self.horizon, self.action_dim, "ARHead.loss")
    inputs, targets, weights = self._inputs_targets(batch)
    logits = self.module.apply({"params": params}, batch, inputs,
                               method=ARModule.sequence_logits)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    loss_weights = weights * self._loss_weights(weights.shape[1])[None]
    loss = jnp.sum(nll * loss_weights) / jnp.maximum(jnp.sum(loss_weights), 1.0)
    count = jnp.maximum(jnp.sum(weights), 1.0)  # The metrics stay unweighted.
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    return loss, {"ce": jnp.sum(nll * weights) / count,
                  "token_accuracy": jnp.sum(correct * weights) / count}

  def _masked_logits(self, logits: Array) -> Array:
    """logits float [..., V] -> the same with every id but the action block and EOS at -inf (the
    decoding distribution of the module docstring)."""
    ids = jnp.arange(logits.shape[-1])
    allowed = (ids >= self.layout.action_start) | (ids == self.layout.special(EOS))
    return jnp.where(allowed, logits, -jnp.inf)

  def _median_bin(self, masked: Array) -> Array:
    """int32 [...]: the median bin (action id) of masked logits [..., V]."""
    return action_tokens.greedy_bin(masked[..., self.layout.action_start:], "median")

  def _windowed(self, masked: Array, center: Array, window: int) -> Array:
    """Masked logits [..., V] with every action id farther than ``window`` bins from
    ``center`` int [...] (an action id) at -inf; EOS and the rest unchanged."""
    bins = jnp.arange(masked.shape[-1]) - self.layout.action_start
    far = (bins >= 0) & (jnp.abs(bins - center[..., None]) > window)
    return jnp.where(far, -jnp.inf, masked)

  def _pick(self, logits: Array, key: Array, temperature: float,
            point: str = "mode") -> tuple[Array, Array, Array]:
    """``(next LM id int32 [B], its log-prob float32 [B], its probability at temperature 1
    float32 [B])`` from masked logits [B, V] (``_masked_logits``: the action block and EOS);
    greedy (log-prob 0) at ``temperature <= 0``, picking the ``point`` of the action block
    unless EOS is the argmax."""
    if temperature <= 0:
      token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
      if point != "mode":
        start = self.layout.action_start
        ordinal = start + action_tokens.greedy_bin(logits[:, start:], point)
        token = jnp.where(token == self.layout.special(EOS), token, ordinal)
      logp = jnp.zeros(logits.shape[:1])
    else:
      token = jax.random.categorical(key, logits / temperature).astype(jnp.int32)
      logp = jnp.take_along_axis(jax.nn.log_softmax(logits / temperature, axis=-1),
                                 token[:, None], axis=-1)[:, 0]
    # exp(logit - logsumexp): the picked token's probability without materializing [B, V].
    picked = jnp.take_along_axis(logits, token[:, None], axis=-1)[:, 0]
    return token, logp, jnp.exp(picked - jax.nn.logsumexp(logits, axis=-1))

  def _decode(self, params, obs, rng, use_cache: bool, temperature: float, point: str = "mode",
              window: int = 0) -> tuple[Array, Array, Array, Array, Array, Array]:
    """Decodes ``(lm_ids int32 [B, n + 1], num_steps int32 [], log_prob float32 [B],
    confidence float32 [B], num_tokens int32 [B], centers int32 [B, n + 1])``; after its EOS a
    row is EOS. ``log_prob`` sums the picked tokens' log-probs up to and including the first
    EOS (0 when greedy); ``confidence`` is the mean probability (masked distribution,
    temperature 1) of the picked action tokens before the first EOS (HybridVLA's gate; 0 for a
    row with none); ``num_tokens`` counts those tokens; ``centers`` are the median bins that
    centred each step's window (``window`` > 0, module docstring; else unused)."""
    mod, n = self.module, self.max_tokens
    eos = self.layout.special(EOS)
    b = obs["obs_mask"].shape[0]
    out = jnp.full((b, n + 1), eos, jnp.int32)
    centers = jnp.zeros((b, n + 1), jnp.int32)
    first = jnp.full((b,), self.layout.special(BOA), jnp.int32)
    done = jnp.zeros((b,), bool)
    if use_cache:
      prefix_mask, cache = mod.apply({"params": params}, obs, method=ARModule.prefix)
      p = prefix_mask.shape[1]
      cache = gemma.extend_cache(cache, p + n + 1)
      keys = jnp.concatenate([prefix_mask, jnp.zeros((b, n + 1), bool)], axis=1)
      start = prefix_mask.sum(-1).astype(jnp.int32)

      def logits_at(i, token, state):
        cache, keys = state
        keys = keys.at[:, p + i].set(True)
        logits, cache = mod.apply({"params": params}, token, start + i, keys, cache, i,
                                  method=ARModule.decode_step)
        return logits, (cache, keys)

      state = (cache, keys)
    else:
      def logits_at(i, token, state):
        del token  # The whole sequence is re-run from ``state`` (the inputs so far).
        logits = mod.apply({"params": params}, obs, state, method=ARModule.sequence_logits)
        return jax.lax.dynamic_index_in_dim(logits, i, axis=1, keepdims=False), state

      state = jnp.concatenate([first[:, None], out[:, :n]], axis=1)

    def cond(carry):
      i, _, _, done = carry[:4]
      return (i < n + 1) & ~jnp.all(done)

    def body(carry):
      i, token, out, done, state, log_prob, prob_sum, centers = carry
      logits, state = logits_at(i, token, state)
      masked = self._masked_logits(logits)
      if window:
        center = self._median_bin(masked)
        masked = self._windowed(masked, center, window)
        centers = centers.at[:, i].set(center)
      picked, logp, prob = self._pick(masked, jax.random.fold_in(rng, i), temperature, point)
      nxt = jnp.where(done, eos, picked)
      log_prob = log_prob + jnp.where(done, 0.0, logp)  # Up to and including the first EOS.
      prob_sum = prob_sum + jnp.where(done | (nxt == eos), 0.0, prob)  # Action tokens only.
      out = out.at[:, i].set(nxt)
      if not use_cache:  # The next input; at i = n the write clamps to the unused last slot.
        state = jax.lax.dynamic_update_slice_in_dim(state, nxt[:, None], i + 1, axis=1)
      return i + 1, nxt, out, done | (nxt == eos), state, log_prob, prob_sum, centers

    zeros = jnp.zeros((b,), jnp.float32)
    init = (jnp.int32(0), first, out, done, state, zeros, zeros, centers)
    i, _, out, _, _, log_prob, prob_sum, centers = jax.lax.while_loop(cond, body, init)
    count = jnp.sum(jnp.cumsum(out == eos, axis=1) == 0, axis=1)  # Tokens before the first EOS.
    return (out, i, log_prob, prob_sum / jnp.maximum(count, 1), count.astype(jnp.int32),
            centers)

  def sample_tokens(self, params, obs, rng, use_cache: bool = True) -> tuple[Array, Array]:
    """Decodes ``(lm_ids int32 [B, n + 1], num_steps int32 [])`` at the head's temperature;
    after its EOS a row is EOS."""
    out, steps, *_ = self._decode(params, obs, rng, use_cache, self.temperature, self.point)
    return out, steps

  def _actions(self, lm_ids: Array) -> tuple[Array, Array]:
    """Decoded LM ids int32 [B, n + 1] -> ``(actions float32 [B, H, D] (NaN where invalid),
    valid bool [B])`` (see Validity in the module docstring)."""
    is_eos = lm_ids == self.layout.special(EOS)
    n1 = lm_ids.shape[1]
    lengths = jnp.where(is_eos.any(1), jnp.argmax(is_eos, axis=1), n1).astype(jnp.int32)
    ids = self.layout.from_lm(lm_ids[:, :self.max_tokens])
    lengths = jnp.minimum(lengths, self.max_tokens)
    actions, valid = action_tokens.decode_ids(self.tokenizer, ids, lengths, self.horizon,
                                              self.action_dim)
    valid &= is_eos.any(1) | isinstance(self.tokenizer, action_tokens.binning.BinningTokenizer)
    return jnp.where(valid[:, None, None], actions, jnp.nan), valid

  def sample(self, params, obs, rng, use_cache: bool = True,
             point: str | None = None) -> dict[str, Array]:
    """``{"actions" [B, H, D] (NaN where invalid), "valid" [B], "tokens" [B, n+1] (LM ids),
    "confidence" float32 [B] (mean probability of the picked action tokens), "num_tokens"
    int32 [B] (action tokens before EOS), "nfe" int32 [] (decoding steps run)}``; ``point``
    (None = the head's) is the greedy pick, see the class docstring."""
    point = self.point if point is None else point
    self._check_point(point, "ARHead.sample")
    lm_ids, steps, _, confidence, count, _ = self._decode(params, obs, rng, use_cache,
                                                          self.temperature, point)
    actions, valid = self._actions(lm_ids)
    return {"actions": actions, "valid": valid, "tokens": lm_ids, "confidence": confidence,
            "num_tokens": count, "nfe": steps}

  def _check_window(self, window: int, where: str) -> None:
    if window < 0 or (window and not isinstance(self.tokenizer,
                                                action_tokens.binning.BinningTokenizer)):
      raise ValueError(f"{where}: window={window} must be >= 0, and > 0 needs the binning "
                       "tokenizer (FAST ids are not ordered bins)")

  def sample_stochastic(self, params, obs, rng, temperature: float = 1.0,
                        use_cache: bool = True, window: int = 0) -> dict[str, Array]:
    """Samples at ``temperature`` (> 0) with its log-likelihood (RL; module docstring), over
    the whole masked distribution (``window = 0``) or within ``window`` bins of each step's
    median bin (window sampling, module docstring).

    Returns:
      ``{"actions" float32 [B, H, D] (NaN where invalid), "valid" bool [B], "log_prob" float32
      [B], "sample": {"tokens": int32 [B, n + 1] (LM ids, EOS after the first EOS)[, "center":
      int32 [B, n + 1] (each step's window centre, a bin; only with a window)]}, "nfe" int32
      []}``; ``log_prob`` equals :meth:`log_prob` of ``"sample"`` with the same options.
    """
    _check_temperature(temperature, "ARHead.sample_stochastic")
    self._check_window(window, "ARHead.sample_stochastic")
    lm_ids, steps, log_prob, _, _, centers = self._decode(params, obs, rng, use_cache,
                                                          temperature, window=window)
    actions, valid = self._actions(lm_ids)
    sample = {"tokens": lm_ids, **({"center": centers} if window else {})}
    return {"actions": actions, "valid": valid, "log_prob": log_prob, "sample": sample,
            "nfe": steps}

  def log_prob(self, params, obs, sample: Mapping[str, Array],
               temperature: float = 1.0, window: int = 0) -> Array:
    """Teacher-forced log-likelihood float32 [B] of ``sample["tokens"]`` int [B, n + 1] (LM ids)
    under the decoding distribution at ``temperature`` (> 0): one causal pass over ``[BOA,
    tokens[:, :n]]``, the masked logits (action block and EOS; with ``window`` > 0 only the
    bins within ``window`` of ``sample["center"]`` int [B, n + 1]) / temperature, summed up to
    and including each row's first EOS. Differentiable w.r.t. ``params``."""
    _check_temperature(temperature, "ARHead.log_prob")
    self._check_window(window, "ARHead.log_prob")
    if window and "center" not in sample:
      raise KeyError(f"ARHead.log_prob: window={window} needs sample['center'] (the window "
                     "centres recorded by sample_stochastic with the same window)")
    tokens = jnp.asarray(sample["tokens"], jnp.int32)
    b, n1 = tokens.shape
    if n1 != self.max_tokens + 1:
      raise ValueError(f"ARHead.log_prob: sample['tokens'] has {n1} slots, expected max_tokens "
                       f"+ 1 = {self.max_tokens + 1}")
    inputs = jnp.concatenate([jnp.full((b, 1), self.layout.special(BOA), jnp.int32),
                              tokens[:, :-1]], axis=1)
    logits = self.module.apply({"params": params}, obs, inputs, method=ARModule.sequence_logits)
    masked = self._masked_logits(logits)
    if window:
      masked = self._windowed(masked, jnp.asarray(sample["center"], jnp.int32), window)
    logp = jax.nn.log_softmax(masked / temperature, axis=-1)
    logp = jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
    is_eos = (tokens == self.layout.special(EOS)).astype(jnp.int32)
    live = (jnp.cumsum(is_eos, axis=1) - is_eos) == 0  # No EOS strictly before this slot.
    return jnp.sum(jnp.where(live, logp, 0.0), axis=1)


def _check_temperature(temperature: float, where: str) -> None:
  if not temperature > 0:  # Also refuses NaN.
    raise ValueError(f"{where}: temperature must be > 0 (a stochastic sampler with an exact "
                     f"log-likelihood), got temperature={temperature}; use sample() for greedy "
                     "decoding")
