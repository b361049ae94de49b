"""The input pipeline: RLDS datasets -> mixed, shuffled, augmented host batches (numpy dicts).

Order of operations (per dataset, then for the mixture)::

  read shard of episodes (images still encoded) -> standardize -> NaN/inf check or drop
  -> normalize actions/states (stats of the dataset's train split) -> [train: repeat, shuffle
  episodes] -> [goal relabeling] -> history window + action chunks -> split into steps
  == mixture: sample_from_datasets(weights) -> [train: shuffle steps] -> [skip start_step batches]
  -> decode + resize (+ crop/colour augmentation in training) -> batch -> text tokens (host)
  -> [FAST action tokens (host)]

Host batch (B = per-process batch size), the project's batch contract:
  ``image/<cam>`` uint8 [B, T, H, W, 3], ``obs_mask`` bool [B, T], ``state`` f32 [B, T, S],
  ``actions`` f32 [B, H, D], ``action_mask`` bool [B, H], ``text_tokens`` int32 [B, L],
  ``text_mask`` bool [B, L]; with goal relabeling also ``goal/image/<cam>`` uint8 [B, H, W, 3]
  and ``goal/state`` f32 [B, S]; with an action tokenizer (FAST, whose BPE runs in Python) also
  ``action_tokens`` int32 [B, n] (the tokenizer's ids of ``actions``, 0 after each sequence) and
  ``action_token_mask`` bool [B, n] (True on each sequence's tokens, a prefix of the row), ``n`` =
  ``max_action_tokens``. Token heads read them instead of tokenizing inside the jitted step.

Determinism and resuming: every random choice (episode/step shuffles, mixture sampling, goal
draws, augmentations) is seeded from ``seed``, and tf.data runs with deterministic order, so the
batch sequence is a function of (config, seed, process shard). ``start_step=k`` yields exactly
batches k, k+1, ... of that sequence: the skip happens before decoding/augmentation (which are
seeded by the example's absolute position), so resuming costs reading, not decoding, k batches.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from vla_jax.data import (
  frame_transforms,
  normalization,
  rlds,
  statistics,
  traj_transforms,
)
from vla_jax.data import standardize as std_lib
from vla_jax.tokenizers import fast

# The trainer owns the accelerators: the input pipeline must never grab a GPU.
tf.config.set_visible_devices([], "GPU")

_META_KEYS = ("episode_index", "step_index", "dataset_index")


def _datasets(data_config) -> list[tuple[str, Any]]:
  entries = list(data_config.datasets.items())
  if not entries:
    raise ValueError("data config lists no datasets (config.data.datasets is empty)")
  for name, entry in entries:
    if not entry.path:
      raise ValueError(f"dataset '{name}': config.data.datasets.{name}.path is empty")
    if entry.weight <= 0:
      raise ValueError(f"dataset '{name}': weight must be > 0, got {entry.weight}")
  return entries


def _augment_config(data_config) -> frame_transforms.AugmentConfig:
  a = data_config.augment
  return frame_transforms.AugmentConfig(
      enabled=a.enabled, random_resized_crop=a.random_resized_crop,
      crop_scale=tuple(a.crop_scale), crop_ratio=tuple(a.crop_ratio), brightness=a.brightness,
      contrast=tuple(a.contrast), saturation=tuple(a.saturation), hue=a.hue)


def _normalizer(stats: dict, mode: str, pad_to: int):
  """tf function ``x [..., d] -> normalized, zero-padded x [..., pad_to]``."""
  scale, offset, lo, hi = normalization.affine_params(stats, mode)
  pad = pad_to - scale.shape[0]

  def fn(x):
    y = tf.clip_by_value(x * scale + offset, lo, hi)
    if pad:
      y = tf.pad(y, [[0, 0]] * (y.shape.rank - 1) + [[0, pad]])
    return y

  return fn


def load_norm_stats(data_config) -> dict[str, dict]:
  """Statistics of every dataset of the mixture (train split), computed once and cached.

  Returns:
    dataset name -> stats dict (``{"action": ..., "state": ...}``, see
    :mod:`vla_jax.data.normalization`); save it with checkpoints.
  """
  out = {}
  for name, entry in _datasets(data_config):
    spec = std_lib.get_spec(entry.standardization or name)
    out[name] = statistics.dataset_statistics(
        entry.path, spec, split=entry.split, name=name,
        cache_dir=data_config.stats_cache_dir or None, nonfinite=data_config.nonfinite)
  return out


def _stored_image_shapes(data_config) -> dict[str, tuple[int, int] | None]:
  """Camera -> stored (h, w) when every dataset agrees (static decode), else None (dynamic)."""
  shapes: dict[str, set] = {cam: set() for cam in data_config.cameras}
  for name, entry in _datasets(data_config):
    spec = std_lib.get_spec(entry.standardization or name)
    steps = rlds.open_builder(entry.path).info.features["steps"].feature
    std_lib.validate_features(spec, steps, name, data_config.cameras)
    for cam in data_config.cameras:
      shapes[cam].add(tuple(std_lib.feature_at(steps, spec.image_keys[cam]).shape[:2]))
  return {cam: (s.pop() if len(s) == 1 else None) for cam, s in shapes.items()}


def _dataset_steps(name, entry, stats, data_config, *, train, seed, index, process_index,
                   process_count, action_dim, state_dim) -> tf.data.Dataset:
  """Per-step examples of one dataset (images still encoded)."""
  cfg = data_config
  spec = std_lib.get_spec(entry.standardization or name)
  split = entry.split if train else entry.eval_split
  ds = rlds.read_trajectories(entry.path, spec, cfg.cameras, split=split,
                              process_index=process_index, process_count=process_count,
                              dataset_name=name)
  if cfg.nonfinite == "drop":
    ds = ds.filter(traj_transforms.is_finite)
  else:
    ds = ds.map(lambda tr: traj_transforms.check_finite(tr, name))
  norm_a = _normalizer(stats["action"], cfg.norm_mode, action_dim)
  norm_s = _normalizer(stats["state"], cfg.norm_mode, state_dim)

  def normalize(tr):
    return {**tr, "actions": norm_a(tr["actions"]), "state": norm_s(tr["state"])}

  ds = ds.map(normalize)
  if train:
    ds = ds.repeat().shuffle(cfg.episode_shuffle_buffer, seed=seed + 7919 * index,
                             reshuffle_each_iteration=True)
  keys = [f"image/{c}" for c in cfg.cameras] + ["state"]
  if cfg.goal_relabeling:
    # Goal draws depend on (seed, dataset, position in the episode stream): reproducible.
    def relabel(i, tr):
      g_seed = tf.stack([tf.cast(seed + 104729 * index, tf.int64), i])
      return traj_transforms.relabel_goals(tr, g_seed, keys)

    ds = ds.enumerate().map(relabel)
  ds = ds.map(lambda tr: traj_transforms.window_and_chunk(
      tr, window=cfg.window, horizon=cfg.horizon, cameras=cfg.cameras),
              num_parallel_calls=cfg.num_parallel_calls, deterministic=True)
  ds = ds.flat_map(tf.data.Dataset.from_tensor_slices)
  return ds.map(lambda ex: {**ex, "dataset_index": tf.constant(index, tf.int32)})


def make_dataset(data_config, *, train: bool, batch_size: int, seed: int = 0,
                 process_index: int = 0, process_count: int = 1, start_step: int = 0,
                 norm_stats: dict | None = None, include_meta: bool = False
                 ) -> tuple[tf.data.Dataset, dict[str, dict]]:
  """The batched ``tf.data`` pipeline (before text tokenization) and the normalization stats.

  Args:
    data_config: see :mod:`vla_jax.data.config`.
    train: True: infinite, shuffled, augmented, mixture-sampled. False: one pass over each
      dataset's ``eval_split`` in order (datasets concatenated), no augmentation.
    batch_size: per-process batch size (the last partial batch is dropped: static shapes).
    seed: pipeline seed.
    process_index, process_count: this process reads shard ``process_index`` of
      ``process_count`` disjoint episode shards of every dataset.
    start_step: skip this many batches (resume; see the module docstring).
    norm_stats: precomputed stats (e.g. from a checkpoint); computed/cached when None.
    include_meta: keep ``episode_index``, ``step_index``, ``dataset_index`` (position in
      ``data_config.datasets``) and the ``language_instruction`` strings in the host batches
      (for tests and debugging).

  Returns:
    (dataset of batch dicts with ``language_instruction`` string [B] kept for tokenization,
    norm stats by dataset name).
  """
  cfg = data_config
  entries = _datasets(cfg)
  if norm_stats is None:
    norm_stats = load_norm_stats(cfg)
  missing = [n for n, _ in entries if n not in norm_stats]
  if missing:
    raise KeyError(f"norm_stats lack datasets {missing}; have {sorted(norm_stats)}")
  if cfg.norm_mode not in normalization.MODES:
    raise ValueError(f"config.data.norm_mode '{cfg.norm_mode}' not in {normalization.MODES}")
  stored = _stored_image_shapes(cfg)
  action_dim = max(len(norm_stats[n]["action"]["mean"]) for n, _ in entries)
  state_dim = max(len(norm_stats[n]["state"]["mean"]) for n, _ in entries)
  per_dataset = [
      _dataset_steps(name, entry, norm_stats[name], cfg, train=train, seed=seed, index=i,
                     process_index=process_index, process_count=process_count,
                     action_dim=action_dim, state_dim=state_dim)
      for i, (name, entry) in enumerate(entries)]
  if train:
    weights = np.array([e.weight for _, e in entries], np.float64)
    ds = (per_dataset[0] if len(per_dataset) == 1 else tf.data.Dataset.sample_from_datasets(
        per_dataset, weights=(weights / weights.sum()).tolist(), seed=seed))
    ds = ds.shuffle(cfg.shuffle_buffer, seed=seed + 1, reshuffle_each_iteration=True)
  else:
    ds = per_dataset[0]
    for other in per_dataset[1:]:
      ds = ds.concatenate(other)
  if start_step:
    ds = ds.skip(start_step * batch_size)

  image_keys = [f"image/{c}" for c in cfg.cameras]
  if cfg.goal_relabeling:
    image_keys += [f"goal/image/{c}" for c in cfg.cameras]
  shapes = {k: stored[k.rsplit("/", 1)[1]] for k in image_keys}
  aug = _augment_config(cfg) if train else None

  def frame(i, ex):
    seed_i = tf.stack([tf.constant(seed, tf.int64), i]) if train else None
    ex = frame_transforms.process_images(ex, seed=seed_i, image_keys=image_keys,
                                         stored_shapes=shapes, size=cfg.image_size, cfg=aug)
    if not include_meta:
      ex = {k: v for k, v in ex.items() if k not in _META_KEYS}
    return ex

  ds = ds.enumerate(start=start_step * batch_size).map(
      frame, num_parallel_calls=cfg.num_parallel_calls, deterministic=True)
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(2)
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = max(2, cfg.num_parallel_calls)
  return ds.with_options(options), norm_stats


def action_token_batch(action_tokenizer: fast.FastTokenizer, actions: np.ndarray,
                       max_len: int) -> dict[str, np.ndarray]:
  """FAST tokens of normalized action chunks, on host (the BPE runs in Python).

  Args:
    action_tokenizer: a fitted ``FastTokenizer`` (for ``actions``' H and D).
    actions: float32 [B, H, D] normalized action chunks (the batch's ``actions``).
    max_len: n, token slots per chunk (the AR head's ``max_tokens``, ``ar.max_fast_tokens``).

  Returns:
    ``{"action_tokens": int32 [B, n] (0 after each sequence), "action_token_mask": bool [B, n]}``.

  Raises:
    TypeError: not a FastTokenizer (binning tokenizes inside the step: pure jnp).
    ValueError: from ``FastTokenizer.encode``, naming the chunk that needs more than ``max_len``
      tokens or has a coefficient outside the fitted range.
  """
  if not isinstance(action_tokenizer, fast.FastTokenizer):
    raise TypeError("pipeline: action_tokenizer must be a fitted FastTokenizer (binning "
                    f"tokenizes inside the train step), got {type(action_tokenizer).__name__}")
  ids, lengths = action_tokenizer.encode(np.asarray(actions, np.float32), max_len=max_len)
  mask = np.arange(max_len)[None, :] < np.asarray(lengths)[:, None]
  return {"action_tokens": np.asarray(ids, np.int32), "action_token_mask": mask}


class HostIterator:
  """Iterates numpy host batches; tokenizes ``language_instruction`` with the text tokenizer.

  Adds ``text_tokens`` int32 [B, L] and ``text_mask`` bool [B, L]; drops the strings unless the
  pipeline was built with ``include_meta``. With an ``action_tokenizer`` also adds
  ``action_tokens`` / ``action_token_mask`` [B, n] (:func:`action_token_batch`). Read errors name
  the datasets.
  """

  def __init__(self, ds: tf.data.Dataset, text_tokenizer, max_text_len: int, what: str,
               keep_strings: bool = False, action_tokenizer=None, max_action_tokens: int = 0):
    self._it = rlds.iterate_numpy(ds, what)
    self._tok = text_tokenizer
    self._len = max_text_len
    self._keep = keep_strings
    self._cache: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
    if action_tokenizer is not None and max_action_tokens <= 0:
      raise ValueError(f"pipeline: an action_tokenizer needs max_action_tokens > 0 (token slots "
                       f"per chunk), got {max_action_tokens}")
    self._action_tok, self._action_len = action_tokenizer, max_action_tokens

  def _tokens(self, texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    new = [t for t in dict.fromkeys(texts.tolist()) if t not in self._cache]
    if new:  # Instructions repeat a lot: tokenize each distinct string once.
      ids, mask = self._tok.encode_batch([t.decode("utf-8") for t in new], self._len)
      for t, i, m in zip(new, np.asarray(ids), np.asarray(mask)):
        self._cache[t] = (i, m)
    rows = [self._cache[t] for t in texts.tolist()]
    return (np.stack([r[0] for r in rows]).astype(np.int32),
            np.stack([r[1] for r in rows]).astype(bool))

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._it)
    batch["text_tokens"], batch["text_mask"] = self._tokens(batch["language_instruction"])
    if self._action_tok is not None:
      batch.update(action_token_batch(self._action_tok, batch["actions"], self._action_len))
    if not self._keep:
      del batch["language_instruction"]
    return batch


def _describe(data_config) -> str:
  return ", ".join(f"'{n}' ({e.path})" for n, e in data_config.datasets.items())


def make_train_iterator(data_config, *, text_tokenizer, batch_size: int, seed: int = 0,
                        process_index: int = 0, process_count: int = 1, start_step: int = 0,
                        norm_stats: dict | None = None, include_meta: bool = False,
                        action_tokenizer=None, max_action_tokens: int = 0
                        ) -> tuple[HostIterator, dict[str, dict]]:
  """Infinite iterator of host numpy batches for training, and the norm stats by dataset.

  ``start_step=k`` resumes the data order after k consumed batches (same seed and config).
  ``action_tokenizer`` (a fitted ``FastTokenizer``) with ``max_action_tokens`` n adds the FAST
  tokens of every batch's ``actions`` (:func:`action_token_batch`); the AR head needs them.
  See :func:`make_dataset` for the other arguments and the module docstring for the batch layout.
  """
  ds, stats = make_dataset(data_config, train=True, batch_size=batch_size, seed=seed,
                           process_index=process_index, process_count=process_count,
                           start_step=start_step, norm_stats=norm_stats, include_meta=include_meta)
  it = HostIterator(ds, text_tokenizer, data_config.max_text_len, _describe(data_config),
                    keep_strings=include_meta, action_tokenizer=action_tokenizer,
                    max_action_tokens=max_action_tokens)
  return it, stats


def make_eval_iterator(data_config, *, text_tokenizer, batch_size: int, process_index: int = 0,
                       process_count: int = 1, norm_stats: dict | None = None,
                       include_meta: bool = False, action_tokenizer=None,
                       max_action_tokens: int = 0) -> tuple[HostIterator, dict[str, dict]]:
  """One ordered pass over the ``eval_split`` of every dataset (no augmentation); the action
  tokenizer as in :func:`make_train_iterator`."""
  ds, stats = make_dataset(data_config, train=False, batch_size=batch_size,
                           process_index=process_index, process_count=process_count,
                           norm_stats=norm_stats, include_meta=include_meta)
  it = HostIterator(ds, text_tokenizer, data_config.max_text_len, _describe(data_config),
                    keep_strings=include_meta, action_tokenizer=action_tokenizer,
                    max_action_tokens=max_action_tokens)
  return it, stats


def instruction_corpus(data_config) -> list[str]:
  """All distinct instruction strings of the mixture (to fit the text tokenizer), sorted.

  Uses the ``instructions`` list a dataset stores in its TFDS metadata (our demos do) and
  otherwise scans the language of the train split once.
  """
  out: set[str] = set()
  for name, entry in _datasets(data_config):
    builder = rlds.open_builder(entry.path)
    meta = builder.info.metadata or {}
    if "instructions" in meta:
      out.update(meta["instructions"])
      continue
    spec = std_lib.get_spec(entry.standardization or name)
    ds = rlds.read_trajectories(entry.path, spec, (), split=entry.split, dataset_name=name)
    ds = ds.map(lambda tr: tr["language_instruction"])
    for texts in rlds.iterate_numpy(ds, f"dataset '{name}' ({entry.path})"):
      out.update(t.decode("utf-8") for t in texts)
  return sorted(out)
