"""Host-local numpy batches -> global ``jax.Array`` sharded over the mesh's data axes."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh

from vla_jax.training import sharding as sharding_lib


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """Rows this process must provide per step.

  Raises:
    ValueError: when ``global_batch_size`` does not split evenly over devices and processes.
  """
  num_devices = mesh.devices.size
  if global_batch_size % num_devices:
    raise ValueError(f"train.batch_size={global_batch_size} is not divisible by the "
                     f"{num_devices} devices of mesh {dict(mesh.shape)}")
  return global_batch_size // jax.process_count()


def to_global(batch: Mapping[str, np.ndarray], mesh: Mesh, global_batch_size: int) -> dict:
  """Assembles each process's rows into global arrays of leading size ``global_batch_size``.

  Args:
    batch: host-local arrays, each with leading axis ``global_batch_size / process_count``.
  Raises:
    ValueError: naming the key whose leading axis is not the expected local batch size.
  """
  local = local_batch_size(global_batch_size, mesh)
  sharding = sharding_lib.batch_sharding(mesh)
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    if value.ndim == 0 or value.shape[0] != local:
      raise ValueError(f"batch['{key}'] has shape {value.shape}; expected a leading axis of "
                       f"{local} (global batch {global_batch_size} / {jax.process_count()} "
                       "processes)")
    out[key] = jax.make_array_from_process_local_data(
        sharding, value, (global_batch_size,) + value.shape[1:])
  return out
