"""Small synthetic RLDS datasets with the real feature structures (tests, benchmarks, notebooks).

Episodes are deterministic functions of a seed: images are smooth colour gradients that change
with the step (so resizing and cropping act on real content), actions/states are random walks.
Tests compare what the reader returns for ``episode_index`` i with :func:`make_episode` for i.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

from vla_jax.data import rlds_features

KINDS = ("tabletop_demos", "bridge_dataset", "fractal20220817_data")


def _images(rng: np.random.Generator, length: int, size: tuple[int, int]) -> np.ndarray:
  """uint8 [length, H, W, 3]: a per-episode colour gradient that drifts with the step."""
  h, w = size
  base = rng.uniform(0, 255, size=3)
  yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
  t = np.arange(length)[:, None, None, None]
  img = base + 60 * xx[None, ..., None] + 60 * yy[None, ..., None] + 5 * t
  return np.clip(img, 0, 255).astype(np.uint8)


def make_episode(kind: str, index: int, length: int, *, seed: int = 0, image_size=None,
                 instructions: Sequence[str] = ("pick up the red cube", "open the drawer")):
  """One synthetic episode of dataset ``kind`` as a TFDS-encodable dict.

  Args:
    kind: one of :data:`KINDS`.
    index: episode number (selects the random stream and the instruction).
    length: number of steps.
    seed: dataset seed.
    image_size: (H, W); defaults to 8x8 (tiny on purpose).
    instructions: instruction strings, cycled over episodes.
  """
  rng = np.random.default_rng([seed, index])
  size = tuple(image_size or (8, 8))
  text = instructions[index % len(instructions)]
  flags = rlds_features.rlds_flags(length)
  reward = np.zeros(length, np.float32)
  reward[-1] = 1.0
  walk = lambda d: np.cumsum(rng.normal(size=(length, d)), 0).astype(np.float32)
  if kind == "tabletop_demos":
    action = np.clip(rng.normal(size=(length, 4)), -1, 1).astype(np.float32)
    steps = {"observation": {"image_base": _images(rng, length, size), "state": walk(6)},
             "action": action, "language_instruction": [text] * length, "reward": reward, **flags}
    meta = {"task": f"task{index % 2}", "task_id": index % 2, "instruction_id": index % 2,
            "seed": index, "success": True, "episode_id": index}
    return {"steps": steps, "episode_metadata": meta}
  if kind == "bridge_dataset":
    obs = {f"image_{i}": _images(rng, length, size) for i in range(4)}
    obs["state"] = walk(7)
    steps = {"observation": obs, "action": walk(7), "language_instruction": [text] * length,
             "language_embedding": np.zeros((length, 512), np.float32), "reward": reward, **flags}
    meta = {"file_path": f"/bridge/traj{index}", "episode_id": index, "has_language": True,
            **{f"has_image_{i}": i == 0 for i in range(4)}}
    return {"steps": steps, "episode_metadata": meta}
  if kind == "fractal20220817_data":
    f = lambda *shape: rng.normal(size=(length, *shape)).astype(np.float32)
    action = {"base_displacement_vector": f(2), "base_displacement_vertical_rotation": f(1),
              "gripper_closedness_action": np.sign(f(1)), "rotation_delta": f(3),
              "terminate_episode": np.zeros((length, 3), np.int32), "world_vector": f(3)}
    obs = {"base_pose_tool_reached": walk(7), "gripper_closed": (f(1) > 0).astype(np.float32),
           "gripper_closedness_commanded": f(1), "height_to_bottom": f(1),
           "image": _images(rng, length, size), "natural_language_embedding": f(512) * 0,
           "natural_language_instruction": [text] * length, "orientation_box": f(2, 3),
           "orientation_start": f(4), "robot_orientation_positions_box": f(3, 3),
           "rotation_delta_to_go": f(3), "src_rotation": f(4), "vector_to_go": f(3),
           "workspace_bounds": f(3, 3)}
    del flags["discount"]
    return {"steps": {"action": action, "observation": obs, "reward": reward, **flags}}
  raise ValueError(f"unknown synthetic dataset kind '{kind}'; expected one of {KINDS}")


def features_for(kind: str, image_size=None):
  size = tuple(image_size or (8, 8))
  if kind == "tabletop_demos":
    return rlds_features.tabletop_features(image_size=size[0], state_dim=6, action_dim=4)
  if kind == "bridge_dataset":
    return rlds_features.bridge_features(size)
  if kind == "fractal20220817_data":
    return rlds_features.fractal_features(size)
  raise ValueError(f"unknown synthetic dataset kind '{kind}'; expected one of {KINDS}")


def write_dataset(data_dir: str, kind: str, lengths: dict[str, Sequence[int]], *, seed: int = 0,
                  image_size=None, name: str | None = None, edit=None) -> str:
  """Writes a synthetic RLDS dataset and returns its version directory.

  Args:
    data_dir: TFDS data dir (the dataset lands in ``data_dir/<name>/1.0.0``).
    kind: one of :data:`KINDS` (feature structure).
    lengths: split name -> episode lengths; episode ``i`` of a split uses index ``offset + i``
      where ``offset`` counts the episodes of the splits before it (so splits differ).
    seed: dataset seed.
    image_size: (H, W) of the stored images.
    name: dataset name (default ``kind``).
    edit: optional ``edit(index, episode) -> episode`` applied before writing (e.g. to plant a
      NaN for error tests).
  """
  name = name or kind
  edit = edit or (lambda i, ep: ep)
  split_data, offset = {}, 0
  for split, lens in lengths.items():
    split_data[split] = [
        (i, edit(offset + i, make_episode(kind, offset + i, n, seed=seed, image_size=image_size)))
        for i, n in enumerate(lens)]
    offset += len(lens)
  builder = tfds.dataset_builders.store_as_tfds_dataset(
      name=name, version="1.0.0", features=features_for(kind, image_size),
      split_datasets=split_data, data_dir=data_dir, file_format="tfrecord",
      disable_shuffling=True)
  return os.fspath(builder.data_path)
