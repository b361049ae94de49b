"""Rollout videos: uint8 frames -> an animated GIF a person can open anywhere (no ffmpeg)."""

from __future__ import annotations

import os

import imageio.v3 as iio
import numpy as np


def write_gif(frames: np.ndarray, path: str, fps: float = 10.0, upscale: int = 4) -> str:
  """Writes frames uint8 [T, H, W, 3] as a looping GIF, nearest-upscaled ``upscale`` times.

  Returns the path. Raises ValueError on a wrong shape or dtype (names them).
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"write_gif({path}): frames must be uint8 [T, H, W, 3], got "
                     f"{frames.dtype} {frames.shape}")
  if upscale > 1:
    frames = frames.repeat(upscale, axis=1).repeat(upscale, axis=2)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  iio.imwrite(path, frames, extension=".gif", duration=1000.0 / fps, loop=0)
  return path
