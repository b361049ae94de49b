"""Smooth multi-dimensional action trajectories, so tokenizers can be fitted out of the box.

Stand-in for robot action data when no dataset is given (``experiments/fit_tokenizer.py``, the
benchmark, the notebook, tests). Each dimension of each chunk is a constant offset plus a few
sinusoids of slow, robot-like frequencies; chunks are independent. Values lie in ``[-1, 1]``, the
range of q01/q99-normalized actions, and are deterministic given ``seed``.
"""

from __future__ import annotations

import numpy as np


def smooth_chunks(num_chunks: int, horizon: int, action_dim: int = 7, control_hz: float = 10.0,
                  seed: int = 0, num_waves: int = 3, max_freq_hz: float = 1.5) -> np.ndarray:
  """Random smooth action chunks.

  Args:
    num_chunks: N.
    horizon: H steps per chunk (a 1-second chunk at ``control_hz`` has ``H = control_hz``).
    action_dim: D.
    control_hz: control rate in Hz: step ``t`` is at time ``t / control_hz`` seconds.
    seed: numpy random seed.
    num_waves: sinusoids per dimension.
    max_freq_hz: the sinusoid frequencies are uniform in ``[0.1, max_freq_hz]`` Hz.

  Returns:
    float32 [N, H, D] in ``[-1, 1]``: ``offset + sum_j a_j sin(2 pi f_j t + phi_j)`` with
    ``|offset| <= 0.4`` and ``sum_j |a_j| <= 0.6``.
  """
  if min(num_chunks, horizon, action_dim, num_waves) < 1 or control_hz <= 0:
    raise ValueError(f"smooth_chunks: sizes must be >= 1 and control_hz > 0, got num_chunks="
                     f"{num_chunks}, horizon={horizon}, action_dim={action_dim}, num_waves="
                     f"{num_waves}, control_hz={control_hz}")
  rng = np.random.default_rng(seed)
  shape = (num_chunks, 1, action_dim, num_waves)
  freq = rng.uniform(0.1, max_freq_hz, shape)
  phase = rng.uniform(0.0, 2 * np.pi, shape)
  amp = rng.uniform(0.0, 1.0, shape)
  amp *= 0.6 / amp.sum(-1, keepdims=True)  # Total amplitude 0.6: values stay inside [-1, 1].
  offset = rng.uniform(-0.4, 0.4, (num_chunks, 1, action_dim))
  t = (np.arange(horizon) / control_hz)[None, :, None, None]  # Seconds, [1, H, 1, 1].
  waves = (amp * np.sin(2 * np.pi * freq * t + phase)).sum(-1)
  return (offset + waves).astype(np.float32)
