"""Whole-or-nothing file writes: every small file vla_jax writes (JSON results, tokenizers,
normalization statistics, markdown reports) goes through here.

A writer fills a temporary file in the target's directory, then renames it over the target
(``os.replace`` is atomic on POSIX within one filesystem), so a reader, a crash or a SIGKILL never
sees half a file. The temporary name is unique per call, so processes writing the same file at once
(several hosts computing the same statistics) do not clobber each other's partial writes: the last
rename wins with a complete file.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any


def write_text(path: str | os.PathLike, text: str) -> str:
  """Writes ``text`` (UTF-8) to ``path`` atomically, creating its directory; returns the path."""
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


def write_json(path: str | os.PathLike, doc: Any, **dump_kwargs) -> str:
  """Writes ``doc`` as JSON (``json.dumps(doc, **dump_kwargs)``) to ``path`` atomically."""
  return write_text(path, json.dumps(doc, **dump_kwargs))


def read_json(path: str | os.PathLike) -> Any | None:
  """The JSON document at ``path``, or None when there is no file (a corrupt file raises, naming
  it: after :func:`write_json` that is never a half-written one)."""
  path = os.fspath(path)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from e
