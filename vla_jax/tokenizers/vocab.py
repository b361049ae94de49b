"""Placing action-token ids into a host (language-model) vocabulary and back.

Token heads predict action tokens with the language model's own output layer, so the N action ids
``0..N-1`` of a tokenizer (binning or FAST) take N ids of the host vocabulary. OpenVLA (Kim et al.
2024) and pi0-FAST (Pertsch et al. 2025) overwrite the least used ids at the end of the vocabulary;
by default :class:`ActionVocabMapping` takes the contiguous block ``[V - N, V)``, and ``offset``
places the block anywhere else (e.g. ``V - N - 128`` to keep Gemma's last 128 special ids free).

Both directions are pure ``jax.numpy`` and jit-able. Range checks: on concrete inputs (numpy or
committed JAX arrays, the host path) an out-of-range id raises ``ValueError`` naming it; inside
``jit`` values cannot raise, so an out-of-range id becomes ``-1`` (never a valid id), which the
downstream decoders report as invalid instead of silently using a wrong action.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from vla_jax.tokenizers.checks import check_int_ids

INVALID_ID = -1


@dataclasses.dataclass(frozen=True)
class ActionVocabMapping:
  """A contiguous block of ``num_action_ids`` ids inside a host vocabulary of ``host_vocab_size``.

  Attributes:
    host_vocab_size: size V of the host (language-model) vocabulary.
    num_action_ids: number N of action ids (``tokenizer.vocab_size``: 256 bins, a FAST BPE size).
    offset: host id of action id 0; ``None`` means ``V - N`` (the last N ids).
  """
  host_vocab_size: int
  num_action_ids: int
  offset: int | None = None

  def __post_init__(self):
    if self.num_action_ids < 1 or self.host_vocab_size < 1:
      raise ValueError(f"ActionVocabMapping: sizes must be >= 1, got host_vocab_size="
                       f"{self.host_vocab_size}, num_action_ids={self.num_action_ids}")
    if not 0 <= self.start <= self.host_vocab_size - self.num_action_ids:
      raise ValueError(f"ActionVocabMapping: {self.num_action_ids} action ids at offset "
                       f"{self.start} do not fit in a host vocabulary of {self.host_vocab_size}")

  @property
  def start(self) -> int:
    """Host id of action id 0."""
    return self.host_vocab_size - self.num_action_ids if self.offset is None else self.offset

  def to_host_ids(self, ids):
    """Action ids int [...] in ``[0, N)`` -> host ids int32 [...] in ``[start, start + N)``."""
    check_int_ids(ids, 0, self.num_action_ids, "ActionVocabMapping.to_host_ids")
    ids = jnp.asarray(ids, jnp.int32)
    ok = (ids >= 0) & (ids < self.num_action_ids)
    return jnp.where(ok, ids + self.start, INVALID_ID)

  def from_host_ids(self, host_ids):
    """Host ids int [...] in the action block -> action ids int32 [...] in ``[0, N)``."""
    check_int_ids(host_ids, self.start, self.start + self.num_action_ids,
                  "ActionVocabMapping.from_host_ids (the action block of the host vocabulary)")
    ids = jnp.asarray(host_ids, jnp.int32) - self.start
    ok = (ids >= 0) & (ids < self.num_action_ids)
    return jnp.where(ok, ids, INVALID_ID)

  def is_action_id(self, host_ids):
    """bool [...]: True where a host id lies in the action block (e.g. to mask logits)."""
    host_ids = jnp.asarray(host_ids)
    return (host_ids >= self.start) & (host_ids < self.start + self.num_action_ids)


def to_host_ids(ids, host_vocab_size: int, num_action_ids: int, offset: int | None = None):
  """Function form of :meth:`ActionVocabMapping.to_host_ids`."""
  return ActionVocabMapping(host_vocab_size, num_action_ids, offset).to_host_ids(ids)


def from_host_ids(host_ids, host_vocab_size: int, num_action_ids: int, offset: int | None = None):
  """Function form of :meth:`ActionVocabMapping.from_host_ids`."""
  return ActionVocabMapping(host_vocab_size, num_action_ids, offset).from_host_ids(host_ids)
