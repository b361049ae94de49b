"""Action tokens inside the LM vocabulary, and in-``jit`` access to the action tokenizers.

Vocabulary layout of the token heads: ``[text ids | special ids | action ids]``. The N action ids
of the tokenizer take the last N ids of the LM vocabulary (:class:`ActionVocabMapping`, as OpenVLA
and pi0-FAST), the head's special ids (autoregressive: begin-of-action BOA and EOS; discrete
diffusion: MASK) sit right before them. With ``vocab_size = 0`` the LM vocabulary is sized to
``text_vocab_size + specials + N`` (a backbone trained from scratch); a given ``vocab_size`` (a
pretrained LM) must leave the text ids below the special ids.

Tokenizers and ``jit``: the binning tokenizer is pure ``jax.numpy`` and encodes inside the train
step (:func:`encode_chunks`). FAST's BPE runs in Python, so it encodes on host in the input
pipeline, as text does (``vla_jax.data.pipeline.action_token_batch``: ``action_tokens`` /
``action_token_mask`` in the batch), never inside the train step. Decoding sampled ids
(:func:`decode_ids`) is on the sampling path, not the train step: for FAST it is a
``jax.pure_callback`` with static shapes, returning the actions with a validity mask (invalid rows
are NaN, never zeros), so ``sample`` stays jit-able end to end.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from vla_jax.tokenizers import binning, fast
from vla_jax.tokenizers.vocab import ActionVocabMapping

Array = jax.Array
ActionTokenizer = binning.BinningTokenizer | fast.FastTokenizer


@dataclasses.dataclass(frozen=True)
class TokenLayout:
  """Where text, special and action ids live in the LM vocabulary (see the module docstring).

  Attributes:
    text_vocab_size: ids ``[0, text_vocab_size)`` are text.
    num_action_ids: N, the action tokenizer's vocabulary.
    num_special: special ids right before the action block.
    vocab_size: LM vocabulary size; 0 = ``text_vocab_size + num_special + N``.
  """

  text_vocab_size: int
  num_action_ids: int
  num_special: int
  vocab_size: int = 0

  def __post_init__(self):
    need = self.text_vocab_size + self.num_special + self.num_action_ids
    if self.vocab_size == 0:
      object.__setattr__(self, "vocab_size", need)
    if self.vocab_size < need:
      raise ValueError(f"TokenLayout: LM vocab_size={self.vocab_size} cannot hold "
                       f"{self.text_vocab_size} text + {self.num_special} special + "
                       f"{self.num_action_ids} action ids ({need})")

  @property
  def mapping(self) -> ActionVocabMapping:
    return ActionVocabMapping(self.vocab_size, self.num_action_ids)

  @property
  def action_start(self) -> int:
    return self.mapping.start

  def special(self, i: int) -> int:
    """LM id of special token ``i`` (0-based, in order before the action block)."""
    if not 0 <= i < self.num_special:
      raise IndexError(f"TokenLayout: special id {i} not in [0, {self.num_special})")
    return self.action_start - self.num_special + i

  def to_lm(self, ids: Array) -> Array:
    """Action ids [...] in [0, N) -> LM ids (jit-able; out-of-range ids become -1)."""
    return self.mapping.to_host_ids(ids)

  def from_lm(self, lm_ids: Array) -> Array:
    """LM ids [...] -> action ids; ids outside the action block become -1 (jit-able)."""
    ids = jnp.asarray(lm_ids, jnp.int32) - self.action_start
    return jnp.where((ids >= 0) & (ids < self.num_action_ids), ids, -1)


def num_action_ids(tokenizer: ActionTokenizer) -> int:
  return int(tokenizer.vocab_size)


def max_tokens(tokenizer: ActionTokenizer, horizon: int, max_fast_tokens: int) -> int:
  """Token slots per chunk: H * D for binning, ``max_fast_tokens`` for FAST."""
  if isinstance(tokenizer, binning.BinningTokenizer):
    return tokenizer.tokens_per_chunk(horizon)
  return int(max_fast_tokens)


def encode_chunks(tokenizer: ActionTokenizer, actions: Array, max_len: int) -> tuple[Array, Array]:
  """Binning: action chunks float [B, H, D] -> ``(ids int32 [B, H * D], lengths int32 [B])``
  inside jit (``max_len = H * D`` tokens, all valid).

  FAST is refused (TypeError): its tokens come from the input pipeline
  (``vla_jax.data.pipeline.action_token_batch``), not from a host callback inside the step.
  """
  if not isinstance(tokenizer, binning.BinningTokenizer):
    raise TypeError(f"encode_chunks: {type(tokenizer).__name__} does not encode inside jit; FAST "
                    "tokens are made on host by the input pipeline (batch['action_tokens'])")
  ids = tokenizer.encode(actions)
  if ids.shape[1] != max_len:
    raise ValueError(f"encode_chunks: binning gives {ids.shape[1]} tokens, expected {max_len}")
  return ids, jnp.full((ids.shape[0],), max_len, jnp.int32)


def decode_ids(tokenizer: ActionTokenizer, ids: Array, lengths: Array, horizon: int,
               action_dim: int) -> tuple[Array, Array]:
  """``ids int32 [B, L]`` (action ids; -1 = not an action token) and ``lengths int32 [B]`` ->
  ``(actions float32 [B, H, D], valid bool [B])`` in jit; invalid rows are NaN.

  FAST decodes in a ``jax.pure_callback`` (host BPE): fine on the sampling path; the train step
  never decodes.

  Binning: valid iff the first H * D tokens are all action ids (``lengths >= H * D``). FAST: the
  host BPE decode's validity (exactly H x D coefficients), also False for a sequence containing a
  non-action id before ``lengths``.
  """
  b = ids.shape[0]
  in_seq = jnp.arange(ids.shape[1])[None] < lengths[:, None]
  if isinstance(tokenizer, binning.BinningTokenizer):
    n = tokenizer.tokens_per_chunk(horizon)
    valid = (lengths >= n) & jnp.all((ids[:, :n] >= 0), axis=1)
    actions = tokenizer.decode(jnp.clip(ids[:, :n], 0, tokenizer.num_bins - 1))
    return jnp.where(valid[:, None, None], actions, jnp.nan), valid
  ok = jnp.all(jnp.where(in_seq, ids >= 0, True), axis=1)

  def host_decode(i, n):
    i, n = np.asarray(i), np.asarray(n)
    actions, valid = tokenizer.decode(np.where(i >= 0, i, 0), n)
    return actions.astype(np.float32), valid

  out = (jax.ShapeDtypeStruct((b, horizon, action_dim), jnp.float32),
         jax.ShapeDtypeStruct((b,), jnp.bool_))
  actions, valid = jax.pure_callback(host_decode, out, ids, lengths, vmap_method="sequential")
  valid &= ok
  return jnp.where(valid[:, None, None], actions, jnp.nan), valid


POINTS = ("mode", "median", "mean")


def check_point(point: str, where: str) -> None:
  if point not in POINTS:
    raise ValueError(f"{where}: point must be one of {POINTS}, got '{point}'")


def greedy_bin(logits: Array, point: str) -> Array:
  """The greedy pick int32 [...] among N ordered bins from ``logits`` float [..., N].

  ``"mode"``: the most likely bin (argmax). ``"median"``: the first bin where the cumulative
  probability reaches 1/2, the bin minimising the expected absolute error in bins. The two agree
  when the distribution is peaked; where it is spread over neighbouring bins (an uncertain
  position), the mode is one of many near-equal peaks and can land far from where the mass lies,
  while the median stays inside it. ``"mean"``: the expected bin, rounded (the bin minimising the
  expected squared error; between the modes of a two-peaked distribution, where the median
  takes the heavier side).
  """
  if point == "mode":
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  probs = jax.nn.softmax(logits, axis=-1)
  if point == "mean":
    bins = jnp.arange(logits.shape[-1], dtype=probs.dtype)
    return jnp.round(jnp.sum(probs * bins, axis=-1)).astype(jnp.int32)
  cdf = jnp.cumsum(probs, axis=-1)
  return jnp.argmax(cdf >= 0.5, axis=-1).astype(jnp.int32)


def soft_bin_targets(ids: Array, num_bins: int, sigma: float) -> Array:
  """Ordinal soft targets float32 [..., N] for bin ids int [...] (the histogram loss, HL-Gauss,
  Imani & White 2018; Farebrother et al. 2024): the mass that a Gaussian of std ``sigma`` bins
  centred on the bin's centre puts on each bin, renormalized over the N bins. Neighbouring bins
  share the target, so the cross-entropy knows that bin k + 1 is nearer to k than bin k + 50
  is. ``sigma = 0`` gives the one-hot target.
  """
  if sigma <= 0:
    return jax.nn.one_hot(ids, num_bins, dtype=jnp.float32)
  edges = jnp.arange(num_bins + 1, dtype=jnp.float32) - 0.5  # Bin k spans [k - 1/2, k + 1/2].
  cdf = jax.scipy.special.ndtr((edges - ids[..., None].astype(jnp.float32)) / sigma)
  mass = cdf[..., 1:] - cdf[..., :-1]
  return mass / jnp.sum(mass, axis=-1, keepdims=True)
