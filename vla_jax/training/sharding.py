"""The parameter sharding rule and the batch sharding.

Rule (DESIGN.md): an array with fewer than ``min_size`` elements is replicated; a bigger one is
split over the ``fsdp`` axis along its largest dimension divisible by the fsdp size (replicated if
none is). The rule looks only at shapes, so it applies unchanged to params, AdamW moments and EMA
params, which therefore share one layout.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vla_jax.data import multihost
from vla_jax.training import mesh as mesh_lib


def partition_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int) -> PartitionSpec:
  """The PartitionSpec of one array of ``shape`` under the FSDP rule."""
  size = 1
  for dim in shape:
    size *= dim
  if fsdp_size <= 1 or size < min_size:
    return PartitionSpec()
  candidates = [(dim, axis) for axis, dim in enumerate(shape) if dim % fsdp_size == 0]
  if not candidates:
    return PartitionSpec()
  # Largest dimension wins; on ties the earlier axis (max keeps the first maximum).
  _, axis = max(candidates, key=lambda c: (c[0], -c[1]))
  spec = [None] * len(shape)
  spec[axis] = "fsdp"
  return PartitionSpec(*spec)


def tree_shardings(tree: Any, mesh: Mesh, min_size: int) -> Any:
  """``NamedSharding`` for every array leaf of ``tree`` (arrays or ShapeDtypeStructs)."""
  fsdp_size = mesh.shape["fsdp"]
  return jax.tree.map(
      lambda x: NamedSharding(mesh, partition_spec(tuple(x.shape), fsdp_size, min_size)), tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over all mesh axes; other axes whole (the data pipeline's rule)."""
  return multihost.batch_sharding(mesh, mesh_lib.BATCH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())
