"""Checkpoints with an orbax ``CheckpointManager``: full train state, params-only, assets.

Layout of ``<workdir>/checkpoints/<step>/``: ``state/`` (the whole :class:`TrainState`, for resume),
``params/`` (the params to act with: EMA params when EMA is on; for evaluation and fine-tuning
without optimizer state), ``assets/`` (see :mod:`vla_jax.training.assets`). Orbax writes each step
into a temporary directory and renames it when complete, so a crash never leaves a partial step.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from vla_jax.training import assets as assets_lib

# Config keys that may change when resuming a run (they do not change the computation).
RESUMABLE_KEYS = ("train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
                  "train.mesh.data", "train.mesh.fsdp")


class IncompatibleCheckpointError(ValueError):
  """The workdir holds a checkpoint that the current config/model cannot resume from."""


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """``{"a/b/c": shape}`` for every array-like leaf (arrays, ShapeDtypeStructs, orbax metadata)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
  return {"/".join(_key_name(k) for k in path): tuple(leaf.shape) for path, leaf in leaves
          if hasattr(leaf, "shape")}


def _flat_dict(d: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(d, dict):
    return {prefix: d}
  out = {}
  for k, v in d.items():
    out.update(_flat_dict(v, f"{prefix}.{k}" if prefix else str(k)))
  return out


def config_mismatches(saved: dict, current: dict) -> list[str]:
  """Human-readable differences between two config dicts, ignoring :data:`RESUMABLE_KEYS`."""
  a, b = _flat_dict(saved), _flat_dict(current)
  out = []
  for key in sorted(set(a) | set(b)):
    if key in RESUMABLE_KEYS:
      continue
    if key not in a:
      out.append(f"{key}: not in the checkpoint's config, now {b[key]!r}")
    elif key not in b:
      out.append(f"{key}: {a[key]!r} in the checkpoint's config, absent now")
    elif a[key] != b[key]:
      out.append(f"{key}: checkpoint {a[key]!r} != current {b[key]!r}")
  return out


def param_mismatches(saved: dict[str, tuple], current: dict[str, tuple]) -> list[str]:
  """Differences between two ``flat_shapes`` trees (missing/extra arrays, shape changes)."""
  out = [f"params/{k}: in the checkpoint only, shape {saved[k]}" for k in sorted(set(saved) -
                                                                                   set(current))]
  out += [f"params/{k}: in the model only, shape {current[k]}" for k in sorted(set(current) -
                                                                                 set(saved))]
  out += [f"params/{k}: checkpoint shape {saved[k]} != model shape {current[k]}"
          for k in sorted(set(saved) & set(current)) if saved[k] != current[k]]
  return out


def _manager(directory: str, keep: int | None = None, create: bool = False,
             use_async: bool = False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create,
                                         enable_async_checkpointing=use_async)
  return ocp.CheckpointManager(
      os.path.abspath(directory), options=options,
      item_handlers={"state": ocp.StandardCheckpointHandler(),
                     "params": ocp.StandardCheckpointHandler(),
                     "assets": assets_lib.AssetsHandler()})


class Checkpointer:
  """The checkpoints of one run, in ``directory`` (usually ``<workdir>/checkpoints``).

  ``use_async``: orbax copies the arrays to host memory and writes them in a background thread, so
  training goes on during the write; :meth:`wait` / :meth:`close` block until it is on disk. The
  state to save is always checked (finite loss) before ``save`` is called, so async writes never
  persist a NaN state.
  """

  def __init__(self, directory: str, keep: int, use_async: bool = False):
    self.directory = os.path.abspath(directory)
    self.use_async = use_async
    self.manager = _manager(self.directory, keep=keep, create=True, use_async=use_async)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, state: Any, assets: assets_lib.Assets) -> int:
    """Saves state, inference params and assets at ``state.step``; returns that step."""
    step = int(jax.device_get(state.step))
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        params=ocp.args.StandardSave(state.inference_params()),
        assets=assets_lib.AssetsSave(assets)), force=True)
    if not self.use_async:
      self.manager.wait_until_finished()
    return step

  def wait(self) -> None:
    """Blocks until every pending (async) save is committed."""
    self.manager.wait_until_finished()

  def check_compatible(self, step: int, abstract_state: Any, config: dict | None) -> None:
    """Raises :class:`IncompatibleCheckpointError` naming every mismatch (config and params)."""
    problems = []
    saved_assets = assets_lib.read_assets(os.path.join(self.directory, str(step), "assets"))
    if config is not None and saved_assets.config is not None:
      problems += config_mismatches(saved_assets.config, config)
    meta = self.manager.item_metadata(step)["state"]
    saved_params = (meta.tree if hasattr(meta, "tree") else meta)["params"]
    problems += param_mismatches(flat_shapes(saved_params), flat_shapes(abstract_state.params))
    if problems:
      raise IncompatibleCheckpointError(
          f"The checkpoint at step {step} in {self.directory} does not match the current run:\n  "
          + "\n  ".join(problems) + "\nUse a new workdir, or restore the original config.")

  def restore_state(self, step: int, abstract_state: Any) -> Any:
    """Restores the full train state, placed with the shardings of ``abstract_state``."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))
    return restored["state"]

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _resolve(directory: str, step: int | None) -> tuple[ocp.CheckpointManager, int]:
  if os.path.isdir(os.path.join(directory, "checkpoints")):
    directory = os.path.join(directory, "checkpoints")  # A workdir was given.
  manager = _manager(directory)
  step = manager.latest_step() if step is None else step
  if step is None or step not in manager.all_steps():
    raise FileNotFoundError(f"no checkpoint {'' if step is None else f'at step {step} '}in "
                            f"{directory} (steps there: {list(manager.all_steps())})")
  return manager, step


def latest_step(directory: str) -> int | None:
  """The newest complete checkpoint step in a workdir or checkpoints dir (None if there is none)."""
  if os.path.isdir(os.path.join(directory, "checkpoints")):
    directory = os.path.join(directory, "checkpoints")
  if not os.path.isdir(directory):
    return None
  manager = _manager(directory)
  step = manager.latest_step()
  manager.close()
  return step


def all_steps(directory: str) -> list[int]:
  """Every complete checkpoint step in a workdir or checkpoints dir, ascending ([] if none)."""
  if os.path.isdir(os.path.join(directory, "checkpoints")):
    directory = os.path.join(directory, "checkpoints")
  if not os.path.isdir(directory):
    return []
  manager = _manager(directory)
  steps = sorted(int(s) for s in manager.all_steps())
  manager.close()
  return steps


def load_params(directory: str, step: int | None = None, abstract_params: Any = None) -> Any:
  """Loads the params-only item (latest step by default) from a workdir or checkpoints dir.

  Without ``abstract_params`` the arrays come back as host numpy arrays; with a pytree of
  ``jax.ShapeDtypeStruct`` (with shardings) they are placed accordingly.
  """
  manager, step = _resolve(directory, step)
  if abstract_params is None:
    meta = manager.item_metadata(step)["params"]
    abstract_params = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), meta,
                                   is_leaf=lambda x: hasattr(x, "shape"))
  params = manager.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(abstract_params)))["params"]
  manager.close()
  return params


def load_assets(directory: str, step: int | None = None) -> assets_lib.RestoredAssets:
  """Reads the assets saved with a checkpoint (latest step by default)."""
  manager, step = _resolve(directory, step)
  path = os.path.join(manager.directory, str(step), "assets")
  manager.close()
  return assets_lib.read_assets(path)
