"""Fitting and evaluating action tokenizers on chunk arrays: the library side of
``experiments/fit_tokenizer.py``, also used by the benchmark and the notebook.
"""

from __future__ import annotations

import os
import time

import numpy as np

from vla_jax.tokenizers.binning import BinningTokenizer
from vla_jax.tokenizers.fast import FastTokenizer


def load_chunks(path: str, npz_key: str = "actions") -> np.ndarray:
  """Reads action chunks float32 [N, H, D] from a ``.npy`` file or a ``.npz`` archive.

  Args:
    path: the file; ``.npz`` archives are read at ``npz_key`` (or their only array).
    npz_key: the array name inside an ``.npz``.

  Raises:
    FileNotFoundError / ValueError naming the file (and key): a missing file, an unknown
    extension or key, or an array that is not a finite float [N, H, D] with N >= 1.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"Action chunk file {path} does not exist")
  ext = os.path.splitext(path)[1].lower()
  where = path
  if ext == ".npy":
    array = np.load(path, allow_pickle=False)
  elif ext == ".npz":
    with np.load(path, allow_pickle=False) as archive:
      names = list(archive.keys())
      if npz_key in names:
        key = npz_key
      elif len(names) == 1:
        key = names[0]
      else:
        raise ValueError(f"Action chunk file {path}: no array '{npz_key}' (arrays: {names}); "
                         f"set config.data.npz_key")
      array = archive[key]
      where = f"{path}['{key}']"
  else:
    raise ValueError(f"Action chunk file {path}: unknown extension '{ext}', expected .npy or .npz")
  if array.ndim != 3 or min(array.shape) < 1:
    raise ValueError(f"Action chunks {where}: expected shape [N, H, D] with N, H, D >= 1, got "
                     f"{array.shape}")
  if not np.issubdtype(array.dtype, np.floating):
    raise ValueError(f"Action chunks {where}: expected a float array, got dtype {array.dtype}")
  bad = ~np.isfinite(array)
  if bad.any():
    raise ValueError(f"Action chunks {where}: {int(bad.sum())} non-finite values, first at "
                     f"[chunk, t, d] = {tuple(int(i) for i in np.argwhere(bad)[0])}")
  return array.astype(np.float32)


def split_holdout(chunks: np.ndarray, fraction: float,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Random ``(fit, holdout)`` split of chunks [N, H, D]; the holdout has ``round(fraction N)``."""
  n_hold = round(fraction * len(chunks))
  if not 0 <= n_hold < len(chunks):
    raise ValueError(f"split_holdout: fraction {fraction} of {len(chunks)} chunks leaves none to "
                     f"fit on")
  perm = np.random.default_rng(seed).permutation(len(chunks))
  return chunks[perm[n_hold:]], chunks[perm[:n_hold]]


def evaluate_fast(tokenizer: FastTokenizer, chunks: np.ndarray) -> dict[str, float]:
  """Round-trips chunks [N, H, D] through FAST.

  Returns:
    ``tokens_mean``, ``tokens_max`` (tokens per chunk), ``binning_tokens`` (H * D, one token per
    value), ``compression`` (binning / FAST tokens), ``err_mean``, ``err_max`` (absolute error
    of valid decodes, in normalized action units) and ``valid_fraction``.
  """
  ids, lengths = tokenizer.encode(chunks)
  decoded, valid = tokenizer.decode(ids, lengths)
  err = np.abs(decoded[valid] - chunks[valid])
  binning = chunks.shape[1] * chunks.shape[2]
  return {"tokens_mean": float(lengths.mean()), "tokens_max": int(lengths.max()),
          "binning_tokens": binning, "compression": float(binning / lengths.mean()),
          "err_mean": float(err.mean()) if err.size else float("nan"),
          "err_max": float(err.max()) if err.size else float("nan"),
          "valid_fraction": float(valid.mean())}


def evaluate_binning(tokenizer: BinningTokenizer, chunks: np.ndarray) -> dict[str, float]:
  """Round-trips chunks [N, H, D] through binning: ``tokens_mean``, ``err_mean``, ``err_max``."""
  decoded = np.asarray(tokenizer.decode(tokenizer.encode(chunks)))
  err = np.abs(decoded - chunks)
  return {"tokens_mean": float(tokenizer.tokens_per_chunk(chunks.shape[1])),
          "err_mean": float(err.mean()), "err_max": float(err.max())}


def fit_fast(chunks: np.ndarray, scale: float, vocab_size: int,
             action_range: float | None = 1.0) -> tuple[FastTokenizer, float]:
  """Fits FAST on chunks [N, H, D]; returns the tokenizer and the fit time in seconds."""
  start = time.perf_counter()
  tok = FastTokenizer(chunks.shape[1], chunks.shape[2], scale=scale, vocab_size=vocab_size,
                      action_range=action_range).fit(chunks)
  return tok, time.perf_counter() - start
