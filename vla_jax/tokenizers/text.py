"""Text tokenizer for instructions: fitted byte-level BPE (tiny configs) or a sentencepiece model.

Two backends behind one interface:

* :meth:`TextTokenizer.fit` trains a byte-level BPE (Hugging Face ``tokenizers``) on the
  instruction corpus; any string encodes (no unknown tokens). Ids 0, 1, 2 are ``<pad>``, ``<bos>``,
  ``<eos>``.
* :meth:`TextTokenizer.from_sentencepiece` wraps a user-supplied sentencepiece ``.model`` (e.g.
  PaliGemma's 257152-piece Gemma tokenizer); its own pad / bos / eos ids are used.

``encode_batch`` gives ``[bos] + pieces`` (+ ``[eos]`` if asked) right-padded with ``pad_id``;
a text that does not fit ``max_len`` is an error (never silently truncated). ``save(dir)`` /
``load(dir)`` write and read ``text_tokenizer.json`` (+ the backend file), so the tokenizer travels
with checkpoints.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence

import numpy as np
import sentencepiece as spm
import tokenizers

from vla_jax import atomic_files

_META = "text_tokenizer.json"
_BPE_FILE = "bpe.json"
_SPM_FILE = "sentencepiece.model"
_SPECIALS = ("<pad>", "<bos>", "<eos>")


class TextTokenizer:
  """Instruction tokenizer (see module docstring). Construct with :meth:`fit`,
  :meth:`from_sentencepiece` or :meth:`load`."""

  def __init__(self, backend: str, impl, source: str):
    self._backend, self._impl, self._source = backend, impl, source
    if backend == "bpe":
      self.pad_id, self.bos_id, self.eos_id = (impl.token_to_id(s) for s in _SPECIALS)
      self.vocab_size = impl.get_vocab_size()
    else:
      self.pad_id, self.bos_id, self.eos_id = impl.pad_id(), impl.bos_id(), impl.eos_id()
      self.vocab_size = impl.get_piece_size()
      for name, value in (("pad", self.pad_id), ("bos", self.bos_id), ("eos", self.eos_id)):
        if value < 0:
          raise ValueError(f"sentencepiece model {source}: it defines no {name} piece "
                           f"({name}_id = -1); train it with --{name}_id set")

  @classmethod
  def fit(cls, corpus: Sequence[str], vocab_size: int) -> TextTokenizer:
    """Trains a byte-level BPE of at most ``vocab_size`` tokens on ``corpus`` (deterministic)."""
    corpus = list(corpus)
    if not corpus or not all(isinstance(t, str) for t in corpus):
      raise ValueError("TextTokenizer.fit: corpus must be a non-empty list of strings")
    base = len(tokenizers.pre_tokenizers.ByteLevel.alphabet()) + len(_SPECIALS)
    if vocab_size < base:
      raise ValueError(f"TextTokenizer.fit: vocab_size={vocab_size} < {base} (256 bytes + "
                       f"{len(_SPECIALS)} special tokens)")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(_SPECIALS), show_progress=False,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer=trainer)
    return cls("bpe", tok, "fitted")

  @classmethod
  def from_sentencepiece(cls, model_path: str | os.PathLike) -> TextTokenizer:
    """Wraps a sentencepiece ``.model`` file (e.g. PaliGemma's ``tokenizer.model``)."""
    path = pathlib.Path(model_path)
    if not path.is_file():
      raise FileNotFoundError(f"sentencepiece model not found: {path}")
    sp = spm.SentencePieceProcessor(model_file=str(path))
    return cls("sentencepiece", sp, str(path))

  def _encode(self, text: str) -> list[int]:
    if self._backend == "bpe":
      return self._impl.encode(text, add_special_tokens=False).ids
    return self._impl.encode(text)

  def encode_batch(self, texts: Sequence[str], max_len: int, add_eos: bool = False,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Texts -> right-padded ids.

    Args:
      texts: B strings.
      max_len: L, the padded length.
      add_eos: append ``eos_id`` after each text.

    Returns:
      ``(ids int32 [B, L], mask bool [B, L])``; ``mask`` is True on ``[bos] + pieces (+ eos)``.

    Raises:
      ValueError: a text needs more than ``max_len`` tokens (its index, length and start named).
    """
    ids = np.full((len(texts), max_len), self.pad_id, np.int32)
    mask = np.zeros((len(texts), max_len), bool)
    for i, text in enumerate(texts):
      if not isinstance(text, str):
        raise TypeError(f"encode_batch: texts[{i}] is {type(text).__name__}, not str")
      seq = [self.bos_id, *self._encode(text)] + ([self.eos_id] if add_eos else [])
      if len(seq) > max_len:
        raise ValueError(f"encode_batch: texts[{i}] ('{text[:40]}...') needs {len(seq)} tokens "
                         f"> max_len={max_len}; raise max_len")
      ids[i, :len(seq)] = seq
      mask[i, :len(seq)] = True
    return ids, mask

  def decode(self, ids: Sequence[int]) -> str:
    """Ids (specials and padding dropped) -> text."""
    keep = [int(i) for i in ids if int(i) not in (self.pad_id, self.bos_id, self.eos_id)]
    if self._backend == "bpe":
      return self._impl.decode(keep).strip()
    return self._impl.decode(keep)

  def save(self, directory: str | os.PathLike) -> None:
    """Writes the tokenizer into ``directory`` (created if needed)."""
    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if self._backend == "bpe":
      self._impl.save(str(d / _BPE_FILE))
      file = _BPE_FILE
    else:
      (d / _SPM_FILE).write_bytes(self._impl.serialized_model_proto())
      file = _SPM_FILE
    meta = {"backend": self._backend, "file": file, "vocab_size": self.vocab_size,
            "pad_id": self.pad_id, "bos_id": self.bos_id, "eos_id": self.eos_id}
    atomic_files.write_json(d / _META, meta, indent=1)  # Last: a readable dir is a complete one.

  @classmethod
  def load(cls, directory: str | os.PathLike) -> TextTokenizer:
    """Reads a tokenizer written by :meth:`save`."""
    d = pathlib.Path(directory)
    if not (d / _META).is_file():
      raise FileNotFoundError(f"no {_META} in {d} (not a saved TextTokenizer)")
    meta = json.loads((d / _META).read_text())
    if meta.get("backend") == "bpe":
      tok = cls("bpe", tokenizers.Tokenizer.from_file(str(d / meta["file"])), str(d))
    elif meta.get("backend") == "sentencepiece":
      tok = cls("sentencepiece", spm.SentencePieceProcessor(model_file=str(d / meta["file"])),
                str(d))
    else:
      raise ValueError(f"{d / _META}: unknown backend {meta.get('backend')!r}")
    for key in ("vocab_size", "pad_id", "bos_id", "eos_id"):
      if getattr(tok, key) != meta[key]:
        raise ValueError(f"{d / _META}: {key}={meta[key]} but the stored model has "
                         f"{getattr(tok, key)}")
    return tok
