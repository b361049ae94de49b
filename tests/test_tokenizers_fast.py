"""FAST action tokenizer: DCT, round-trip precision, compression, validity, save/load, errors."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft

from vla_jax.tokenizers import dct, vocab
from vla_jax.tokenizers.assets import load_action_tokenizer
from vla_jax.tokenizers.binning import BinningTokenizer
from vla_jax.tokenizers.fast import BASE_CODEPOINT, FastTokenizer
from vla_jax.tokenizers.synthetic import smooth_chunks

H, D = 10, 7  # 1-second chunks at 10 Hz.


@pytest.fixture(scope="module")
def held_out():
  return smooth_chunks(300, H, D, control_hz=10.0, seed=1)


@pytest.fixture(scope="module")
def fast10():
  return FastTokenizer(H, D, scale=10.0, vocab_size=512).fit(
      smooth_chunks(1500, H, D, control_hz=10.0, seed=0))


@pytest.fixture(scope="module")
def fast100():
  return FastTokenizer(H, D, scale=100.0, vocab_size=2048).fit(
      smooth_chunks(1500, H, D, control_hz=10.0, seed=0))


def _round_trip_error(tok, chunks):
  ids, lengths = tok.encode(chunks)
  decoded, valid = tok.decode(ids, lengths)
  assert valid.all() and decoded.shape == chunks.shape and decoded.dtype == np.float32
  return np.abs(decoded - chunks)


def test_dct_matches_scipy():
  x = np.random.default_rng(0).normal(size=(3, 17, 5)).astype(np.float32)
  ref = scipy.fft.dct(x, type=2, norm="ortho", axis=1)
  np.testing.assert_allclose(dct.dct(x, axis=1), ref, atol=1e-5)
  np.testing.assert_allclose(np.asarray(dct.dct(jnp.asarray(x), axis=1)), ref, atol=1e-5)
  np.testing.assert_allclose(dct.idct(ref, axis=1), x, atol=1e-5)
  np.testing.assert_allclose(dct.dct(x[0], axis=0), ref[0], atol=1e-5)  # Another axis.


def test_round_trip_error_is_the_coefficient_rounding(fast10, fast100, held_out):
  err10 = _round_trip_error(fast10, held_out)
  err100 = _round_trip_error(fast100, held_out)
  assert err10.mean() <= 0.03 and err10.max() <= 0.15, (err10.mean(), err10.max())
  # 10x finer coefficients -> about 10x smaller errors.
  assert 5 <= err10.mean() / err100.mean() <= 20, (err10.mean(), err100.mean())
  assert 5 <= err10.max() / err100.max() <= 20, (err10.max(), err100.max())
  # Decoding the rounded coefficients directly gives the same actions: the BPE is lossless.
  coeffs = fast10.coefficients(held_out)
  decoded, _ = fast10.decode(*fast10.encode(held_out))
  np.testing.assert_allclose(decoded, fast10.coefficients_to_actions(coeffs), atol=1e-6)


def test_fewer_tokens_than_binning_low_frequencies_first(fast10, held_out):
  _, lengths = fast10.encode(held_out)
  assert lengths.mean() < 0.5 * H * D  # Binning needs H * D = 70 tokens per chunk.
  assert fast10.vocab_size == 512
  coeffs = fast10.coefficients(held_out[:1])
  text = fast10._to_strings(coeffs)[0]  # pylint: disable=protected-access
  # The first D characters are the DC coefficients of all D dimensions.
  assert [ord(c) - BASE_CODEPOINT + fast10.min_coeff for c in text[:D]] == list(coeffs[0, 0])


def test_padding_lengths_and_max_len(fast10, held_out):
  ids, lengths = fast10.encode(held_out[:5], max_len=64, pad_id=7)
  assert ids.shape == (5, 64) and ids.dtype == np.int32 and lengths.dtype == np.int32
  for row, n in zip(ids, lengths, strict=True):
    assert (row[n:] == 7).all()
  with pytest.raises(ValueError, match="more than max_len=3"):
    fast10.encode(held_out[:5], max_len=3)


def test_invalid_token_sequences_are_marked_not_zeroed(fast10, held_out):
  ids, lengths = fast10.encode(held_out[:4])
  short = lengths.copy()
  short[1] -= 1  # Drops the last token: fewer than H * D coefficients.
  long_ids = np.concatenate([ids, np.zeros((4, 2), np.int32)], axis=1)
  long_lengths = lengths.copy()
  long_ids[2, lengths[2]] = ids[2, 0]  # One token too many.
  long_lengths[2] += 1
  for a, n, bad in [(ids, short, 1), (long_ids, long_lengths, 2),
                    (ids, np.array([0, *lengths[1:]], np.int32), 0)]:
    actions, valid = fast10.decode(a, n)
    assert not valid[bad] and valid.sum() == 3
    assert np.isnan(actions[bad]).all()  # Never zeros that look like a real action.
    assert np.isfinite(actions[valid]).all()


def test_save_load_identical_ids(fast10, held_out, tmp_path):
  fast10.save(str(tmp_path))
  loaded = FastTokenizer.load(str(tmp_path))
  ids, lengths = fast10.encode(held_out)
  ids2, lengths2 = loaded.encode(held_out)
  np.testing.assert_array_equal(ids, ids2)
  np.testing.assert_array_equal(lengths, lengths2)
  np.testing.assert_array_equal(loaded.decode(ids, lengths)[0], fast10.decode(ids, lengths)[0])
  assert (loaded.scale, loaded.vocab_size, loaded.min_coeff) == (10.0, 512, fast10.min_coeff)


def test_host_vocab_mapping_of_fast_ids(fast10, held_out):
  ids, lengths = fast10.encode(held_out[:3])
  mapping = vocab.ActionVocabMapping(host_vocab_size=5000, num_action_ids=fast10.vocab_size,
                                     offset=5000 - 128 - fast10.vocab_size)
  back = np.asarray(mapping.from_host_ids(mapping.to_host_ids(ids)))
  np.testing.assert_array_equal(fast10.decode(back, lengths)[0], fast10.decode(ids, lengths)[0])


def test_unfitted_tokenizer_raises(held_out, tmp_path):
  tok = FastTokenizer(H, D)
  for call in (lambda: tok.encode(held_out), lambda: tok.decode(np.zeros((1, 3), np.int32)),
               lambda: tok.save(str(tmp_path)), lambda: tok.vocab_size):
    with pytest.raises(RuntimeError, match="not fitted"):
      call()


@pytest.mark.parametrize("shape,match", [((4, H), "rank 3"), ((4, H, D + 1), "D=8"),
                                         ((4, H + 1, D), "H=11")])
def test_bad_shapes_raise(fast10, shape, match):
  with pytest.raises(ValueError, match=match):
    fast10.encode(np.zeros(shape, np.float32))
  with pytest.raises(ValueError, match=match):
    FastTokenizer(H, D).fit(np.zeros(shape, np.float32))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_actions_raise(fast10, held_out, value):
  bad = held_out[:4].copy()
  bad[3, 2, 6] = value
  with pytest.raises(ValueError, match=r"non-finite.*\(3, 2, 6\)"):
    fast10.encode(bad)


def test_out_of_range_values_and_ids_raise(fast10, held_out):
  far = held_out[:2].copy()
  far[1] = 5.0  # Beyond action_range=1: its DC coefficients are outside the fitted alphabet.
  with pytest.raises(ValueError, match=r"chunk 1 has DCT coefficient .* outside the fitted range"):
    fast10.encode(far)
  assert fast10.encode(np.ones((1, H, D), np.float32))[1][0] > 0  # The range edge still encodes.
  ids, lengths = fast10.encode(held_out[:2])
  ids[0, 0] = 512
  with pytest.raises(ValueError, match=r"id 512 at index \(0, 0\) is out of range \[0, 512\)"):
    fast10.decode(ids, lengths)
  with pytest.raises(ValueError, match="lengths"):
    fast10.decode(ids, lengths + 100)


def test_vocab_smaller_than_alphabet_raises(held_out):
  with pytest.raises(ValueError, match="alphabet has .* raise vocab_size or lower scale"):
    FastTokenizer(H, D, scale=100.0, vocab_size=256).fit(held_out)


@pytest.mark.parametrize("edit,match", [
    (lambda b: "{" + json.dumps(b)[:100], "not valid JSON"),
    (lambda b: json.dumps({**b, "format": "fast/0"}), "format"),
    (lambda b: json.dumps({k: v for k, v in b.items() if k != "min_coeff"}), "missing key"),
    (lambda b: json.dumps({**b, "scale": "ten"}), "'scale' has type str"),
    (lambda b: json.dumps({**b, "bpe": {"model": {"type": "nonsense"}}}), "not a valid tokenizers"),
    (lambda b: json.dumps({**b, "max_coeff": b["max_coeff"] + 5}), "missing from the vocabulary"),
    (lambda b: json.dumps({**b, "min_coeff": b["min_coeff"] + 5}), "outside the integer alphabet"),
])
def test_corrupt_saved_tokenizer_raises(fast10, tmp_path, edit, match):
  path = fast10.save(str(tmp_path))
  with open(path, encoding="utf-8") as f:
    blob = json.load(f)
  with open(path, "w", encoding="utf-8") as f:
    f.write(edit(blob))
  with pytest.raises(ValueError, match=f"Corrupt FAST tokenizer .*{match}"):
    FastTokenizer.load(str(tmp_path))


def test_load_action_tokenizer_picks_the_saved_kind(fast10, tmp_path):
  with pytest.raises(FileNotFoundError, match="No action tokenizer"):
    load_action_tokenizer(str(tmp_path))
  fast10.save(str(tmp_path / "f"))
  assert isinstance(load_action_tokenizer(str(tmp_path / "f")), FastTokenizer)
  BinningTokenizer.uniform(D).save(str(tmp_path / "b"))
  assert isinstance(load_action_tokenizer(str(tmp_path / "b")), BinningTokenizer)
  BinningTokenizer.uniform(D).save(str(tmp_path / "f"))
  with pytest.raises(ValueError, match="both"):
    load_action_tokenizer(str(tmp_path / "f"))
