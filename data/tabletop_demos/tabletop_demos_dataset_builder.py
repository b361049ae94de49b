"""TFDS builder of ``tabletop_demos``: scripted-expert demonstrations of the MJX task suite (RLDS).

Build it with the project's experiment (recommended; config + progress + timing)::

  python experiments/collect_demos.py --config=configs/collect_demos.py --data_dir=/tmp/tfds

or with the TFDS CLI from this directory (default collection settings)::

  tfds build --data_dir=/tmp/tfds --file_format=tfrecord

Episodes are generated while writing (no raw intermediate files): ``batch_envs`` episodes are
simulated at once with ``vla_jax.data.collect`` and streamed into the tfrecord shards, so memory
stays bounded. Step and episode features: :func:`vla_jax.data.rlds_features.tabletop_features`.
The instruction strings, task names, collection config and per-task counts are stored in the
dataset's metadata (``builder.info.metadata``).
"""

from __future__ import annotations

from typing import ClassVar

import tensorflow_datasets as tfds
from etils import epath

from vla_jax.data import collect, rlds_features


class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """RLDS episodes of the tabletop task suite (train + validation)."""

  name = collect.DATASET_NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Scripted-expert demos of reach, push, pick_place and lift."}
  # TFDS infers this from the module's package; this file is loaded by path (data/ is not a
  # Python package), so say where the builder's metadata files would live.
  pkg_dir_path = epath.Path(__file__).parent

  def __init__(self, *, collect_config=None, env=None, expert_fn=None, **kwargs):
    """``env``/``expert_fn`` default to the MJX task suite and its scripted experts (tests pass
    small stand-ins with the same contract)."""
    self._collect = collect_config or collect.default_collect_config()
    if env is None:
      from vla_jax.envs import tabletop  # pylint: disable=g-import-not-at-top
      env = tabletop.make_env(self._collect.env)
    if expert_fn is None:
      from vla_jax.envs import experts  # pylint: disable=g-import-not-at-top
      expert_fn = experts.expert_action
    self._env, self._expert_fn = env, expert_fn
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
    self._rollout_fn = collect.make_rollout_fn(self._env, self._expert_fn,
                                               self._collect.noise_scale,
                                               self._collect.action_label,
                                               self._collect.get("task_weights"))
    return {split: self._generate_examples(split) for split in ("train", "validation")}

  def _generate_examples(self, split: str):
    """Yields ``(key, episode)``: ``batch_envs`` episodes simulated at a time, then streamed."""
    yield from collect.episodes(self._collect, split, self._env, self._rollout_fn, self._stats)
