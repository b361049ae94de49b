"""Frozen-dataclass model configs <-> plain dicts / ConfigDicts (shared by the ViT and Gemma)."""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections


def from_dict(cls: type, d: Any) -> Any:
  """``cls(**d)`` for a dict or ConfigDict ``d``; unknown keys fail by name (with the known ones)."""
  d = dict(d.to_dict() if isinstance(d, ml_collections.ConfigDict) else d)
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(d) - known)
  if unknown:
    raise KeyError(f"{cls.__name__}: unknown keys {unknown}; known: {sorted(known)}")
  return cls(**d)
