"""Consistency checks of a job's config, run before anything is built or compiled.

The data pipeline, the policy and the simulator each have their own cameras, image size and
history window. Where they disagree, a job would either fail deep inside a compiled function or,
worse, run on something else than what was trained (evaluation with another window, cameras
silently dropped). :func:`check_config` compares them and names every difference at once.
"""

from __future__ import annotations

import ml_collections


class ConfigMismatchError(ValueError):
  """The data, policy and env sections of a config disagree (the message lists each key)."""


def _env_cameras(env_config) -> tuple[str, ...]:
  return tuple(c for c in str(env_config.cameras).replace("+", ",").split(",") if c)


def check_config(config: ml_collections.ConfigDict, where: str = "config") -> None:
  """Raises :class:`ConfigMismatchError` when ``config.data``, ``config.policy.backbone`` and
  ``config.collect.env`` disagree on cameras, image size or the history window.

  Cameras: the data's (``data.cameras``) must equal the backbone's (``policy.backbone.cameras``;
  a camera in the data that the backbone does not read is loaded for nothing and hides a
  mistake), and the env must render each of them. Image size: ``data.image_size`` (what training
  images are resized to), ``policy.backbone.vit.image_size`` and ``collect.env.image_size`` (what
  the evaluation env renders) must be equal. Window: ``data.window`` >= 1 (evaluation feeds the
  policy the same number of history frames).
  """
  data, backbone, env = config.data, config.policy.backbone, config.collect.env
  problems = []
  data_cams, policy_cams = tuple(data.cameras), tuple(backbone.cameras)
  if data_cams != policy_cams:
    problems.append(f"data.cameras {data_cams} != policy.backbone.cameras {policy_cams}")
  unrendered = [c for c in policy_cams if c not in _env_cameras(env)]
  if unrendered:
    problems.append(f"policy.backbone.cameras {policy_cams} include {unrendered}, which "
                    f"collect.env.cameras '{env.cameras}' does not render")
  sizes = {"data.image_size": int(data.image_size),
           "policy.backbone.vit.image_size": int(backbone.vit.image_size),
           "collect.env.image_size": int(env.image_size)}
  if len(set(sizes.values())) > 1:
    problems.append("image sizes differ: " + ", ".join(f"{k}={v}" for k, v in sizes.items()))
  if int(data.window) < 1:
    problems.append(f"data.window={data.window} must be >= 1")
  if problems:
    raise ConfigMismatchError(f"{where}: data, policy and env disagree: " + "; ".join(problems))
