"""Reading RLDS datasets from local TFDS directories, one process shard at a time.

An RLDS dataset is a TFDS dataset of *episodes*; each episode has ``steps`` (a nested dataset of
per-step dicts) and optional ``episode_metadata``. :func:`read_trajectories` turns it into a
``tf.data.Dataset`` of *trajectories*: the steps of one episode stacked along a leading time axis,
standardized to the canonical keys (see :mod:`vla_jax.data.standardize`), with
``episode_index`` int64 [] (the episode's position in the full split, so messages can name it).

Images are left encoded (``tf.string``) here; decoding happens per frame, after shuffling, in
:mod:`vla_jax.data.frame_transforms`, so the shuffle buffer holds compact bytes.
"""

from __future__ import annotations

import os

import tensorflow as tf
import tensorflow_datasets as tfds

from vla_jax.data import standardize as std_lib

# Upper bound on steps per episode when stacking an episode's steps into one trajectory.
MAX_STEPS = 1 << 30


def resolve_dataset_dir(path: str) -> str:
  """The TFDS version directory for ``path``.

  ``path`` may be the version directory itself (holding ``dataset_info.json``) or a dataset
  directory holding version subdirectories (the highest version is used).

  Raises:
    FileNotFoundError: ``path`` does not exist or holds no TFDS dataset.
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(f"dataset directory '{path}' does not exist or is not a directory")
  if os.path.exists(os.path.join(path, "dataset_info.json")):
    return path
  versions = []
  for name in os.listdir(path):
    sub = os.path.join(path, name)
    if os.path.exists(os.path.join(sub, "dataset_info.json")):
      try:
        versions.append((tuple(int(p) for p in name.split(".")), sub))
      except ValueError:
        continue
  if not versions:
    raise FileNotFoundError(f"'{path}' holds no TFDS dataset: no dataset_info.json in it nor in a "
                            "version subdirectory (e.g. 1.0.0/)")
  return max(versions)[1]


def open_builder(path: str) -> tfds.core.DatasetBuilder:
  """A TFDS builder for the dataset in ``path``, with a clear error when it cannot be read."""
  version_dir = resolve_dataset_dir(path)
  try:
    return tfds.builder_from_directory(version_dir)
  except Exception as e:  # TFDS raises several types for broken metadata; name the directory.
    raise ValueError(f"cannot read the TFDS dataset in '{version_dir}': {type(e).__name__}: {e}"
                     ) from e


def _image_decoders(features):
  """A decoders tree that skips decoding of every Image feature (nested dicts allowed)."""
  out = {}
  for k in features:
    f = features[k]
    if isinstance(f, tfds.features.Image):
      out[k] = tfds.decode.SkipDecoding()
    elif isinstance(f, tfds.features.FeaturesDict):
      sub = _image_decoders(f)
      if sub:
        out[k] = sub
  return out


def split_for_process(builder, split: str, process_index: int, process_count: int,
                      dataset: str) -> tuple[str, int]:
  """This process's slice of ``split`` and the index of its first episode in the full split.

  Episodes are divided into ``process_count`` contiguous, disjoint ranges whose union is the split
  (sizes differ by at most one).
  """
  if split not in builder.info.splits:
    raise KeyError(f"dataset '{dataset}' has no split '{split}'; it has "
                   f"{sorted(builder.info.splits.keys())}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  n = builder.info.splits[split].num_examples
  if n < process_count:
    raise ValueError(f"dataset '{dataset}' split '{split}' has {n} episodes, fewer than the "
                     f"{process_count} processes that must each read a disjoint shard")
  lo = n * process_index // process_count
  hi = n * (process_index + 1) // process_count
  return f"{split}[{lo}:{hi}]", lo


def read_trajectories(path: str, spec: std_lib.DatasetSpec, cameras, *, split: str = "train",
                      process_index: int = 0, process_count: int = 1,
                      dataset_name: str | None = None) -> tf.data.Dataset:
  """Standardized trajectories of this process's shard of ``split``, in file order.

  Returns:
    A dataset of dicts: ``image/<cam>`` string [T], ``state`` f32 [T, S], ``actions`` f32 [T, D],
    ``language_instruction`` string [T], ``episode_index`` int64 [].

  Raises:
    FileNotFoundError / ValueError: unreadable directory. KeyError: a missing split or feature
    (the message names the key and the dataset).
  """
  name = dataset_name or spec.name
  builder = open_builder(path)
  if "steps" not in builder.info.features:
    raise KeyError(f"dataset '{name}' at '{path}' is not RLDS: no 'steps' feature (has "
                   f"{list(builder.info.features.keys())})")
  step_features = builder.info.features["steps"].feature
  std_lib.validate_features(spec, step_features, name, cameras)
  shard, first = split_for_process(builder, split, process_index, process_count, name)
  decoders = {"steps": _image_decoders(step_features)}
  ds = builder.as_dataset(split=shard, shuffle_files=False, decoders=decoders,
                          read_config=tfds.ReadConfig(interleave_cycle_length=1))

  def to_traj(index, episode):
    steps = episode["steps"].batch(MAX_STEPS).get_single_element()
    traj = std_lib.standardize(steps, spec, cameras)
    traj["episode_index"] = index + first
    return traj

  return ds.enumerate().map(to_traj, num_parallel_calls=1, deterministic=True)


class iterate_numpy:
  """``ds.as_numpy_iterator()`` that turns TF read errors (corrupt records) into a clear error.

  A class rather than a generator so that no error handler runs at interpreter shutdown.
  """

  def __init__(self, ds: tf.data.Dataset, what: str):
    self._it = ds.as_numpy_iterator()
    self._what = what

  def __iter__(self):
    return self

  def __next__(self):
    try:
      return next(self._it)
    except tf.errors.OpError as e:
      first = e.message.splitlines()[0] if e.message else str(e)
      raise RuntimeError(f"reading {self._what} failed (corrupt or unreadable record?): "
                         f"{type(e).__name__}: {first}") from e
