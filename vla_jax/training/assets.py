"""Assets that travel with every checkpoint: config, normalization stats, tokenizers, example batch.

They make a checkpoint self-describing (a checkpoint alone can rebuild the policy and act). They are
saved as one orbax item by :class:`AssetsHandler`, so they are written inside orbax's temporary
step directory and become visible atomically with the arrays.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Protocol

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

CONFIG_FILE = "config.json"
NORM_STATS_FILE = "norm_stats.json"
EXAMPLE_BATCH_FILE = "example_batch.npz"
TOKENIZERS_DIR = "tokenizers"


class Savable(Protocol):
  """A tokenizer (text or action): anything with ``save(directory)``."""

  def save(self, directory: str) -> None:
    ...


@dataclasses.dataclass
class Assets:
  """What to save with each checkpoint (every field optional).

  Attributes:
    config: the full experiment ConfigDict (or plain dict); saved as JSON.
    norm_stats: JSON-able normalization statistics (``vla_jax.data.normalization`` format).
    tokenizers: name -> object with ``save(dir)``; saved under ``tokenizers/<name>/``.
    example_batch: host numpy batch (batch contract) used to rebuild the model with ``init``.
  """
  config: ml_collections.ConfigDict | dict | None = None
  norm_stats: dict | None = None
  tokenizers: dict[str, Savable] = dataclasses.field(default_factory=dict)
  example_batch: dict[str, np.ndarray] | None = None


@dataclasses.dataclass
class RestoredAssets:
  """Assets read back from a checkpoint.

  ``tokenizer_dirs`` maps each tokenizer name to its directory inside the checkpoint: load it with
  its own class, e.g. ``TextTokenizer.load(restored.tokenizer_dirs["text"])``.
  """
  config: dict | None
  norm_stats: dict | None
  tokenizer_dirs: dict[str, str]
  example_batch: dict[str, np.ndarray] | None


def config_to_dict(config: ml_collections.ConfigDict | dict | None) -> dict | None:
  """A JSON round-trippable dict of ``config`` (non-JSON leaves become their repr)."""
  if config is None:
    return None
  if isinstance(config, ml_collections.ConfigDict):
    config = config.to_dict()
  return json.loads(json.dumps(config, default=repr))


class AssetsHandler(ocp.CheckpointHandler):
  """Orbax handler writing :class:`Assets` as plain files (primary process only)."""

  def save(self, directory: epath.Path, args: AssetsSave) -> None:
    if jax.process_index() != 0:
      return
    assets = args.assets
    directory = epath.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if assets.config is not None:
      (directory / CONFIG_FILE).write_text(json.dumps(config_to_dict(assets.config), indent=1))
    if assets.norm_stats is not None:
      (directory / NORM_STATS_FILE).write_text(json.dumps(assets.norm_stats, indent=1))
    if assets.example_batch is not None:
      with (directory / EXAMPLE_BATCH_FILE).open("wb") as f:
        np.savez(f, **{k: np.asarray(v) for k, v in assets.example_batch.items()})
    for name, tokenizer in assets.tokenizers.items():
      path = directory / TOKENIZERS_DIR / name
      path.mkdir(parents=True, exist_ok=True)
      tokenizer.save(os.fspath(path))

  def restore(self, directory: epath.Path, args: AssetsRestore | None = None) -> RestoredAssets:
    del args
    return read_assets(directory)

  def metadata(self, directory: epath.Path) -> None:
    return None


@ocp.args.register_with_handler(AssetsHandler, for_save=True)
@dataclasses.dataclass
class AssetsSave(ocp.args.CheckpointArgs):
  assets: Assets


@ocp.args.register_with_handler(AssetsHandler, for_restore=True)
@dataclasses.dataclass
class AssetsRestore(ocp.args.CheckpointArgs):
  pass


def read_assets(directory: str | os.PathLike) -> RestoredAssets:
  """Reads the assets item directory ``<checkpoint>/<step>/assets``."""
  directory = epath.Path(directory)
  if not directory.exists():
    raise FileNotFoundError(f"no assets directory at {directory}")

  def maybe_json(name):
    path = directory / name
    return json.loads(path.read_text()) if path.exists() else None

  example_batch = None
  if (directory / EXAMPLE_BATCH_FILE).exists():
    with (directory / EXAMPLE_BATCH_FILE).open("rb") as f, np.load(f) as npz:
      example_batch = {k: npz[k] for k in npz.files}
  tok_root = directory / TOKENIZERS_DIR
  tokenizer_dirs = ({p.name: os.fspath(p) for p in sorted(tok_root.iterdir())}
                    if tok_root.exists() else {})
  return RestoredAssets(config=maybe_json(CONFIG_FILE), norm_stats=maybe_json(NORM_STATS_FILE),
                        tokenizer_dirs=tokenizer_dirs, example_batch=example_batch)
