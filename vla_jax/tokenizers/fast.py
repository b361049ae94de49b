"""FAST action tokenizer (Pertsch et al. 2025, "FAST: Efficient Action Tokenization for VLA Models").

A chunk of normalized actions [H, D] becomes a short variable-length sequence of ids:

1. DCT-II with orthonormal scaling along time, per dimension (:mod:`vla_jax.tokenizers.dct`).
2. Multiply by ``scale`` (default 10) and round to integers: the only lossy step, an error of at
   most ``0.5 / scale`` per coefficient, which the orthonormal inverse spreads over time.
3. Flatten frequency-major (``k0 d0, k0 d1, ..., k1 d0, ...``) so the low frequencies of all
   dimensions come first and the near-zero high frequencies form long runs at the end.
4. Byte-pair encoding (Hugging Face ``tokenizers``) over the integer alphabet, ``vocab_size`` ids
   (default 1024), learned by :meth:`FastTokenizer.fit`.

The integer alphabet: each coefficient ``c`` becomes the unicode character
``chr(BASE_CODEPOINT + c - min_coeff)``; ``[min_coeff, max_coeff]`` (saved) is the range seen in
``fit`` widened to cover every chunk with values in ``[-action_range, action_range]`` (default 1,
the normalized range): an orthonormal DCT coefficient of such a chunk is at most
``sqrt(H) * action_range`` in magnitude. Every character of the range is in the BPE's initial
alphabet, so any in-range coefficient encodes, also one never seen in fit, and every normalized
chunk encodes. A coefficient outside the range at encode time (only possible for values beyond
``action_range`` not covered by the fit data) raises ``ValueError`` naming the chunk, coefficient
and range. No pre-tokenizer: a whole chunk is one BPE "word", so merges span dimensions and
frequencies (the zero runs of the high frequencies compress into few tokens).

Where it runs: FAST is a host (numpy) tokenizer. The data pipeline encodes chunks into ids; an
autoregressive head works inside ``jit`` with ids only (placed into the language-model vocabulary
with :mod:`vla_jax.tokenizers.vocab`), and the BPE decode back to actions runs on host via
:meth:`FastTokenizer.decode`, which returns a validity mask: a sequence that does not decode to
exactly H x D coefficients is marked invalid and its actions are NaN, never silently zeros.
"""

from __future__ import annotations

import json
import os

import numpy as np
import tokenizers
from tokenizers import decoders, models, trainers

from vla_jax import atomic_files
from vla_jax.tokenizers import dct
from vla_jax.tokenizers.checks import check_actions, check_int_ids, read_tokenizer_json

FILENAME = "fast_tokenizer.json"
FORMAT = "vla_jax.fast/1"
# CJK unified ideographs: 20992 printable letters in one block, no surrogates or combining marks.
BASE_CODEPOINT = 0x4E00
MAX_ALPHABET = 0xA000 - BASE_CODEPOINT


