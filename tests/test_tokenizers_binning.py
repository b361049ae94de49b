"""Binning action tokenizer (uniform and quantile) and the host-vocabulary mapping."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vla_jax.tokenizers import vocab
from vla_jax.tokenizers.binning import BinningTokenizer
from vla_jax.tokenizers.synthetic import smooth_chunks

B, H, D = 8, 10, 7


@pytest.fixture(scope="module")
def chunks():
  x = smooth_chunks(B, H, D, control_hz=10.0, seed=3)
  x[0, 0, :] = [-1.0, 1.0, 0.0, -1.0, 1.0, 0.5, -0.5]  # Range ends and a bin edge.
  return x


@pytest.fixture(scope="module")
def uniform():
  return BinningTokenizer.uniform(D, num_bins=256)


@pytest.fixture(scope="module")
def quantile():
  data = smooth_chunks(400, H, D, control_hz=10.0, seed=0)
  data[:200, :, 6] = -1.0  # A gripper-like dimension: point masses at -1 and +1.
  data[200:, :, 6] = 1.0
  return BinningTokenizer.fit_quantile(data, num_bins=64)


def _bin_half_width(tok, ids):
  """Half the width of the bin of every id [B, H*D] -> [B, H, D]."""
  widths = tok.bin_widths()  # [D, N]
  ids = np.asarray(ids).reshape(ids.shape[0], -1, tok.action_dim)
  return 0.5 * widths[np.arange(tok.action_dim), ids]


def test_uniform_round_trip_within_half_a_bin(uniform, chunks):
  ids = uniform.encode(chunks)
  assert ids.shape == (B, H * D) and ids.dtype == jnp.int32
  assert int(ids.min()) >= 0 and int(ids.max()) < 256
  assert int(ids[0, 0]) == 0 and int(ids[0, 1]) == 255  # -1 -> first bin, +1 -> last bin.
  decoded = np.asarray(uniform.decode(ids))
  assert decoded.shape == (B, H, D) and decoded.dtype == np.float32
  half = 1.0 / 256  # Half of the bin width 2 / 256.
  assert np.abs(decoded - chunks).max() <= half + 1e-6
  assert np.abs(decoded - chunks).max() > 0.5 * half  # Real quantization, not a pass-through.


def test_ids_are_time_major(uniform, chunks):
  """Token t * D + d holds step t of dimension d."""
  ids = np.asarray(uniform.encode(chunks))
  per_value = np.asarray(uniform.encode(chunks[:, 3:4, :]))  # Step 3 alone: [B, D].
  np.testing.assert_array_equal(ids[:, 3 * D:4 * D], per_value)


def test_quantile_bins_have_equal_mass_and_bounded_error(quantile):
  data = smooth_chunks(400, H, D, control_hz=10.0, seed=0)
  ids = np.asarray(quantile.encode(data)).reshape(-1, D)
  for d in range(6):  # Continuous dimensions: each of the 64 bins holds about 1/64 of the data.
    counts = np.bincount(ids[:, d], minlength=64)
    assert counts.min() >= 0.8 * len(ids) / 64 and counts.max() <= 1.2 * len(ids) / 64, d
  held_out = smooth_chunks(50, H, D, control_hz=10.0, seed=9)
  held_out[:, :, 6] = np.where(held_out[:, :, 6] > 0, 1.0, -1.0)
  # Inside the fitted range the error is at most half the element's own bin width.
  lo, hi = quantile.edges[:, 0], quantile.edges[:, -1]
  held_out = np.clip(held_out, lo, hi)
  ids = quantile.encode(held_out)
  err = np.abs(np.asarray(quantile.decode(ids)) - held_out)
  assert (err <= _bin_half_width(quantile, ids) + 1e-6).all()
  assert err[..., 6].max() == 0.0  # Point masses land in zero-width bins and decode exactly.
  # Equal-mass bins are finer than uniform ones where the data is dense.
  assert np.median(quantile.bin_widths()[:6]) < 2.0 / 64


def test_encode_decode_are_jit_compiled_and_jit_safe(uniform, quantile, chunks):
  for tok in (uniform, quantile):
    eager = np.asarray(tok.decode(tok.encode(chunks)))
    # The tokenizer is a pytree: it can be an argument of a caller's jit.
    round_trip = jax.jit(lambda t, a: t.decode(t.encode(a)))
    np.testing.assert_array_equal(np.asarray(round_trip(tok, chunks)), eager)
  bad = chunks.copy()
  bad[1, 2, 3] = np.nan
  ids = jax.jit(uniform.encode)(bad)  # Traced values cannot raise: NaN -> id -1.
  assert int(ids[1, 2 * D + 3]) == -1 and (np.asarray(ids)[0] >= 0).all()
  wrong = np.asarray(uniform.encode(chunks)).copy()
  wrong[0, 5] = 300
  out = np.asarray(jax.jit(uniform.decode)(wrong))  # Traced out-of-range id -> NaN action.
  assert np.isnan(out[0, 0, 5]) and np.isfinite(np.delete(out.reshape(-1), 5)).all()


@pytest.mark.parametrize("kind", ["uniform", "quantile"])
def test_save_load_gives_identical_ids(kind, uniform, quantile, chunks, tmp_path):
  tok = {"uniform": uniform, "quantile": quantile}[kind]
  tok.save(str(tmp_path))
  loaded = BinningTokenizer.load(str(tmp_path))
  assert loaded.kind == kind and loaded.num_bins == tok.num_bins
  np.testing.assert_array_equal(np.asarray(loaded.encode(chunks)), np.asarray(tok.encode(chunks)))
  np.testing.assert_array_equal(np.asarray(loaded.edges), np.asarray(tok.edges))


@pytest.mark.parametrize("actions,match", [
    (np.zeros((B, H), np.float32), "rank 3"),
    (np.zeros((B, H, D + 1), np.float32), "D=8"),
    (np.zeros((B, H, D), np.int32), "float"),
])
def test_bad_actions_raise(uniform, actions, match):
  with pytest.raises(ValueError, match=match):
    uniform.encode(actions)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_actions_raise(uniform, chunks, value):
  bad = chunks.copy()
  bad[2, 4, 1] = value
  with pytest.raises(ValueError, match=r"non-finite.*\(2, 4, 1\)"):
    uniform.encode(bad)
  with pytest.raises(ValueError, match="non-finite"):
    BinningTokenizer.fit_quantile(bad)


def test_bad_ids_raise(uniform):
  ids = np.zeros((2, H * D), np.int32)
  ids[1, 3] = 256
  with pytest.raises(ValueError, match=r"id 256 at index \(1, 3\) is out of range \[0, 256\)"):
    uniform.decode(ids)
  ids[1, 3] = -2
  with pytest.raises(ValueError, match="out of range"):
    uniform.decode(ids)
  with pytest.raises(ValueError, match="integer"):
    uniform.decode(np.zeros((2, H * D), np.float32))
  with pytest.raises(ValueError, match=r"\[B, H \* D\]"):
    uniform.decode(np.zeros((2, 13), np.int32))


@pytest.mark.parametrize("edit,match", [
    (lambda text: text[: len(text) // 2], "not valid JSON"),
    (lambda text: json.dumps({**json.loads(text), "format": "other"}), "format"),
    (lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "edges"}),
     "missing key 'edges'"),
    (lambda text: json.dumps({**json.loads(text), "num_bins": 3}), "shape"),
    (lambda text: json.dumps({**json.loads(text), "kind": "cubic"}), "kind"),
    (lambda text: json.dumps({**json.loads(text), "edges": [e[::-1] for e in
                                                          json.loads(text)["edges"]]}),
     "non-decreasing"),
])
def test_corrupt_saved_tokenizer_raises(uniform, tmp_path, edit, match):
  path = uniform.save(str(tmp_path))
  with open(path) as f:
    text = f.read()
  with open(path, "w") as f:
    f.write(edit(text))
  with pytest.raises(ValueError, match=f"Corrupt binning tokenizer .*{match}"):
    BinningTokenizer.load(str(tmp_path))


def test_missing_saved_tokenizer_raises(tmp_path):
  with pytest.raises(FileNotFoundError, match="binning_tokenizer.json"):
    BinningTokenizer.load(str(tmp_path))


def test_vocab_mapping_round_trip_and_checks(uniform, chunks):
  ids = uniform.encode(chunks)
  mapping = vocab.ActionVocabMapping(host_vocab_size=1000, num_action_ids=uniform.vocab_size)
  host = mapping.to_host_ids(ids)
  assert int(host.min()) >= 1000 - 256 and int(host.max()) <= 999  # The last 256 ids.
  assert bool(mapping.is_action_id(host).all()) and not bool(mapping.is_action_id(jnp.array(3)))
  np.testing.assert_array_equal(np.asarray(mapping.from_host_ids(host)), np.asarray(ids))
  np.testing.assert_array_equal(  # The function form with an explicit offset.
      np.asarray(vocab.to_host_ids(ids, 1000, 256, offset=10)), np.asarray(ids) + 10)
  np.testing.assert_array_equal(
      np.asarray(vocab.from_host_ids(np.asarray(ids) + 10, 1000, 256, offset=10)), np.asarray(ids))
  with pytest.raises(ValueError, match=r"id 256 .* out of range \[0, 256\)"):
    mapping.to_host_ids(np.array([0, 256]))
  with pytest.raises(ValueError, match=r"out of range \[744, 1000\)"):
    mapping.from_host_ids(np.array([743]))
  with pytest.raises(ValueError, match="do not fit"):
    vocab.ActionVocabMapping(100, 256)
  with pytest.raises(ValueError, match="do not fit"):
    vocab.ActionVocabMapping(1000, 256, offset=800)
  traced = jax.jit(mapping.from_host_ids)(jnp.array([743, 744, 999, 1000]))
  np.testing.assert_array_equal(np.asarray(traced), [-1, 0, 255, -1])  # Invalid -> -1 in jit.
