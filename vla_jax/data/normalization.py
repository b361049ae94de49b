"""Normalization statistics for actions and proprio states, and the normalizers.

The statistics are a JSON-able dict (so checkpoints can store them as an asset)::

  {"action": {"mean": [D], "std": [D], "min": [D], "max": [D], "q01": [D], "q99": [D],
              "mask": [D] bools, "count": int},
   "state":  {... the same with S entries ...},
   "num_transitions": int, "num_episodes": int}

``mask[i]`` True means dimension ``i`` is normalized; False keeps it raw (e.g. a gripper command
that is already in [-1, 1] or {0, 1}, where a z-score would blur the open/close decision).

Two modes:
  * ``"zscore"``: ``(x - mean) / std``.
  * ``"quantile"``: ``q01 -> -1, q99 -> +1`` linearly, then clipped to [-1, 1] (robust to outliers;
    openpi uses it for token heads, whose bins need a bounded range).

Every normalizer is an affine map plus a per-dimension clip (:func:`affine_params`), so the same
numbers drive numpy/jax here and ``tf`` in the input pipeline without importing TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from vla_jax import atomic_files

MODES = ("zscore", "quantile")
STAT_KEYS = ("mean", "std", "min", "max", "q01", "q99")
# A dimension whose spread is below this is constant in the data: it is passed through shifted but
# unscaled rather than divided by ~0 (which would turn float noise into huge values).
_MIN_SPREAD = 1e-6


def compute_stats(arrays: Iterable[np.ndarray], mask: Sequence[bool] | None = None,
                  name: str = "array") -> dict[str, Any]:
  """Statistics of the rows of a stream of ``[N_i, D]`` arrays (one pass over the stream).

  Args:
    arrays: per-episode float arrays ``[N_i, D]``; all with the same ``D``.
    mask: ``D`` bools, True = normalize this dimension (default: all True).
    name: what the arrays are (for error messages), e.g. ``"action of bridge_dataset"``.

  Returns:
    ``{"mean", "std", "min", "max", "q01", "q99"}`` as float lists of length ``D``, ``"mask"`` as a
    bool list and ``"count"`` (number of rows). Quantiles are numpy's default (linear) ones over all
    rows, so the result equals numpy on the concatenated data.
  """
  chunks = []
  for a in arrays:
    a = np.asarray(a, np.float64)
    if a.ndim != 2:
      raise ValueError(f"compute_stats({name}): expected [N, D] arrays, got shape {a.shape}")
    if chunks and a.shape[1] != chunks[0].shape[1]:
      raise ValueError(f"compute_stats({name}): dimension changed from {chunks[0].shape[1]} to "
                       f"{a.shape[1]}")
    chunks.append(a)
  if not chunks or sum(len(c) for c in chunks) == 0:
    raise ValueError(f"compute_stats({name}): no data")
  x = np.concatenate(chunks, axis=0)
  dim = x.shape[1]
  if mask is None:
    mask = [True] * dim
  if len(mask) != dim:
    raise ValueError(f"compute_stats({name}): mask has {len(mask)} entries for {dim} dimensions")
  q01, q99 = np.quantile(x, [0.01, 0.99], axis=0)
  return {
      "mean": x.mean(0).tolist(), "std": x.std(0).tolist(),
      "min": x.min(0).tolist(), "max": x.max(0).tolist(),
      "q01": q01.tolist(), "q99": q99.tolist(),
      "mask": [bool(m) for m in mask], "count": int(x.shape[0]),
  }


def affine_params(stats: dict[str, Any], mode: str) -> tuple[np.ndarray, ...]:
  """``(scale, offset, lo, hi)`` float32 ``[D]`` with ``normalize(x) = clip(x*scale+offset, lo, hi)``.

  Raw dimensions (mask False) get ``scale=1, offset=0, lo=-inf, hi=+inf``.
  """
  if mode not in MODES:
    raise ValueError(f"unknown normalization mode '{mode}'; expected one of {MODES}")
  missing = [k for k in (*STAT_KEYS, "mask") if k not in stats]
  if missing:
    raise KeyError(f"normalization stats lack {missing}; have {sorted(stats)}")
  mask = np.asarray(stats["mask"], bool)
  if mode == "zscore":
    center = np.asarray(stats["mean"], np.float64)
    half_range = np.asarray(stats["std"], np.float64)
    bound = np.inf
  else:
    q01 = np.asarray(stats["q01"], np.float64)
    q99 = np.asarray(stats["q99"], np.float64)
    center, half_range, bound = (q01 + q99) / 2, (q99 - q01) / 2, 1.0
  half_range = np.where(half_range < _MIN_SPREAD, 1.0, half_range)
  scale = np.where(mask, 1.0 / half_range, 1.0)
  offset = np.where(mask, -center / half_range, 0.0)
  lo = np.where(mask, -bound, -np.inf)
  hi = np.where(mask, bound, np.inf)
  return tuple(v.astype(np.float32) for v in (scale, offset, lo, hi))


def _xp(x):
  """numpy for numpy inputs, jax.numpy for jax arrays/tracers (keeps this file TF- and jax-free)."""
  if isinstance(x, np.ndarray | np.generic | list | tuple | float | int):
    return np
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return jnp


def normalize(x, stats: dict[str, Any], mode: str):
  """Normalizes ``x`` float ``[..., D]`` with one entry of the stats (e.g. ``stats["action"]``)."""
  scale, offset, lo, hi = affine_params(stats, mode)
  _check_dim(x, scale)
  xp = _xp(x)
  return xp.clip(x * scale + offset, lo, hi).astype(np.float32)


def unnormalize(x, stats: dict[str, Any], mode: str):
  """Inverse of :func:`normalize` (exact inside the clip range) for ``x`` ``[..., D]``."""
  scale, offset, _, _ = affine_params(stats, mode)
  _check_dim(x, scale)
  xp = _xp(x)
  if mode == "quantile":  # Model outputs may stray outside [-1, 1]; map only the trained range.
    mask = np.asarray(stats["mask"], bool)
    x = xp.where(mask, xp.clip(x, -1.0, 1.0), x)
  return ((x - offset) / scale).astype(np.float32)


def _check_dim(x, scale):
  if x.shape[-1] != scale.shape[0]:
    raise ValueError(f"normalize: last axis of x is {x.shape[-1]} but the stats have "
                     f"{scale.shape[0]} dimensions (x shape {tuple(x.shape)})")


def fingerprint(*parts: Any) -> str:
  """A short stable hash of JSON-able parts (dataset info, split, standardization, masks)."""
  text = json.dumps(parts, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_path(cache_dir: str, dataset_name: str, key: str) -> str:
  """Where the stats for ``dataset_name`` with fingerprint ``key`` are cached."""
  return os.path.join(cache_dir, f"norm_stats_{dataset_name}_{key}.json")


def load_cached(path: str) -> dict[str, Any] | None:
  """The cached stats at ``path``, or None when absent. A corrupt cache file is an error."""
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"normalization stats cache {path} is unreadable ({e}); delete it to "
                     "recompute") from e


def save_cached(path: str, stats: dict[str, Any]) -> None:
  """Writes ``stats`` atomically (write + rename, so a crash never leaves half a file)."""
  atomic_files.write_json(path, stats, indent=1)
