"""The ``tabletop_demos`` TFDS dataset: scripted-expert demonstrations of the MJX task suite (RLDS).

:class:`Builder` is the TFDS builder; :func:`build_demo_dataset` builds it into a data dir (once;
a later call with the same collection config reuses it). Both live in the package so an installed
``vla_jax`` (``pip install .``) can build the demos; ``data/tabletop_demos/`` at the repository
root holds a thin subclass for the TFDS CLI (``tfds build`` from that directory).

Episodes are generated while writing (no raw intermediate files): ``batch_envs`` episodes are
simulated at once with :mod:`vla_jax.data.collect` and streamed into the tfrecord shards, so memory
stays bounded. Step and episode features: :func:`vla_jax.data.rlds_features.tabletop_features`.
The instruction strings, task names, collection config and per-task counts are stored in the
dataset's metadata (``builder.info.metadata``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import ClassVar

import tensorflow_datasets as tfds

from vla_jax.data import collect, rlds, rlds_features

DATASET_NAME = "tabletop_demos"


class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """RLDS episodes of the tabletop task suite (train + validation)."""

  name = DATASET_NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {
      "1.0.0": "Scripted-expert demos of reach, push, pick_place and lift."}

  def __init__(self, *, collect_config=None, env=None, expert_fn=None, rollout_fn=None,
               **kwargs):
    """``collect_config``: :func:`vla_jax.data.collect.default_collect_config`-like (default:
    that). ``env``/``expert_fn`` default to the MJX task suite and its scripted experts (tests
    pass small stand-ins with the same contract). ``rollout_fn``: another source of episodes
    with :func:`vla_jax.data.collect.make_rollout_fn`'s contract (``seeds int [N] -> traj``,
    the recorded action in ``traj["extras"]["label"]``), e.g. a trained policy's rollouts
    (``vla_jax.jobs.wm_job.policy_rollout_fn``); default the expert's."""
    self._collect = collect_config or collect.default_collect_config()
    if env is None:
      from vla_jax.envs import tabletop  # pylint: disable=g-import-not-at-top
      env = tabletop.make_env(self._collect.env)
    if expert_fn is None:
      from vla_jax.envs import experts  # pylint: disable=g-import-not-at-top
      expert_fn = experts.expert_action
    self._env, self._expert_fn, self._source_rollout_fn = env, expert_fn, rollout_fn
    self._stats: dict = {}
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    env = self._env
    features = rlds_features.tabletop_features(
        image_size=env.image_size[0], state_dim=env.state_dim, action_dim=env.action_dim,
        cameras=tuple(env.camera_names))
    metadata = tfds.core.MetadataDict(
        instructions=list(env.instructions), task_names=list(env.task_names),
        action_dim=env.action_dim, state_dim=env.state_dim, control_hz=env.control_hz,
        collect_config=self._collect.to_dict(), counts=self._stats)
    return self.dataset_info_from_configs(
        features=features, metadata=metadata, disable_shuffling=True,
        description="Scripted-expert demonstrations of the vla_jax MJX tabletop task suite.")

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: episodes are simulated.
    self._rollout_fn = self._source_rollout_fn or collect.make_rollout_fn(
        self._env, self._expert_fn, self._collect.noise_scale, self._collect.action_label,
        self._collect.get("task_weights"))
    return {split: self._generate_examples(split) for split in ("train", "validation")}

  def _generate_examples(self, split: str):
    """Yields ``(key, episode)``: ``batch_envs`` episodes simulated at a time, then streamed."""
    yield from collect.episodes(self._collect, split, self._env, self._rollout_fn, self._stats)


def build_demo_dataset(collect_config, data_dir: str, *, overwrite: bool = False, env=None,
                       expert_fn=None, rollout_fn=None) -> str:
  """Builds ``tabletop_demos`` into ``data_dir`` (if absent) and returns its version directory.

  Args:
    collect_config: :func:`vla_jax.data.collect.default_collect_config`-like ConfigDict.
    data_dir: TFDS data dir; the dataset lands in ``data_dir/tabletop_demos/<version>``.
    overwrite: rebuild even if a finished dataset is there.
    env, expert_fn: stand-ins for the MJX suite and its experts (default: the real ones).
    rollout_fn: another episode source than the expert (see :class:`Builder`); the collect
      config must then name it (the cache is matched on the config).

  Returns:
    The version directory, e.g. ``data_dir/tabletop_demos/1.0.0`` (pass it as
    ``config.data.datasets.tabletop_demos.path``).

  Raises:
    ValueError: a finished dataset in ``data_dir`` was collected with another config (names the
      differing keys).
  """
  def make():
    return Builder(data_dir=data_dir, collect_config=collect_config, env=env,
                   expert_fn=expert_fn, rollout_fn=rollout_fn)

  builder = make()
  path = os.fspath(builder.data_path)
  if builder.is_prepared() and not overwrite:
    _check_same_collect_config(path, collect_config)
    print(f"{DATASET_NAME}: already built at {path}")
    return path
  if overwrite and os.path.exists(path):
    shutil.rmtree(path)
    builder = make()
  t0 = time.time()
  builder.download_and_prepare(file_format="tfrecord")
  print(f"{DATASET_NAME}: built at {path} in {time.time() - t0:.1f} s; "
        f"episodes: { {s: v.num_examples for s, v in builder.info.splits.items()} }")
  return path


def _check_same_collect_config(path: str, collect_config) -> None:
  """Raises ValueError when a cached dataset was collected with another config (names the keys).

  A cache hit must mean "the same demonstrations": a changed env (horizon, image size, tasks...)
  or collection setting silently reusing old episodes would train on the wrong data.
  """
  meta = rlds.open_builder(path).info.metadata or {}
  saved = meta.get("collect_config")
  if saved is None:
    return  # Built by an older builder without the record; nothing to compare.
  want, have = _flatten(json.loads(json.dumps(collect_config.to_dict()))), _flatten(dict(saved))
  diffs = [f"{k}: cached {have.get(k)!r} != config {want.get(k)!r}"
           for k in sorted(set(want) | set(have)) if have.get(k) != want.get(k)]
  if diffs:
    raise ValueError(f"{DATASET_NAME} at {path} was collected with a different config ("
                     + "; ".join(diffs) + "). Use another data dir, or rebuild with overwrite.")


def _flatten(tree: dict, prefix: str = "") -> dict:
  """``{"a": {"b": 1}} -> {"a.b": 1}``."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out
