"""A tiny synthetic batch of action chunks conditioned on image and instruction (tests, benchmark).

Conditions are (image, instruction) pairs: ``num_images`` images, each a different solid colour
with a bright square at an image-specific place, times ``num_instructions`` token sequences. Every
condition has ``modes`` target chunks (distinct smooth curves, values in [-0.8, 0.8]); the batch
holds every (condition, mode) pair ``repeats`` times, so the action distribution given one
condition is multimodal when ``modes > 1`` and a model must read both the image and the text to
pick the right chunk set. ``state`` is a fixed per-condition proprio vector, identical for all
modes of a condition (so nothing in the observation tells the modes apart).
"""

from __future__ import annotations

import numpy as np


def multimodal_batch(*, horizon: int = 4, action_dim: int = 2, state_dim: int = 3,
                     image_size: int = 16, num_images: int = 2, num_instructions: int = 2,
                     modes: int = 2, repeats: int = 1, text_len: int = 3, history: int = 1,
                     seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
  """Returns ``(batch, condition, targets)``.

  Returns:
    batch: the batch contract, B = num_images * num_instructions * modes * repeats; uint8 images
      [B, T, S, S, 3], ``text_tokens`` int32 [B, text_len] with ids in [1, 2 + num_instructions]
      (0 = padding in the last slot of instruction 0), float32 ``actions`` [B, H, D].
    condition: int [B], the condition index of every row.
    targets: float32 [conditions, modes, H, D], every condition's mode chunks.
  """
  rng = np.random.default_rng(seed)
  n_cond = num_images * num_instructions
  t = np.linspace(0.0, 1.0, horizon)[None, None, :, None]
  amp = rng.uniform(0.3, 0.8, (n_cond, modes, 1, action_dim)) * rng.choice([-1, 1], (
      n_cond, modes, 1, action_dim))
  phase = rng.uniform(0, np.pi, (n_cond, modes, 1, action_dim))
  targets = (amp * np.cos(np.pi * t + phase)).astype(np.float32)  # Smooth, in [-0.8, 0.8].
  rows = [(c, m) for c in range(n_cond) for m in range(modes) for _ in range(repeats)]
  cond = np.array([c for c, _ in rows])
  b = len(rows)
  state = rng.normal(0, 0.5, (n_cond, state_dim)).astype(np.float32)
  colours = rng.integers(0, 256, (num_images, 3))
  images = np.zeros((b, history, image_size, image_size, 3), np.uint8)
  q = image_size // 2
  for i, (c, _) in enumerate(rows):  # Host-side data building, not a model hot path.
    img = c // num_instructions
    images[i, :] = colours[img]
    y, x = divmod(img % 4, 2)
    images[i, :, y * q:(y + 1) * q, x * q:(x + 1) * q] = 255
  text = np.array([[1 + (c % num_instructions) + j for j in range(text_len)] for c, _ in rows],
                  np.int32)
  text_mask = np.ones_like(text, bool)
  text_mask[cond % num_instructions == 0, -1] = False  # Some padding, as real batches have.
  text[~text_mask] = 0
  batch = {
      "image/base": images,
      "obs_mask": np.ones((b, history), bool),
      "state": np.repeat(state[cond][:, None], history, axis=1),
      "text_tokens": text,
      "text_mask": text_mask,
      "actions": np.stack([targets[c, m] for c, m in rows]).astype(np.float32),
      "action_mask": np.ones((b, horizon), bool),
  }
  return batch, cond, targets


def nearest_mode_error(actions: np.ndarray, condition: np.ndarray,
                       targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """``(max |error| to the nearest mode [B], index of that mode [B])`` for sampled chunks."""
  cand = targets[condition]  # [B, modes, H, D]
  err = np.abs(actions[:, None] - cand).max(axis=(2, 3))
  return err.min(axis=1), err.argmin(axis=1)
