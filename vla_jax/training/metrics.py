"""Training metrics: TensorBoard event files and the one-line progress output."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import jax
import numpy as np
from tensorboardX import SummaryWriter

# Metrics added to the progress line when a step function reports them (RL's rollout success
# and, with rl.learn_noise_std, the learned Flow-Noise std).
SHOWN_IF_PRESENT = ("rollout_success", "noise_std")


# Metrics that stop the loop when NaN/inf (besides the loss and gradient norm) when a step
# function reports them: RL drops a group with NaN returns from its update (it has no return
# variance), so a NaN reward or rollout log-likelihood would leave the loss finite.
CHECKED_IF_PRESENT = ("return_mean", "rollout_log_prob")


def first_nonfinite(metrics: Sequence[dict]) -> int | None:
  """Index of the first host metrics dict whose loss, grad_norm or a :data:`CHECKED_IF_PRESENT`
  metric is NaN/inf, else None."""
  for i, m in enumerate(metrics):
    checked = [m["loss"], m.get("grad_norm", 0.0)] + [m[k] for k in CHECKED_IF_PRESENT if k in m]
    if not np.all(np.isfinite(checked)):
      return i
  return None


def mean_metrics(metrics: Sequence[dict]) -> dict[str, float]:
  """Average of each scalar metric over the logged interval."""
  return {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}


def _eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}"


class MetricsLogger:
  """Writes scalars to ``<workdir>/tensorboard`` and prints one progress line per log interval.

  Only process 0 writes and prints. Speed is measured between consecutive ``log`` calls (so
  compilation shows up only in the first line).
  """

  def __init__(self, workdir: str, num_steps: int, global_batch_size: int, print_fn=print):
    self.num_steps = num_steps
    self.global_batch_size = global_batch_size
    self.print_fn = print_fn
    self.is_main = jax.process_index() == 0
    self.writer = SummaryWriter(os.path.join(workdir, "tensorboard")) if self.is_main else None
    self._last_time = None
    self._last_step = None

  def start(self, step: int) -> None:
    self._last_time, self._last_step = time.perf_counter(), step

  def exclude(self, seconds: float) -> None:
    """Leaves ``seconds`` (e.g. a periodic evaluation) out of the speed and ETA figures."""
    self._last_time += seconds

  def log(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
    """Writes ``metrics`` (interval means) at ``step``; returns them plus speed figures."""
    now = time.perf_counter()
    steps_per_s = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_time, self._last_step = now, step
    out = dict(metrics, steps_per_s=steps_per_s,
               examples_per_s=steps_per_s * self.global_batch_size)
    if self.is_main:
      for key, value in out.items():
        self.writer.add_scalar(f"train/{key}", value, step)
      self.writer.flush()
      eta = _eta((self.num_steps - step) / max(steps_per_s, 1e-9))
      line = (f"step {step}/{self.num_steps} loss {out['loss']:.5f} "
              f"steps/s {steps_per_s:.2f} examples/s {out['examples_per_s']:.1f} ETA {eta}")
      line += "".join(f" {k} {out[k]:.3f}" for k in SHOWN_IF_PRESENT if k in out)
      self.print_fn(line, flush=True)  # Once: not also to absl logging (stderr on a console).
    return out

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()
