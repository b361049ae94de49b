"""Builds the one device mesh, with named axes ``data`` and ``fsdp``, from the train config."""

from __future__ import annotations

import os
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


def configure_cpu_devices(num_devices: int, batch_size: int | None = None) -> int:
  """Splits the host CPU into ``num_devices`` XLA devices, each with single-threaded matmuls.

  For small models on a few CPU cores, XLA's one CPU device can spend much of a step spreading
  tiny matmuls over threads; data parallelism over one device per core (the same train step, the
  batch split over the ``data`` axis) keeps each core busy with whole ops instead. Measured with
  ``benchmarks/cpu_devices.py`` on 2 cores: 1.12x-1.50x the steps/s of the vla_tiny flow step at
  batch 32, no clear gain at batch 64 (0.96x-1.27x across runs; measured with the 4-layer LM
  vla_tiny had before it went to 2 layers). Other backends are unaffected.

  Must run before JAX's first computation (it sets ``jax_num_cpu_devices`` and ``XLA_FLAGS``).
  A device count already forced through ``XLA_FLAGS`` (``--xla_force_host_platform_device_count``,
  as the sharding tests do) is left alone.

  Args:
    num_devices: 0 = leave XLA's default (one multi-threaded CPU device); -1 = one per core
      available to this process (at most the largest count that divides ``batch_size``, so the
      batch splits evenly); N > 0 = N devices.
    batch_size: the global batch [examples], only used with -1.

  Returns:
    The CPU device count requested (0 when left to XLA).

  Raises:
    ValueError: for a count < -1.
    RuntimeError: when JAX already initialized its backends with another CPU device count.
  """
  if num_devices < -1:
    raise ValueError(f"train.cpu_devices={num_devices}: must be 0 (XLA default), -1 (one per "
                     "core) or a positive device count")
  if num_devices == 0:
    return 0
  if num_devices == -1:
    num_devices = len(os.sched_getaffinity(0))
    while batch_size and batch_size % num_devices:
      num_devices -= 1
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" in flags:
    return 0
  try:
    jax.config.update("jax_num_cpu_devices", num_devices)
  except RuntimeError as e:
    have = len(jax.devices("cpu"))
    if have == num_devices:
      return num_devices
    raise RuntimeError(
        f"train.cpu_devices={num_devices}: JAX already runs with {have} CPU device(s); set the "
        "count before the first JAX computation (or set train.cpu_devices=0)") from e
  if "xla_cpu_multi_thread_eigen" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()
  return num_devices
