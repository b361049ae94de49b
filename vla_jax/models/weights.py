"""Parameter-tree layouts and checkpoint import (Hugging Face safetensors, big_vision .npz).

Layouts. Stacked (``nn.scan``) layers live under one key with a leading [depth] axis
(``layers`` in Gemma, ``encoderblock`` in the ViT); unstacked ones under ``layers_0 ...``.
:func:`scan_to_layers` / :func:`layers_to_scan` convert between the two, so one checkpoint serves
both layouts.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

_STACKED = ("layers", "encoderblock")
_UNSTACKED = re.compile(r"^(layers|encoderblock)_(\d+)$")


def scan_to_layers(tree: Any) -> Any:
  """Splits every stacked ``layers`` / ``encoderblock`` subtree [depth, ...] into ``name_i``."""
  if not isinstance(tree, dict):
    return tree
  out = {}
  for k, v in tree.items():
    if k in _STACKED and isinstance(v, dict):
      leaves = _flatten(v)
      depths = {a.shape[0] for a in leaves.values()}
      if len(depths) != 1:
        raise ValueError(f"scan_to_layers: '{k}' leaves have different leading axes {depths}")
      for i in range(depths.pop()):
        out[f"{k}_{i}"] = _unflatten({p: a[i] for p, a in leaves.items()})
    else:
      out[k] = scan_to_layers(v)
  return out


def layers_to_scan(tree: Any) -> Any:
  """Stacks ``layers_0 ... layers_{n-1}`` (or ``encoderblock_i``) into one [n, ...] subtree."""
  if not isinstance(tree, dict):
    return tree
  groups: dict[str, dict[int, Any]] = {}
  out = {}
  for k, v in tree.items():
    m = _UNSTACKED.match(k)
    if m:
      groups.setdefault(m.group(1), {})[int(m.group(2))] = v
    else:
      out[k] = layers_to_scan(v)
  for name, layers in groups.items():
    if sorted(layers) != list(range(len(layers))):
      raise ValueError(f"layers_to_scan: '{name}_i' indices {sorted(layers)} are not 0..n-1")
    flat = [_flatten(layers[i]) for i in range(len(layers))]
    keys = set(flat[0])
    for i, f in enumerate(flat):
      if set(f) != keys:
        raise ValueError(f"layers_to_scan: '{name}_{i}' has keys {sorted(set(f) ^ keys)} that "
                         f"'{name}_0' does not share")
    out[name] = _unflatten({p: np.stack([np.asarray(f[p]) for f in flat]) for p in keys})
  return out


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """Nested dict -> {"a/b/c": leaf}."""
  if not isinstance(tree, dict):
    return {prefix: tree}
  out = {}
  for k, v in tree.items():
    out.update(_flatten(v, f"{prefix}/{k}" if prefix else str(k)))
  return out


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
  """{"a/b/c": leaf} -> nested dict."""
  out: dict[str, Any] = {}
  for path, v in flat.items():
    node = out
    *parents, last = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = v
  return out
