"""Host batches -> global ``jax.Array``s sharded over the mesh's data axes.

Each process builds its own host batch (its disjoint shard of the data, ``B_host`` examples) and
:func:`host_to_global` assembles them into arrays of global batch ``B_host * process_count``,
split along axis 0 over the mesh axes that carry data (``data`` and, when present, ``fsdp``:
FSDP shards the batch too).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DEFAULT_DATA_AXES = ("data", "fsdp")


def batch_sharding(mesh: Mesh, data_axes: Sequence[str] = DEFAULT_DATA_AXES) -> NamedSharding:
  """Sharding that splits axis 0 over the ``data_axes`` present in ``mesh``."""
  axes = tuple(a for a in data_axes if a in mesh.axis_names)
  if not axes:
    raise ValueError(f"mesh axes {mesh.axis_names} contain none of the data axes {data_axes}")
  return NamedSharding(mesh, PartitionSpec(axes))


def host_to_global(batch: Mapping[str, np.ndarray], mesh: Mesh,
                   data_axes: Sequence[str] = DEFAULT_DATA_AXES) -> dict[str, jax.Array]:
  """Makes global arrays from this process's host batch (every leaf has leading axis B_host).

  Raises:
    ValueError: a non-numeric leaf (e.g. strings: drop them first), or a host batch size that the
      process's share of the data-axis devices does not divide.
  """
  sharding = batch_sharding(mesh, data_axes)
  out = {}
  for key, x in batch.items():
    x = np.asarray(x)
    if x.dtype == object or x.dtype.kind in "SU":
      raise ValueError(f"batch key '{key}' holds strings ({x.dtype}); only numeric arrays can "
                       "become jax arrays")
    try:
      out[key] = jax.make_array_from_process_local_data(sharding, x)
    except (ValueError, TypeError) as e:
      raise ValueError(f"batch key '{key}' with host shape {x.shape} cannot be sharded over "
                       f"{sharding.spec} of mesh {dict(mesh.shape)}: {e}") from e
  return out
