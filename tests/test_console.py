"""The console filter: library INFO chatter hidden below --verbosity=1, our INFO and every warning
kept."""

import logging
import os

import pytest
from absl import logging as absl_logging

from vla_jax import console


def _record(name: str, level: int, pathname: str) -> logging.LogRecord:
  return logging.LogRecord(name, level, pathname, 1, "msg", None, None)


TFDS_INFO = _record("absl", logging.INFO, os.path.join("site-packages", "tensorflow_datasets",
                                                       "core", "reader.py"))
JAX_INFO = _record("jax._src.xla_bridge", logging.INFO, "xla_bridge.py")
MJX_INFO = _record("absl", logging.INFO, os.path.join("site-packages", "mujoco", "mjx", "io.py"))
OURS_INFO = _record("absl", logging.INFO, os.path.join("vla_jax", "data", "statistics.py"))
TFDS_WARNING = _record("absl", logging.WARNING, TFDS_INFO.pathname)


@pytest.fixture
def handler():
  h = absl_logging.get_absl_handler()
  yield h
  for f in [f for f in h.filters if isinstance(f, console.LibraryInfoFilter)]:
    h.removeFilter(f)


def test_library_info_shows_only_when_verbosity_asks(handler):
  console.configure(verbosity=0)
  assert not any(handler.filter(r) for r in (TFDS_INFO, JAX_INFO, MJX_INFO))
  assert handler.filter(OURS_INFO) and handler.filter(TFDS_WARNING)
  console.configure(verbosity=0)  # Idempotent: one filter.
  assert sum(isinstance(f, console.LibraryInfoFilter) for f in handler.filters) == 1
  console.configure(verbosity=1)
  assert handler.filter(TFDS_INFO) and handler.filter(JAX_INFO) and handler.filter(OURS_INFO)
