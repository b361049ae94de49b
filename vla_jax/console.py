"""What an experiment prints: its own progress lines, warnings, and library chatter on request.

Entry points (``experiments/*.py``) call :func:`configure` first thing in their absl ``main``.
absl routes every Python ``logging`` record at or above ``--verbosity`` (default 0: INFO) to
stderr, which lets the INFO records of :data:`QUIET_LIBRARIES` bury the job's own lines: TFDS
("Load dataset info from", "Creating a tf.data.Dataset reading N files", "Constructing
tf.data.Dataset ... for split" at every dataset open), orbax (dozens of lines per checkpoint
save), jax (backend probing), MJX ("Using JAX default device" at every model upload). Those
records, and TFDS's progress bars (per-split generation and shuffling bars, which turn into
``\r`` garbage in a log file), show only at ``--verbosity=1`` or more; their warnings and errors
always show. The project's own INFO records (``logging.info`` in
``vla_jax`` and ``experiments/``) follow ``--verbosity`` as usual (shown at 0, hidden at -1).
TensorFlow's C++ log lines are not Python records: ``TF_CPP_MIN_LOG_LEVEL`` governs them.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import logging as absl_logging

# Top-level packages whose INFO records are hidden below --verbosity=1.
QUIET_LIBRARIES = ("tensorflow_datasets", "orbax", "jax", "mujoco")


class LibraryInfoFilter(logging.Filter):
  """Drops records below WARNING that come from :data:`QUIET_LIBRARIES`.

  A record's origin is its logger name (``jax._src.xla_bridge``) or, for libraries that log
  through absl's single ``absl`` logger (TFDS, orbax), the source file absl attributes it to.
  """

  def __init__(self, libraries=QUIET_LIBRARIES):
    super().__init__()
    self._names = tuple(libraries)
    self._dirs = tuple(f"{os.sep}{lib}{os.sep}" for lib in libraries)

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
      return True
    if record.name.split(".", 1)[0] in self._names:
      return False
    return not any(d in (record.pathname or "") for d in self._dirs)


def configure(verbosity: int | None = None) -> None:
  """Sets what reaches the console (see the module docstring); call it in absl ``main``.

  Args:
    verbosity: absl verbosity (``--verbosity``: -1 warnings, 0 INFO, 1 debug and library
      chatter); None reads the current one (the parsed flag). Calling again replaces the setting.
  """
  verbosity = absl_logging.get_verbosity() if verbosity is None else int(verbosity)
  handler = absl_logging.get_absl_handler()
  for f in [f for f in handler.filters if isinstance(f, LibraryInfoFilter)]:
    handler.removeFilter(f)
  if verbosity < 1:
    handler.addFilter(LibraryInfoFilter())
  tfds = sys.modules.get("tensorflow_datasets")  # Not imported: an entry point without data.
  if tfds is not None:
    (tfds.enable_progress_bar if verbosity >= 1 else tfds.disable_progress_bar)()
