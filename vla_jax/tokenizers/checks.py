"""Input checks shared by the action tokenizers: clear errors naming what is wrong and where.

Shapes and dtypes are static, so they are checked always (also while tracing under ``jit``). Values
(NaN/inf, id ranges) are checked on concrete arrays only; a traced value cannot raise, and the
jit-able code paths mark such entries explicitly instead (documented where they do).
"""

from __future__ import annotations

import json

import jax
import numpy as np


def is_traced(x) -> bool:
  """True when ``x`` is a JAX tracer (inside ``jit``/``vmap``): its values cannot be checked."""
  return isinstance(x, jax.core.Tracer)


def _first_bad(bad: np.ndarray) -> tuple[int, ...]:
  return tuple(int(i) for i in np.argwhere(bad)[0])


def check_int_ids(ids, low: int, high: int, what: str) -> None:
  """Raises ValueError unless ``ids`` is an integer array with values in ``[low, high)``.

  The dtype is checked always; values only on concrete arrays (tracers are skipped). The message
  names ``what`` (the caller), the first bad index and value, and the valid range.
  """
  dtype = ids.dtype if hasattr(ids, "dtype") else np.asarray(ids).dtype
  if not np.issubdtype(dtype, np.integer):
    raise ValueError(f"{what}: ids must be an integer array, got dtype {dtype}")
  if is_traced(ids):
    return
  a = np.asarray(ids)
  bad = (a < low) | (a >= high)
  if bad.any():
    pos = _first_bad(bad)
    raise ValueError(f"{what}: id {int(a[pos])} at index {pos} is out of range [{low}, {high}) "
                     f"({int(bad.sum())} bad ids in shape {a.shape})")


def check_actions(actions, action_dim: int, what: str, horizon: int | None = None) -> None:
  """Raises ValueError unless ``actions`` is a float array [B, H, D] with ``D == action_dim``.

  Also checks ``H == horizon`` when given, and (concrete arrays only) that every value is finite;
  the message names ``what``, the expected and actual shape, or the first NaN/inf index [b, t, d].
  """
  shape = tuple(np.shape(actions))
  if len(shape) != 3:
    raise ValueError(f"{what}: actions must have rank 3 [B, H, D], got shape {shape}")
  if shape[2] != action_dim:
    raise ValueError(f"{what}: actions have action dimension D={shape[2]} (shape {shape}), "
                     f"the tokenizer expects D={action_dim}")
  if horizon is not None and shape[1] != horizon:
    raise ValueError(f"{what}: actions have horizon H={shape[1]} (shape {shape}), "
                     f"the tokenizer expects H={horizon}")
  dtype = actions.dtype if hasattr(actions, "dtype") else np.asarray(actions).dtype
  if not np.issubdtype(dtype, np.floating):
    raise ValueError(f"{what}: actions must be a float array, got dtype {dtype}")
  if is_traced(actions):
    return
  a = np.asarray(actions)
  bad = ~np.isfinite(a)
  if bad.any():
    pos = _first_bad(bad)
    raise ValueError(f"{what}: actions contain non-finite values ({a[pos]} at [b, t, d] = {pos}; "
                     f"{int(bad.sum())} in total)")


def read_tokenizer_json(path: str, kind: str, writer: str, fmt: str) -> dict:
  """Reads a saved tokenizer's JSON and checks its ``format`` tag.

  Raises FileNotFoundError naming ``path`` and the ``writer`` that makes it, and ValueError
  "Corrupt <kind> tokenizer <path>: ..." for invalid JSON or a wrong ``format``.
  """
  try:
    with open(path, encoding="utf-8") as f:
      blob = json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(f"No {kind} tokenizer at {path} (expected the file written by "
                            f"{writer})") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"Corrupt {kind} tokenizer {path}: not valid JSON ({e})") from None
  if not isinstance(blob, dict) or blob.get("format") != fmt:
    got = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
    raise ValueError(f"Corrupt {kind} tokenizer {path}: key 'format' is {got!r}, expected "
                     f"{fmt!r}")
  return blob
