"""SIGTERM (preemption notice) -> save a checkpoint at the next step boundary and exit cleanly."""

from __future__ import annotations

import signal
import threading
from typing import Self

import jax
from jax.experimental import multihost_utils


class PreemptionGuard:
  """Context manager that turns SIGTERM into a flag the train loop polls between steps.

  Single process: a Python signal handler sets the flag. Multi-process: JAX's preemption sync
  service (started by ``jax.distributed.initialize``) makes every process agree on the same step,
  so they all save the same checkpoint.
  """

  def __init__(self):
    self._flag = False
    self._previous = None

  def _handler(self, signum, frame):
    del signum, frame
    self._flag = True

  def __enter__(self) -> Self:
    # Python only lets the main thread install handlers (a train() run from a notebook thread
    # then simply keeps the default SIGTERM behaviour).
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._flag
