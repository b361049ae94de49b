"""Per-dataset normalization statistics: one pass over a split, cached as JSON by fingerprint.

The fingerprint hashes the dataset's ``dataset_info.json`` (split sizes, shard byte counts, version)
together with everything that changes the numbers (split, standardization keys, masks, how
non-finite episodes are handled), so a rebuilt dataset or a changed mapping never reuses stale
statistics. The cache lives in ``<dataset version dir>/norm_stats/`` unless a cache dir is given.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
from absl import logging

from vla_jax.data import normalization, rlds
from vla_jax.data import standardize as std_lib

NONFINITE_POLICIES = ("error", "drop")
_SCHEMA = 1  # Bump when the stats layout changes: old cache files then miss.


def _scan(path, spec, split, name, nonfinite):
  """Reads every episode's actions and states once; returns (actions, states, bad episodes)."""
  ds = rlds.read_trajectories(path, spec, cameras=(), split=split, dataset_name=name)
  ds = ds.map(lambda tr: {"actions": tr["actions"], "state": tr["state"],
                          "episode_index": tr["episode_index"]})
  actions, states, bad = [], [], []
  for tr in rlds.iterate_numpy(ds, f"dataset '{name}' ({path}, split '{split}')"):
    ok = np.isfinite(tr["actions"]).all() and np.isfinite(tr["state"]).all()
    if not ok:
      if nonfinite == "error":
        raise ValueError(f"dataset '{name}' split '{split}': NaN or inf in the actions/state of "
                         f"episode {int(tr['episode_index'])} (set nonfinite='drop' to skip such "
                         "episodes)")
      bad.append(int(tr["episode_index"]))
      continue
    actions.append(tr["actions"])
    states.append(tr["state"])
  return actions, states, bad


def _mask(mask, default, dim, what):
  mask = default if mask is None else mask
  if mask is None:
    return [True] * dim
  if len(mask) != dim:
    raise ValueError(f"{what} normalization mask has {len(mask)} entries but the data has {dim} "
                     "dimensions")
  return list(mask)


def dataset_statistics(path: str, spec: std_lib.DatasetSpec, *, split: str = "train",
                       name: str | None = None, cache_dir: str | None = None,
                       nonfinite: str = "error", action_mask=None, state_mask=None
                       ) -> dict[str, Any]:
  """Normalization statistics of ``split`` of the dataset at ``path`` (cached).

  Args:
    path: TFDS dataset (version) directory.
    spec: the standardization (which keys are actions/states; default masks).
    split: split to scan (statistics always come from the whole split, on every process).
    name: dataset name for messages and the cache file (default ``spec.name``).
    cache_dir: where to cache (default ``<version dir>/norm_stats``).
    nonfinite: "error" (fail naming the episode) or "drop" (skip episodes with NaN/inf; their
      indices are recorded in ``nonfinite_episodes`` and the count is logged).
    action_mask, state_mask: override the spec's masks (True = normalize).

  Returns:
    ``{"action": {...}, "state": {...}, "num_episodes", "num_transitions", "nonfinite_episodes",
    "dataset", "split", "fingerprint"}`` (see :mod:`vla_jax.data.normalization`).
  """
  if nonfinite not in NONFINITE_POLICIES:
    raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got '{nonfinite}'")
  name = name or spec.name
  version_dir = rlds.resolve_dataset_dir(path)
  with open(os.path.join(version_dir, "dataset_info.json")) as f:
    info_text = f.read()
  key = normalization.fingerprint(_SCHEMA, info_text, split, dataclasses.asdict(spec), nonfinite,
                                  action_mask, state_mask)
  cache_file = normalization.cache_path(cache_dir or os.path.join(version_dir, "norm_stats"),
                                        name, key)
  cached = normalization.load_cached(cache_file)
  if cached is not None:
    logging.info("normalization stats of '%s' loaded from %s", name, cache_file)
    return cached
  actions, states, bad = _scan(version_dir, spec, split, name, nonfinite)
  if not actions:
    raise ValueError(f"dataset '{name}' split '{split}': no episode with finite actions/states")
  if bad:
    logging.warning("dataset '%s' split '%s': dropped %d episodes with NaN/inf (indices %s)",
                    name, split, len(bad), bad[:20])
    print(f"dataset '{name}' split '{split}': dropped {len(bad)} episodes with NaN/inf")
  a_mask = _mask(action_mask, spec.action_norm_mask, actions[0].shape[1], f"'{name}' action")
  s_mask = _mask(state_mask, spec.state_norm_mask, states[0].shape[1], f"'{name}' state")
  stats = {
      "action": normalization.compute_stats(actions, a_mask, f"actions of '{name}'"),
      "state": normalization.compute_stats(states, s_mask, f"states of '{name}'"),
      "num_episodes": len(actions), "num_transitions": int(sum(len(a) for a in actions)),
      "nonfinite_episodes": bad, "dataset": name, "split": split, "fingerprint": key,
  }
  try:
    normalization.save_cached(cache_file, stats)
  except OSError as e:  # A read-only dataset dir must not stop training: say so and go on.
    logging.warning("could not cache normalization stats at %s: %s", cache_file, e)
  return stats
