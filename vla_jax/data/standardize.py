"""Standardization registry: dataset-specific RLDS step keys -> the canonical trajectory.

Each RLDS dataset names its features its own way. A :class:`DatasetSpec` says, with ``/``-separated
paths into one RLDS *step*, where the canonical pieces are:

  canonical key            dtype / shape (per trajectory of T steps)
  ``image/<camera>``       encoded image bytes (tf.string) [T]  (decoded later, frame transforms)
  ``state``                float32 [T, S]   concatenation of ``state_keys`` (scalars become [T, 1])
  ``actions``              float32 [T, D]   concatenation of ``action_keys``
  ``language_instruction`` tf.string [T]

``action_norm_mask`` / ``state_norm_mask`` default the stats mask (False = keep that dimension raw).

Registered here: our MJX task-suite demos (``tabletop_demos``) and two Open X-Embodiment datasets,
with the feature structure published in the OXE dataset catalogue:

* ``bridge_dataset`` (BridgeData V2, RLDS release by RAIL): step ``observation/image_0..3``
  (256x256x3), ``observation/state`` (7: end-effector xyz, rpy, gripper), ``action`` (7: delta xyz,
  delta rpy, gripper open in [0, 1]), ``language_instruction`` at the step level.
* ``fractal20220817_data`` (RT-1): step ``observation/image`` (256x320x3),
  ``observation/base_pose_tool_reached`` (7: xyz + quaternion), ``observation/gripper_closed`` (1),
  ``observation/natural_language_instruction``; ``action`` is a dict: ``world_vector`` (3),
  ``rotation_delta`` (3), ``gripper_closedness_action`` (1), plus base motion and a termination
  one-hot that the canonical action leaves out.

Gripper dimensions keep their dataset's own convention (no re-mapping): a policy trained on a
mixture sees each dataset's raw gripper values, which is what their mask=False means.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from vla_jax.config_args import unknown_key_error


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Where the canonical keys live inside one RLDS step of a dataset."""
  name: str
  image_keys: Mapping[str, str]  # canonical camera name -> step path of an Image feature
  state_keys: tuple[str, ...]  # step paths, concatenated in this order along the last axis
  action_keys: tuple[str, ...]
  language_key: str
  action_norm_mask: tuple[bool, ...] | None = None  # None = normalize every dimension
  state_norm_mask: tuple[bool, ...] | None = None

  def required_paths(self) -> list[str]:
    return [*self.image_keys.values(), *self.state_keys, *self.action_keys, self.language_key]


_REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
  """Adds ``spec`` under ``spec.name`` (re-registering a name replaces it: handy in notebooks)."""
  _REGISTRY[spec.name] = spec
  return spec


def get_spec(name: str) -> DatasetSpec:
  """The registered spec called ``name``; a KeyError lists close matches otherwise."""
  if name not in _REGISTRY:
    raise unknown_key_error(name, list(_REGISTRY), where="dataset standardization")
  return _REGISTRY[name]


def registered_names() -> list[str]:
  return sorted(_REGISTRY)


register(DatasetSpec(
    name="tabletop_demos",
    image_keys={"base": "observation/image_base"},
    state_keys=("observation/state",),
    action_keys=("action",),
    language_key="language_instruction",
    # Action = end-effector velocity xyz + gripper command (-1 open ... +1 closed, see
    # vla_jax/envs/tabletop.py): the gripper stays raw. State = ee xyz + gripper opening.
    action_norm_mask=(True, True, True, False),
))

register(DatasetSpec(
    name="bridge_dataset",
    image_keys={"base": "observation/image_0"},
    state_keys=("observation/state",),
    action_keys=("action",),
    language_key="language_instruction",
    action_norm_mask=(True,) * 6 + (False,),  # gripper open/close in [0, 1]
    state_norm_mask=(True,) * 6 + (False,),
))

register(DatasetSpec(
    name="fractal20220817_data",
    image_keys={"base": "observation/image"},
    state_keys=("observation/base_pose_tool_reached", "observation/gripper_closed"),
    action_keys=("action/world_vector", "action/rotation_delta",
                 "action/gripper_closedness_action"),
    language_key="observation/natural_language_instruction",
    action_norm_mask=(True,) * 6 + (False,),
    state_norm_mask=(True,) * 7 + (False,),
))


def _lookup(tree: Mapping[str, Any], path: str):
  node = tree
  for part in path.split("/"):
    node = node[part]
  return node


def feature_at(step_features, path: str):
  """The TFDS feature at ``path`` in a step FeaturesDict, or None when a key is missing."""
  node = step_features
  for part in path.split("/"):
    keys = list(node.keys()) if hasattr(node, "keys") else []
    if part not in keys:
      return None
    node = node[part]
  return node


def _flat_keys(features, prefix="") -> list[str]:
  out = []
  for k in features:
    sub = features[k]
    path = f"{prefix}{k}"
    if hasattr(sub, "keys"):
      out.extend(_flat_keys(sub, path + "/"))
    else:
      out.append(path)
  return out


def validate_features(spec: DatasetSpec, step_features, dataset: str, cameras) -> None:
  """Fails with the missing key and the dataset name when ``step_features`` lacks a spec path.

  Args:
    spec: the standardization.
    step_features: ``builder.info.features["steps"].feature`` (a FeaturesDict).
    dataset: a readable dataset name/path for the message.
    cameras: canonical cameras the pipeline will read (each must be in ``spec.image_keys``).
  """
  for cam in cameras:
    if cam not in spec.image_keys:
      raise KeyError(f"dataset '{dataset}' (standardization '{spec.name}') has no camera "
                     f"'{cam}'; it provides {sorted(spec.image_keys)}")
  paths = [spec.image_keys[c] for c in cameras]
  paths += [*spec.state_keys, *spec.action_keys, spec.language_key]
  for path in paths:
    if feature_at(step_features, path) is None:
      raise KeyError(f"dataset '{dataset}': step feature '{path}' (needed by standardization "
                     f"'{spec.name}') is missing; the steps have {_flat_keys(step_features)}")


def standardize(steps: Mapping[str, Any], spec: DatasetSpec, cameras) -> dict[str, Any]:
  """Maps one batched trajectory of RLDS steps (tf tensors, leading axis T) to canonical keys.

  Returns ``{"image/<cam>": string [T], "state": f32 [T, S], "actions": f32 [T, D],
  "language_instruction": string [T]}``.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def concat(paths):
    parts = []
    for p in paths:
      x = tf.cast(_lookup(steps, p), tf.float32)
      if x.shape.rank == 1:
        x = x[:, None]
      elif x.shape.rank != 2:
        raise ValueError(f"standardization '{spec.name}': '{p}' has shape {x.shape}; expected "
                         "[T] or [T, d]")
      parts.append(x)
    return tf.concat(parts, axis=-1) if len(parts) > 1 else parts[0]

  out = {f"image/{cam}": _lookup(steps, spec.image_keys[cam]) for cam in cameras}
  out["state"] = concat(spec.state_keys)
  out["actions"] = concat(spec.action_keys)
  out["language_instruction"] = _lookup(steps, spec.language_key)
  return out
