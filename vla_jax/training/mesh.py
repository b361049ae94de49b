"""Builds the one device mesh, with named axes ``data`` and ``fsdp``, from the train config."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import ml_collections
from jax.sharding import AxisType, Mesh

AXES = ("data", "fsdp")
# The batch is split over both axes: FSDP is data parallel too (each device sees its own rows and
# all-gathers the param shards it needs).
BATCH_AXES = AXES


def mesh_shape(mesh_config: ml_collections.ConfigDict | dict, num_devices: int) -> tuple[int, int]:
  """Resolves ``{data, fsdp}`` (one may be -1 = the remaining devices) to concrete sizes.

  Raises:
    ValueError: naming the config key when sizes are invalid or do not multiply to the device count.
  """
  sizes = {axis: int(mesh_config[axis]) for axis in AXES}
  free = [axis for axis, size in sizes.items() if size == -1]
  if len(free) > 1:
    raise ValueError(f"train.mesh: at most one axis may be -1, got {sizes}")
  for axis, size in sizes.items():
    if size == 0 or size < -1:
      raise ValueError(f"train.mesh.{axis}={size}: must be a positive size or -1")
  fixed = 1
  for size in sizes.values():
    fixed *= size if size != -1 else 1
  if free:
    if num_devices % fixed:
      raise ValueError(f"train.mesh={sizes}: {num_devices} devices are not divisible by {fixed}")
    sizes[free[0]] = num_devices // fixed
  if sizes["data"] * sizes["fsdp"] != num_devices:
    raise ValueError(f"train.mesh={sizes} needs {sizes['data'] * sizes['fsdp']} devices, "
                     f"but {num_devices} are available")
  return sizes["data"], sizes["fsdp"]


def make_mesh(mesh_config: ml_collections.ConfigDict | dict,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ``Mesh`` over all (global) devices with axes ``('data', 'fsdp')``.

  Axes are ``Auto`` (GSPMD propagation): models carry no sharding annotations, the train step's
  in/out shardings fix the layout and XLA inserts the collectives.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_config, len(devices))
  return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)
