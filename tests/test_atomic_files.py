"""vla_jax.atomic_files: a write either lands whole or leaves the old file untouched."""

import json
import os

import pytest

from vla_jax import atomic_files


def test_write_json_round_trip_and_creates_directory(tmp_path):
  path = tmp_path / "a" / "b" / "doc.json"
  assert atomic_files.read_json(path) is None
  assert atomic_files.write_json(path, {"x": [1, 2], "y": "é"}, ensure_ascii=False) == str(path)
  assert atomic_files.read_json(path) == {"x": [1, 2], "y": "é"}
  assert os.listdir(path.parent) == ["doc.json"]  # No temporary left behind.


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
  path = tmp_path / "doc.json"
  atomic_files.write_json(path, {"old": 1})
  with pytest.raises(TypeError):
    atomic_files.write_json(path, {"new": object()})  # Not serializable: fails before the write.

  def failing_replace(src, dst):
    raise OSError("rename failed")

  monkeypatch.setattr(os, "replace", failing_replace)  # Fails after the temporary is written.
  with pytest.raises(OSError, match="rename failed"):
    atomic_files.write_json(path, {"new": 2})
  monkeypatch.undo()
  assert json.loads(path.read_text()) == {"old": 1}
  assert os.listdir(tmp_path) == ["doc.json"]


def test_read_json_names_a_corrupt_file(tmp_path):
  path = tmp_path / "bad.json"
  path.write_text("{not json")
  with pytest.raises(ValueError, match="bad.json"):
    atomic_files.read_json(path)
