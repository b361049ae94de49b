"""Text tokenizer: fitted BPE and a sentencepiece model trained here; save/load; bad input."""

import numpy as np
import pytest
import sentencepiece as spm

from vla_jax.tokenizers.text import TextTokenizer

CORPUS = [f"{verb} the {color} {obj} {where}"
          for verb in ("pick up", "push", "lift", "place")
          for color in ("red", "green", "blue", "yellow")
          for obj in ("cube", "ball", "cylinder")
          for where in ("", "onto the plate", "to the left")]


@pytest.fixture(scope="module")
def fitted():
  return TextTokenizer.fit(CORPUS, vocab_size=320)


def test_fit_encode_decode_roundtrip(fitted, tmp_path):
  assert fitted.vocab_size <= 320 and (fitted.pad_id, fitted.bos_id, fitted.eos_id) == (0, 1, 2)
  texts = ["pick up the red cube", "push the blue ball to the left", "stack a purple mug!"]
  ids, mask = fitted.encode_batch(texts, max_len=24, add_eos=True)
  assert ids.shape == mask.shape == (3, 24) and ids.dtype == np.int32 and mask.dtype == bool
  assert (ids[:, 0] == fitted.bos_id).all() and (ids[~mask] == fitted.pad_id).all()
  assert ids.max() < fitted.vocab_size
  # Frequent words merge into few tokens; unseen words still encode (byte level), losslessly.
  assert mask[0].sum() < len(texts[0]) // 2
  for row, text in zip(ids, texts):
    assert fitted.decode(row) == text
  fitted.save(tmp_path / "tok")
  again = TextTokenizer.load(tmp_path / "tok")
  np.testing.assert_array_equal(again.encode_batch(texts, 24, add_eos=True)[0], ids)
  # Deterministic: refitting gives the same ids.
  np.testing.assert_array_equal(
      TextTokenizer.fit(CORPUS, 320).encode_batch(texts, 24, add_eos=True)[0], ids)


def test_sentencepiece_model_path(tmp_path):
  prefix = tmp_path / "spm"
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(CORPUS * 3), model_prefix=str(prefix), vocab_size=36,
      model_type="unigram", pad_id=0, eos_id=1, bos_id=2, unk_id=3,  # Gemma's id layout.
      minloglevel=2)
  tok = TextTokenizer.from_sentencepiece(f"{prefix}.model")
  assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.vocab_size) == (0, 1, 2, 36)
  ref = spm.SentencePieceProcessor(model_file=f"{prefix}.model")
  ids, mask = tok.encode_batch(["lift the green ball", "push the red cube"], max_len=16)
  pieces = ref.encode("lift the green ball")
  np.testing.assert_array_equal(ids[0, :len(pieces) + 1], [2, *pieces])
  assert mask[0].sum() == len(pieces) + 1
  assert tok.decode(ids[1]) == "push the red cube"
  tok.save(tmp_path / "saved")
  np.testing.assert_array_equal(
      TextTokenizer.load(tmp_path / "saved").encode_batch(["lift the green ball"], 16)[0],
      ids[:1])


def test_bad_input_is_named(fitted, tmp_path):
  with pytest.raises(ValueError, match=r"texts\[1\].*needs \d+ tokens > max_len=4"):
    fitted.encode_batch(["red", "pick up the yellow cylinder onto the plate"], max_len=4)
  with pytest.raises(TypeError, match=r"texts\[0\] is int"):
    fitted.encode_batch([3], max_len=4)
  with pytest.raises(FileNotFoundError, match="nope.model"):
    TextTokenizer.from_sentencepiece(tmp_path / "nope.model")
  with pytest.raises(FileNotFoundError, match="not a saved TextTokenizer"):
    TextTokenizer.load(tmp_path)
  with pytest.raises(ValueError, match="vocab_size=100"):
    TextTokenizer.fit(CORPUS, 100)
