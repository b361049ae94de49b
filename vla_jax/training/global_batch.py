"""Host-local numpy batches -> global ``jax.Array`` sharded over the mesh's data axes.

The conversion itself is the data pipeline's :func:`vla_jax.data.multihost.host_to_global`
(``jax.make_array_from_process_local_data``); this module adds the train loop's checks against the
configured global batch size.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh

from vla_jax.data import multihost
from vla_jax.training import mesh as mesh_lib


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
  for key, value in batch.items():
    shape = np.shape(value)
    if not shape or shape[0] != local:
      raise ValueError(f"batch['{key}'] has shape {shape}; expected a leading axis of "
                       f"{local} (global batch {global_batch_size} / {jax.process_count()} "
                       "processes)")
  return multihost.host_to_global(batch, mesh, mesh_lib.BATCH_AXES)