class FastTokenizer:
  """DCT + BPE action tokenizer for chunks float32 [B, H, D]; ids ``0..vocab_size-1``.

  Construct with the chunk shape and hyper-parameters, then :meth:`fit` on data (or :meth:`load`
  a fitted one). Encode and decode before fitting raise ``RuntimeError``.
  """

  def __init__(self, action_horizon: int, action_dim: int, scale: float = 10.0,
               vocab_size: int = 1024, action_range: float | None = 1.0):
    """Settings; nothing is learned until :meth:`fit`.

    Args:
      action_horizon: H, steps per chunk.
      action_dim: D.
      scale: DCT coefficients are multiplied by it before rounding (precision ``1 / scale``).
      vocab_size: requested BPE vocabulary size (must exceed the integer alphabet).
      action_range: the alphabet covers every chunk with ``|a| <= action_range``; ``None``: only
        the coefficient range of the fit data.
    """
    if (action_horizon < 1 or action_dim < 1 or not scale > 0 or vocab_size < 2
        or (action_range is not None and not action_range > 0)):
      raise ValueError(f"FastTokenizer: need action_horizon >= 1, action_dim >= 1, scale > 0, "
                       f"vocab_size >= 2, action_range > 0 or None; got {action_horizon}, "
                       f"{action_dim}, {scale}, {vocab_size}, {action_range}")
    self.action_range = None if action_range is None else float(action_range)
    self.action_horizon = int(action_horizon)
    self.action_dim = int(action_dim)
    self.scale = float(scale)
    self.requested_vocab_size = int(vocab_size)
    self.min_coeff: int | None = None
    self.max_coeff: int | None = None
    self._bpe: tokenizers.Tokenizer | None = None

  def __repr__(self):
    state = f"vocab_size={self.vocab_size}" if self.fitted else "unfitted"
    return (f"FastTokenizer(H={self.action_horizon}, D={self.action_dim}, scale={self.scale}, "
            f"{state})")

  # --- properties -----------------------------------------------------------------------------

  @property
  def fitted(self) -> bool:
    return self._bpe is not None

  def _require_fitted(self, what: str) -> tokenizers.Tokenizer:
    if self._bpe is None:
      raise RuntimeError(f"FastTokenizer.{what}: the tokenizer is not fitted; call "
                         f"FastTokenizer(...).fit(chunks) or FastTokenizer.load(directory) first")
    return self._bpe

  @property
  def vocab_size(self) -> int:
    """Number of ids of the fitted BPE (<= the requested size when the data has few merges)."""
    return self._require_fitted("vocab_size").get_vocab_size()

  @property
  def alphabet_size(self) -> int:
    """Number of distinct integer coefficients ``max_coeff - min_coeff + 1`` (fitted)."""
    self._require_fitted("alphabet_size")
    return self.max_coeff - self.min_coeff + 1

  # --- the numeric part -----------------------------------------------------------------------

  def coefficients(self, chunks) -> np.ndarray:
    """chunks float [B, H, D] -> rounded scaled DCT coefficients int64 [B, H, D] (k, d)."""
    check_actions(chunks, self.action_dim, "FastTokenizer", self.action_horizon)
    return np.rint(dct.dct(np.asarray(chunks, np.float64), axis=1) * self.scale).astype(np.int64)

  def coefficients_to_actions(self, coeffs) -> np.ndarray:
    """Integer coefficients [B, H, D] -> actions float32 [B, H, D] (inverse DCT of c / scale)."""
    return dct.idct(np.asarray(coeffs, np.float64) / self.scale, axis=1).astype(np.float32)

  def _to_strings(self, coeffs: np.ndarray) -> list[str]:
    """int [B, H, D] (in range) -> B strings of H * D characters, frequency-major."""
    n = self.action_horizon * self.action_dim
    codes = coeffs.reshape(len(coeffs), n) - self.min_coeff + BASE_CODEPOINT
    text = codes.astype("<u4").tobytes().decode("utf-32-le")
    return [text[i * n:(i + 1) * n] for i in range(codes.shape[0])]

  # --- fit --------------------------------------------------------------------------------------

  def fit(self, chunks) -> FastTokenizer:
    """Learns the coefficient range and the BPE from chunks float [N, H, D]; returns ``self``."""
    coeffs = self.coefficients(chunks)
    lo, hi = int(coeffs.min()), int(coeffs.max())
    if self.action_range is not None:  # |c_k| <= ||C[k]||_2 ||a||_2 <= sqrt(H) * action_range.
      bound = int(np.ceil(np.sqrt(self.action_horizon) * self.action_range * self.scale))
      lo, hi = min(lo, -bound), max(hi, bound)
    alphabet = hi - lo + 1
    if alphabet > min(self.requested_vocab_size, MAX_ALPHABET):
      raise ValueError(f"FastTokenizer.fit: the integer alphabet has {alphabet} symbols "
                       f"(coefficients in [{lo}, {hi}] at scale {self.scale}), more than "
                       f"vocab_size={self.requested_vocab_size} (max {MAX_ALPHABET}); raise "
                       f"vocab_size or lower scale")
    self.min_coeff, self.max_coeff = lo, hi
    bpe = tokenizers.Tokenizer(models.BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=self.requested_vocab_size, show_progress=False,
        initial_alphabet=[chr(BASE_CODEPOINT + i) for i in range(alphabet)])
    bpe.train_from_iterator(self._to_strings(coeffs), trainer=trainer, length=len(coeffs))
    bpe.decoder = decoders.Fuse()  # Tokens concatenate without separators.
    self._bpe = bpe
    return self

  # --- encode / decode --------------------------------------------------------------------------

  def encode(self, chunks, max_len: int | None = None,
             pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tokenizes a batch of chunks.

    Args:
      chunks: float [B, H, D] normalized actions (finite; H, D as constructed).
      max_len: pad to this length L; ``None`` pads to the longest sequence of the batch. A
        sequence longer than ``max_len`` raises ValueError.
      pad_id: the id written after each sequence's end (ignored by :meth:`decode`).

    Returns:
      ``(ids, lengths)``: ids int32 [B, L] and lengths int32 [B] (tokens before the padding).
    """
    bpe = self._require_fitted("encode")
    coeffs = self.coefficients(chunks)
    bad = (coeffs < self.min_coeff) | (coeffs > self.max_coeff)
    if bad.any():
      b, k, d = (int(i) for i in np.argwhere(bad)[0])
      raise ValueError(f"FastTokenizer.encode: chunk {b} has DCT coefficient {coeffs[b, k, d]} "
                       f"(frequency {k}, dimension {d}; at scale {self.scale}) outside the "
                       f"fitted range [{self.min_coeff}, {self.max_coeff}] ({int(bad.sum())} "
                       f"out-of-range coefficients): actions beyond action_range="
                       f"{self.action_range}? Refit on data covering them or lower scale")
    encodings = bpe.encode_batch_fast(self._to_strings(coeffs))
    lengths = np.array([len(e.ids) for e in encodings], np.int32)
    width = int(lengths.max(initial=0)) if max_len is None else int(max_len)
    if lengths.size and lengths.max() > width:
      b = int(np.argmax(lengths))
      raise ValueError(f"FastTokenizer.encode: chunk {b} needs {lengths[b]} tokens, more than "
                       f"max_len={max_len}")
    ids = np.full((len(encodings), width), pad_id, np.int32)
    for i, e in enumerate(encodings):  # Host-side ragged -> padded copy.
      ids[i, :lengths[i]] = e.ids
    return ids, lengths

  def decode(self, ids, lengths=None) -> tuple[np.ndarray, np.ndarray]:
    """Detokenizes a batch of id sequences on host.

    Args:
      ids: int [B, L] ids in ``[0, vocab_size)`` (positions at or past ``lengths`` are ignored).
      lengths: int [B] valid tokens per row; ``None`` means all L.

    Returns:
      ``(actions, valid)``: actions float32 [B, H, D] and valid bool [B]. A row whose tokens do
      not decode to exactly H * D coefficients is invalid and its actions are NaN.
    """
    bpe = self._require_fitted("decode")
    ids = np.asarray(ids)
    if ids.ndim != 2:
      raise ValueError(f"FastTokenizer.decode: ids must be [B, L], got shape {ids.shape}")
    b, width = ids.shape
    lengths = np.full((b,), width) if lengths is None else np.asarray(lengths)
    if lengths.shape != (b,) or not np.issubdtype(lengths.dtype, np.integer):
      raise ValueError(f"FastTokenizer.decode: lengths must be int [B]={b}, got shape "
                       f"{lengths.shape} dtype {lengths.dtype}")
    if ((lengths < 0) | (lengths > width)).any():
      raise ValueError(f"FastTokenizer.decode: lengths must lie in [0, L={width}], got "
                       f"{lengths.tolist()}")
    in_seq = np.arange(width)[None, :] < lengths[:, None]
    check_int_ids(np.where(in_seq, ids, 0), 0, self.vocab_size, "FastTokenizer.decode")
    texts = bpe.decode_batch([row[:n].tolist() for row, n in zip(ids, lengths, strict=True)],
                             skip_special_tokens=False)
    n = self.action_horizon * self.action_dim
    valid = np.array([len(t) == n for t in texts], bool)
    codes = np.zeros((b, n), np.int64)
    if valid.any():
      joined = "".join(t for t, ok in zip(texts, valid, strict=True) if ok)
      codes[valid] = np.frombuffer(joined.encode("utf-32-le"), "<u4").reshape(-1, n)
    codes -= BASE_CODEPOINT
    valid &= ((codes >= 0) & (codes < self.alphabet_size)).all(axis=1)
    coeffs = (codes + self.min_coeff).reshape(b, self.action_horizon, self.action_dim)
    actions = self.coefficients_to_actions(coeffs)
    actions[~valid] = np.nan
    return actions, valid

  def tokens_per_chunk(self, chunks) -> np.ndarray:
    """int32 [B]: the number of FAST tokens of each chunk."""
    return self.encode(chunks)[1]

  # --- save / load ------------------------------------------------------------------------------

  def save(self, directory: str) -> str:
    """Writes ``<directory>/fast_tokenizer.json`` (settings, range and BPE); returns its path."""
    bpe = self._require_fitted("save")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, FILENAME)
    blob = {"format": FORMAT, "action_horizon": self.action_horizon,
            "action_dim": self.action_dim, "scale": self.scale,
            "requested_vocab_size": self.requested_vocab_size,
            "action_range": self.action_range, "min_coeff": self.min_coeff,
            "max_coeff": self.max_coeff, "base_codepoint": BASE_CODEPOINT,
            "bpe": json.loads(bpe.to_str())}
    return atomic_files.write_json(path, blob, ensure_ascii=False)

  @classmethod
  def load(cls, directory: str) -> FastTokenizer:
    """Reads a tokenizer written by :meth:`save`; a corrupt file raises ValueError naming it."""
    path = os.path.join(directory, FILENAME)

    def corrupt(msg):
      return ValueError(f"Corrupt FAST tokenizer {path}: {msg}")

    blob = read_tokenizer_json(path, "FAST", "FastTokenizer.save", FORMAT)
    types = {"action_horizon": int, "action_dim": int, "scale": (int, float),
             "requested_vocab_size": int, "min_coeff": int, "max_coeff": int,
             "base_codepoint": int, "bpe": dict}
    for key, t in types.items():
      if key not in blob:
        raise corrupt(f"missing key '{key}'")
      if not isinstance(blob[key], t) or isinstance(blob[key], bool):
        raise corrupt(f"key '{key}' has type {type(blob[key]).__name__}")
    if blob["base_codepoint"] != BASE_CODEPOINT:
      raise corrupt(f"key 'base_codepoint' is {blob['base_codepoint']}, expected "
                    f"{BASE_CODEPOINT}")
    if "action_range" not in blob:
      raise corrupt("missing key 'action_range'")
    if blob["action_range"] is not None and not isinstance(blob["action_range"], int | float):
      raise corrupt(f"key 'action_range' has type {type(blob['action_range']).__name__}")
    try:
      tok = cls(blob["action_horizon"], blob["action_dim"], blob["scale"],
                blob["requested_vocab_size"], blob["action_range"])
    except ValueError as e:
      raise corrupt(str(e)) from None
    alphabet = blob["max_coeff"] - blob["min_coeff"] + 1
    if not 1 <= alphabet <= MAX_ALPHABET:
      raise corrupt(f"keys 'min_coeff'/'max_coeff' give an alphabet of {alphabet} symbols")
    try:
      bpe = tokenizers.Tokenizer.from_str(json.dumps(blob["bpe"]))
    except Exception as e:  # tokenizers raises its own exception types.  # noqa: BLE001
      raise corrupt(f"key 'bpe' is not a valid tokenizers JSON ({e})") from None
    vocab = bpe.get_vocab()
    chars = {chr(BASE_CODEPOINT + i) for i in range(alphabet)}
    if not chars <= vocab.keys():
      raise corrupt(f"key 'bpe': {len(chars - vocab.keys())} of the {alphabet} alphabet "
                    f"characters are missing from the vocabulary")
    if any(not set(token) <= chars for token in vocab):
      raise corrupt("key 'bpe': the vocabulary has tokens outside the integer alphabet")
    bpe.decoder = decoders.Fuse()
    tok.min_coeff, tok.max_coeff, tok._bpe = blob["min_coeff"], blob["max_coeff"], bpe
    return tok
