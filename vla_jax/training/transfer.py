"""Transfer learning in the train loop: initial values from a checkpoint, and frozen params.

Both work on ``/``-joined parameter paths (``backbone/vlm/llm/layers_0/attn/q_einsum/w``; dict
keys, in tree order), the names :func:`named_leaves` gives:

* :func:`place_initial_params` puts host arrays (e.g. a pretrained backbone from
  ``Model.pretrained_params``) into a freshly created, sharded train state: each array goes to
  its leaf's ``NamedSharding`` (every process copies only its own shards), in ``params`` and in
  the EMA copy. Leaves it does not name keep their random init.
* :func:`trainable_mask` is ``train.trainable``: a regex that a path must match in full to be
  trained (the optimizer gives the others no update and no state, see ``optimizer.py``).
"""

from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np

DEFAULT_TRAINABLE = ".*"


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def named_leaves(tree: Any) -> dict[str, Any]:
  """``{"a/b/c": leaf}`` for every leaf of a params pytree (arrays or ShapeDtypeStructs)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(_key_name(k) for k in path): leaf for path, leaf in leaves}


def _size(leaf: Any) -> int:
  return int(np.prod(leaf.shape))


def trainable_mask(params: Any, pattern: str) -> Any:
  """Bool tree like ``params``: True where the path fully matches ``pattern`` (``train.trainable``).

  Raises:
    ValueError: ``pattern`` is not a regular expression, or matches no parameter (a typo would
      otherwise freeze the whole model).
  """
  try:
    regex = re.compile(pattern)
  except re.error as e:
    raise ValueError(f"train.trainable={pattern!r} is not a regular expression: {e}") from None
  paths = jax.tree_util.tree_flatten_with_path(params)[0]
  names = ["/".join(_key_name(k) for k in path) for path, _ in paths]
  flags = [regex.fullmatch(n) is not None for n in names]
  if names and not any(flags):
    raise ValueError(f"train.trainable={pattern!r} matches no parameter path (it must match a "
                     f"whole path); paths look like {names[:4]}")
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), flags)


def trainable_summary(params: Any, pattern: str) -> str:
  """One line: how many arrays / parameters ``pattern`` trains and freezes."""
  mask = named_leaves(trainable_mask(params, pattern))
  leaves = named_leaves(params)
  counts = {True: [0, 0], False: [0, 0]}
  for name, leaf in leaves.items():
    counts[mask[name]][0] += 1
    counts[mask[name]][1] += _size(leaf)
  (nt, pt), (nf, pf) = counts[True], counts[False]
  return (f"train.trainable={pattern!r}: {pt / 1e6:.3f}M params trainable ({nt} arrays), "
          f"{pf / 1e6:.3f}M frozen ({nf} arrays)")


def _uncovered(tree: Any, covered: set[str], prefix: str = "") -> list[str]:
  """Roots of the largest subtrees of ``tree`` none of whose leaves is in ``covered``."""
  if not isinstance(tree, dict):
    return [] if prefix in covered else [prefix]
  out, whole = [], True
  for k, v in tree.items():
    sub = _uncovered(v, covered, f"{prefix}/{k}" if prefix else str(k))
    whole &= sub == [f"{prefix}/{k}" if prefix else str(k)]
    out += sub
  return [prefix] if whole and prefix else out


def initial_params_summary(arrays: dict[str, np.ndarray], params: Any, source: str) -> str:
  """One line: how many arrays came from ``source`` and which subtrees keep their random init
  (numbered path components such as ``layers_3`` shown as ``layers_*``)."""
  leaves = named_leaves(params)
  loaded = sum(_size(leaves[k]) for k in arrays)
  kept = [k for k in leaves if k not in arrays]
  roots = _uncovered(params, set(arrays)) if isinstance(params, dict) else kept
  shown: list[str] = []
  for r in roots:
    *parents, last = r.split("/")
    r = "/".join([re.sub(r"_\d+$", "_*", p) for p in parents] + [last])
    if r not in shown:
      shown.append(r)
  rest = f" (+{len(shown) - 12} more)" if len(shown) > 12 else ""
  return (f"Initialized {len(arrays)} arrays ({loaded / 1e6:.3f}M params) from {source}; "
          f"random init kept for {len(kept)} arrays "
          f"({sum(_size(leaves[k]) for k in kept) / 1e6:.3f}M params): "
          f"{', '.join(shown[:12]) or 'none'}{rest}")


def _place(tree: Any, shardings: Any, arrays: dict[str, np.ndarray]) -> Any:
  def put(path, leaf, sharding):
    name = "/".join(_key_name(k) for k in path)
    if name not in arrays:
      return leaf
    host = np.asarray(arrays[name], dtype=leaf.dtype)
    # Each process builds only the shards its devices hold, straight from the host array.
    return jax.make_array_from_callback(leaf.shape, sharding, lambda index: host[index])
  return jax.tree_util.tree_map_with_path(put, tree, shardings)


def place_initial_params(state: Any, arrays: dict[str, np.ndarray], shardings: Any) -> Any:
  """Returns ``state`` (a ``TrainState`` of global arrays) with ``arrays`` as its params and, when
  EMA is on, its EMA params (separate buffers: the train step donates both).

  Args:
    state: the freshly created train state.
    arrays: ``{param path: host array}`` (see :func:`named_leaves`); cast to each leaf's dtype.
    shardings: the state's shardings (a ``TrainState`` of ``NamedSharding``).

  Raises:
    ValueError: a path that is not a parameter, or a shape that differs from the parameter's
      (each named with both shapes).
  """
  leaves = named_leaves(state.params)
  unknown = sorted(k for k in arrays if k not in leaves)
  wrong = [f"{k}: loaded {tuple(np.shape(v))} vs parameter {tuple(leaves[k].shape)}"
           for k, v in arrays.items() if k in leaves and tuple(np.shape(v)) != leaves[k].shape]
  if unknown or wrong:
    raise ValueError(f"initial params do not fit the model: unknown paths {unknown[:10]}"
                     f"{' ...' if len(unknown) > 10 else ''}; shape mismatches {wrong}")
  params = _place(state.params, shardings.params, arrays)
  ema = _place(state.ema_params, shardings.ema_params, arrays) if state.ema_params else (
      state.ema_params)
  return state.replace(params=params, ema_params=ema)
