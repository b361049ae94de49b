"""TFDS feature specs (RLDS episode/steps structure) of the datasets this project writes or reads.

``tabletop_features`` is what ``data/tabletop_demos`` writes. ``bridge_features`` and
``fractal_features`` reproduce the published step structure of the Open X-Embodiment datasets
``bridge_dataset`` and ``fractal20220817_data`` (feature names, dtypes and per-step shapes as listed
in the OXE dataset catalogue; image sizes are parameters so tests can write tiny copies).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

_F = tfds.features


def _rlds_flags() -> dict:
  """The RLDS per-step bookkeeping features shared by all datasets."""
  return {
      "reward": _F.Scalar(dtype=np.float32),
      "discount": _F.Scalar(dtype=np.float32),
      "is_first": _F.Scalar(dtype=np.bool_),
      "is_last": _F.Scalar(dtype=np.bool_),
      "is_terminal": _F.Scalar(dtype=np.bool_),
  }


def tabletop_features(*, image_size: int, state_dim: int, action_dim: int,
                      cameras=("base",)) -> _F.FeaturesDict:
  """Our MJX task-suite demos: one episode per scripted-expert rollout.

  Per step: ``observation/image_<camera>`` uint8 [image_size, image_size, 3] (PNG), ``observation/
  state`` float32 [state_dim], ``action`` float32 [action_dim] in [-1, 1], ``language_instruction``,
  RLDS flags. Per episode: ``episode_metadata`` {``task`` (name), ``task_id``, ``instruction_id``,
  ``seed`` (the episode's reset seed), ``success``, ``episode_id``}.
  """
  obs = {f"image_{cam}": _F.Image(shape=(image_size, image_size, 3), dtype=np.uint8,
                                  encoding_format="png") for cam in cameras}
  obs["state"] = _F.Tensor(shape=(state_dim,), dtype=np.float32)
  steps = {
      "observation": _F.FeaturesDict(obs),
      "action": _F.Tensor(shape=(action_dim,), dtype=np.float32),
      "language_instruction": _F.Text(),
      **_rlds_flags(),
  }
  return _F.FeaturesDict({
      "steps": _F.Dataset(steps),
      "episode_metadata": _F.FeaturesDict({
          "task": _F.Text(),
          "task_id": _F.Scalar(dtype=np.int32),
          "instruction_id": _F.Scalar(dtype=np.int32),
          "seed": _F.Scalar(dtype=np.int64),
          "success": _F.Scalar(dtype=np.bool_),
          "episode_id": _F.Scalar(dtype=np.int64),
      }),
  })


def bridge_features(image_size=(256, 256)) -> _F.FeaturesDict:
  """``bridge_dataset`` (BridgeData V2 in RLDS): four cameras, 7-D state and action."""
  obs = {f"image_{i}": _F.Image(shape=(*image_size, 3), dtype=np.uint8, encoding_format="jpeg")
         for i in range(4)}
  obs["state"] = _F.Tensor(shape=(7,), dtype=np.float32)
  return _F.FeaturesDict({
      "steps": _F.Dataset({
          "observation": _F.FeaturesDict(obs),
          "action": _F.Tensor(shape=(7,), dtype=np.float32),
          "language_instruction": _F.Text(),
          "language_embedding": _F.Tensor(shape=(512,), dtype=np.float32),
          **_rlds_flags(),
      }),
      "episode_metadata": _F.FeaturesDict({
          "file_path": _F.Text(),
          "episode_id": _F.Scalar(dtype=np.int32),
          "has_image_0": _F.Scalar(dtype=np.bool_),
          "has_image_1": _F.Scalar(dtype=np.bool_),
          "has_image_2": _F.Scalar(dtype=np.bool_),
          "has_image_3": _F.Scalar(dtype=np.bool_),
          "has_language": _F.Scalar(dtype=np.bool_),
      }),
  })


def fractal_features(image_size=(256, 320)) -> _F.FeaturesDict:
  """``fractal20220817_data`` (RT-1): dict-valued action, many observation fields, no discount."""
  t = lambda *shape, dtype=np.float32: _F.Tensor(shape=shape, dtype=dtype)
  flags = _rlds_flags()
  del flags["discount"]  # fractal's steps have no discount field.
  return _F.FeaturesDict({
      "steps": _F.Dataset({
          "action": _F.FeaturesDict({
              "base_displacement_vector": t(2),
              "base_displacement_vertical_rotation": t(1),
              "gripper_closedness_action": t(1),
              "rotation_delta": t(3),
              "terminate_episode": t(3, dtype=np.int32),
              "world_vector": t(3),
          }),
          "observation": _F.FeaturesDict({
              "base_pose_tool_reached": t(7),
              "gripper_closed": t(1),
              "gripper_closedness_commanded": t(1),
              "height_to_bottom": t(1),
              "image": _F.Image(shape=(*image_size, 3), dtype=np.uint8, encoding_format="jpeg"),
              "natural_language_embedding": t(512),
              "natural_language_instruction": _F.Text(),
              "orientation_box": t(2, 3),
              "orientation_start": t(4),
              "robot_orientation_positions_box": t(3, 3),
              "rotation_delta_to_go": t(3),
              "src_rotation": t(4),
              "vector_to_go": t(3),
              "workspace_bounds": t(3, 3),
          }),
          **flags,
      }),
  })


def rlds_flags(length: int) -> dict[str, np.ndarray]:
  """The RLDS bookkeeping arrays of a ``length``-step episode that ends in a terminal state."""
  is_first = np.zeros(length, bool)
  is_first[0] = True
  is_last = np.zeros(length, bool)
  is_last[-1] = True
  return {"is_first": is_first, "is_last": is_last, "is_terminal": is_last.copy(),
          "discount": np.ones(length, np.float32)}
