"""The data section of a training config (an ``ml_collections.ConfigDict``).

Training configs embed :func:`default_data_config` as ``config.data`` and override leaves, e.g.
``--config.data.datasets.tabletop_demos.path=/data/tabletop_demos/1.0.0`` or
``--config.data.horizon=8``. Each entry of ``datasets`` is one RLDS dataset of the mixture::

  datasets.<name>.path            TFDS directory (version dir or its parent)
  datasets.<name>.weight          sampling weight in the mixture (normalized over datasets)
  datasets.<name>.split           split for training and for the statistics ("train")
  datasets.<name>.eval_split      split for evaluation iterators ("validation")
  datasets.<name>.standardization registry name in vla_jax.data.standardize ("" = <name>)
"""

from __future__ import annotations

import ml_collections


def dataset_entry(path: str = "", weight: float = 1.0, split: str = "train",
                  eval_split: str = "validation", standardization: str = ""
                  ) -> ml_collections.ConfigDict:
  """One mixture entry (see the module docstring)."""
  return ml_collections.ConfigDict({
      "path": path, "weight": weight, "split": split, "eval_split": eval_split,
      "standardization": standardization})


def default_data_config() -> ml_collections.ConfigDict:
  """Defaults for the tiny training config (64x64 images, 1 history frame, 4-step chunks)."""
  return ml_collections.ConfigDict({
      "datasets": {"tabletop_demos": dataset_entry()},
      "cameras": ("base",),  # canonical camera names read from every dataset
      "image_size": 64,  # output side (pixels); stored images are resized when they differ
      "window": 1,  # observation history frames T
      "horizon": 4,  # action chunk length H
      "goal_relabeling": False,  # add goal/image/<cam> and goal/state (uniform future step)
      "norm_mode": "zscore",  # "zscore" | "quantile"
      "nonfinite": "error",  # "error" | "drop": NaN/inf in actions/states
      "stats_cache_dir": "",  # "" = <dataset version dir>/norm_stats
      "max_text_len": 16,  # text tokens L
      "episode_shuffle_buffer": 32,  # trajectories
      "shuffle_buffer": 5000,  # frames (examples)
      "num_parallel_calls": 2,  # tf.data map parallelism (the 2-core machines also train)
      "augment": {
          "enabled": True, "random_resized_crop": True, "crop_scale": (0.8, 1.0),
          "crop_ratio": (0.9, 1.1), "brightness": 0.1, "contrast": (0.9, 1.1),
          "saturation": (0.9, 1.1), "hue": 0.05,
      },
  })
