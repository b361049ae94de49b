"""The orthonormal DCT-II along time, as a matrix, for numpy and JAX arrays alike.

FAST (Pertsch et al. 2025, "FAST: Efficient Action Tokenization for VLA Models") compresses an action
chunk by a DCT along time per action dimension. Action chunks are short (H = 10..100 steps), so a
dense [H, H] matrix product is as fast as an FFT and runs unchanged in numpy (host tokenizer) and in
JAX (inside ``jit``). Matches ``scipy.fft.dct(x, type=2, norm="ortho", axis=...)`` (tested to 1e-5).
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=32)
def dct_matrix(n: int) -> np.ndarray:
  """The orthonormal DCT-II matrix ``C`` float64 [n, n]: ``coeffs = C @ x`` and ``x = C.T @ coeffs``.

  ``C[k, t] = s_k cos(pi (2t + 1) k / (2n))`` with ``s_0 = sqrt(1/n)``, ``s_k = sqrt(2/n)``; the
  scaling makes ``C`` orthogonal, so the inverse (DCT-III) is its transpose. Read-only (cached).
  """
  if n < 1:
    raise ValueError(f"dct_matrix: n must be >= 1, got {n}")
  k = np.arange(n)[:, None]
  t = np.arange(n)[None, :]
  c = np.cos(np.pi * (2 * t + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
  c[0] /= np.sqrt(2.0)
  c.setflags(write=False)
  return c


def _xp(x):
  """numpy for numpy inputs, jax.numpy otherwise (JAX arrays and tracers)."""
  if isinstance(x, np.ndarray | np.generic | float | int | list):
    return np
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return jnp


def dct(x, axis: int = -2):
  """Orthonormal DCT-II of ``x`` along ``axis`` (default -2: time in ``[..., H, D]`` chunks).

  Args:
    x: float array (numpy or JAX), e.g. actions float32 [B, H, D].
    axis: the time axis.

  Returns:
    DCT coefficients, same shape as ``x``; index ``k`` along ``axis`` is frequency ``k / (2H)``
    cycles per step. numpy inputs are computed in float64, JAX inputs in their own dtype.
  """
  xp = _xp(x)
  x = xp.asarray(x)
  c = dct_matrix(x.shape[axis])
  c = c if xp is np else xp.asarray(c, dtype=x.dtype)
  return xp.moveaxis(c @ xp.moveaxis(x, axis, -2), -2, axis)  # Batched [H, H] @ [..., H, D].


def idct(coeffs, axis: int = -2):
  """Inverse of :func:`dct` (orthonormal DCT-III) along ``axis``; same shapes and dtypes."""
  xp = _xp(coeffs)
  coeffs = xp.asarray(coeffs)
  c = dct_matrix(coeffs.shape[axis])
  c = c if xp is np else xp.asarray(c, dtype=coeffs.dtype)
  return xp.moveaxis(c.T @ xp.moveaxis(coeffs, axis, -2), -2, axis)
