"""A tiny synthetic batch whose action chunk needs both the image and the instruction (tests).

Scene: ``num_images`` images of one grey table (``BACKGROUND``); each shows ``num_instructions``
objects, object k a square of colour ``COLOURS[k]`` (the same colour in every image) filling one
cell of a 4 x 4 grid. The cells are drawn at random without replacement over the whole dataset,
so no two (image, object) pairs share a place. Instruction k names object k (its own token
sequence). The target of the condition (image i, instruction k) is a reach from the origin to
object k's place in image i: a chunk [H, D=2] of (x, y) positions ending at the cell's centre,
(x, y) in {-0.6, -0.2, 0.2, 0.6}^2; with ``modes > 1`` the modes are paths that bow to different
sides of the straight line (same end point), all values in [-0.75, 0.75].

What identifies the target: ``state`` is ONE proprio vector shared by every row; the instruction
names a colour, not a place; every image holds every object, so the image alone does not say
which one to reach. Only the image AND the instruction determine the target. :func:`blank`
removes one of the two: the negative control of the head tests (the error must rise).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

GRID = 4  # Cells per image side.
BACKGROUND = (128, 128, 128)  # The empty table.
COLOURS = ((230, 30, 30), (30, 60, 230), (30, 200, 60), (240, 220, 30))  # Object k's colour.
BOW = 0.5  # Sideways bow of the modes' paths at mid-chunk (values stay within [-0.75, 0.75]).


def _cell_centre(cell: np.ndarray) -> np.ndarray:
  """int [..., 2] (row, col) grid cells -> float32 [..., 2] (x, y) in {-0.6, -0.2, 0.2, 0.6}."""
  step = 1.2 / (GRID - 1)
  row, col = cell[..., 0], cell[..., 1]
  return np.stack([col * step - 0.6, 0.6 - row * step], axis=-1).astype(np.float32)


def multimodal_batch(*, horizon: int = 4, action_dim: int = 2, state_dim: int = 3,
                     image_size: int = 16, num_images: int = 2, num_instructions: int = 2,
                     modes: int = 2, repeats: int = 1, text_len: int = 3, history: int = 1,
                     seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
  """Returns ``(batch, condition, targets)`` (see the module docstring for the task).

  Args:
    horizon: H, chunk length.
    action_dim: D; must be 2 (the (x, y) of the reach).
    image_size: S pixels, a multiple of 4 (the grid).
    num_images, num_instructions: conditions are their product (at most 16 = the grid cells);
      num_instructions is also the number of objects per image (at most 4 colours).
    modes: paths per condition; repeats: copies of every (condition, mode) row.
    history: T, frames per row (all identical).

  Returns:
    batch: the batch contract, B = num_images * num_instructions * modes * repeats; uint8 images
      ``image/base`` [B, T, S, S, 3], ``state`` float32 [B, T, state_dim] (one vector for all
      rows), ``text_tokens`` int32 [B, text_len] with ids in [1, num_instructions + text_len - 1]
      (0 = padding in the last slot of instruction 0), float32 ``actions`` [B, H, 2].
    condition: int [B], the condition index ``image * num_instructions + instruction`` of rows.
    targets: float32 [conditions, modes, H, 2], every condition's mode chunks.
  """
  n_cond = num_images * num_instructions
  if action_dim != 2:
    raise ValueError(f"multimodal_batch: action_dim={action_dim}; the reach task has D=2 (x, y)")
  if image_size % GRID:
    raise ValueError(f"multimodal_batch: image_size={image_size} is not a multiple of {GRID}")
  if num_instructions > len(COLOURS) or n_cond > GRID * GRID:
    raise ValueError(f"multimodal_batch: num_instructions={num_instructions} (at most "
                     f"{len(COLOURS)} colours) x num_images={num_images} must fit {GRID * GRID} "
                     "grid cells")
  rng = np.random.default_rng(seed)
  flat = rng.choice(GRID * GRID, n_cond, replace=False)  # One distinct cell per condition.
  cells = np.stack(divmod(flat, GRID), axis=-1).reshape(num_images, num_instructions, 2)
  end = _cell_centre(cells).reshape(n_cond, 2)  # Condition c = image * num_instructions + k.

  s = (np.arange(horizon, dtype=np.float32) + 1) / horizon  # Reach progress, ends at 1.
  side = np.stack([-end[:, 1], end[:, 0]], -1) / np.linalg.norm(end, axis=-1, keepdims=True)
  bows = np.linspace(-BOW, BOW, modes) if modes > 1 else np.zeros(1)
  targets = (s[None, None, :, None] * end[:, None, None]
             + bows[None, :, None, None] * np.sin(np.pi * s)[None, None, :, None]
             * side[:, None, None]).astype(np.float32)  # [C, modes, H, 2]

  rows = [(c, m) for c in range(n_cond) for m in range(modes) for _ in range(repeats)]
  cond = np.array([c for c, _ in rows])
  b = len(rows)
  scenes = np.empty((num_images, image_size, image_size, 3), np.uint8)
  scenes[:] = BACKGROUND
  q = image_size // GRID
  for i in range(num_images):  # Host-side data building, not a model hot path.
    for k in range(num_instructions):
      r, c = cells[i, k]
      scenes[i, r * q:(r + 1) * q, c * q:(c + 1) * q] = COLOURS[k]
  images = np.repeat(scenes[cond // num_instructions][:, None], history, axis=1)

  k = cond % num_instructions
  text = (1 + k[:, None] + np.arange(text_len)[None]).astype(np.int32)
  text_mask = np.ones_like(text, bool)
  text_mask[k == 0, -1] = False  # Some padding, as real batches have.
  text[~text_mask] = 0
  state = rng.normal(0, 0.5, (state_dim,)).astype(np.float32)  # Shared: says nothing.
  batch = {
      "image/base": images,
      "obs_mask": np.ones((b, history), bool),
      "state": np.broadcast_to(state, (b, history, state_dim)).copy(),
      "text_tokens": text,
      "text_mask": text_mask,
      "actions": targets[cond, [m for _, m in rows]],
      "action_mask": np.ones((b, horizon), bool),
  }
  return batch, cond, targets


def blank(observation: Mapping[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
  """The observation without its objects (``what="image"``: every ``image/*`` is the empty table)
  or without its instruction (``"text"``: all text is padding); other keys unchanged."""
  out = dict(observation)
  if what == "image":
    for key in observation:
      if key.startswith("image/"):
        img = np.empty(np.shape(observation[key]), np.uint8)
        img[:] = BACKGROUND
        out[key] = img
  elif what == "text":
    out["text_tokens"] = np.zeros(np.shape(observation["text_tokens"]), np.int32)
    out["text_mask"] = np.zeros(np.shape(observation["text_mask"]), bool)
  else:
    raise ValueError(f"blank: what='{what}' is not 'image' or 'text'")
  return out


def nearest_mode_error(actions: np.ndarray, condition: np.ndarray,
                       targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """``(max |error| to the nearest mode [B], index of that mode [B])`` for sampled chunks."""
  cand = targets[condition]  # [B, modes, H, D]
  err = np.abs(actions[:, None] - cand).max(axis=(2, 3))
  return err.min(axis=1), err.argmin(axis=1)
