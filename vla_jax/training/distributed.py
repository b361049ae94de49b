"""Multi-host start-up and the few cross-process helpers a job needs.

Every process of a run calls :func:`initialize` before any JAX computation. Its settings come
from :func:`resolve_settings`: explicit values (the entry point's flags) first, else the
environment:

- ``JAX_COORDINATOR_ADDRESS``: ``host:port`` of process 0 (``jax.distributed`` reads it itself).
- ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``: this project's names for the two values that
  ``jax.distributed.initialize`` takes only as arguments or from a cluster manager; set them for a
  plain launch (one shell per process, or a test on localhost).
- Under a cluster manager that ``jax.distributed`` detects (Slurm, Open MPI, Kubernetes, Cloud
  TPU), ask for a multi-process run (``auto=True``, the ``--distributed`` flag) and leave the rest
  unset: JAX fills in what is missing. ``JAX_LOCAL_DEVICE_IDS`` (read by JAX) picks each
  process's GPUs when several processes share a host.

On CPU, cross-process collectives need an implementation: :func:`initialize` selects gloo
(bundled with jaxlib); GPU and TPU ignore that setting.

Waiting: the first cross-process collective on CPU sets up gloo's context, which fails when a
peer has not arrived within 30 s (seen with jaxlib 0.10.2: ``Gloo context initialization failed:
... GetKeyValue() timed out ... 30s``), so a device collective
(``multihost_utils.sync_global_devices``) cannot wait for another process's long work. A process
that waits for process 0 to collect demonstrations waits at :func:`wait_for_all`, a barrier of
the coordination service with its own timeout.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
_MAX_BROADCAST_BYTES = 4096


@dataclasses.dataclass(frozen=True)
class Settings:
  """What :func:`initialize` passes to ``jax.distributed.initialize`` (None = JAX detects it)."""
  coordinator_address: str | None
  num_processes: int | None
  process_id: int | None
  source: str  # "flags", "environment" or "cluster" (for the start-up line)


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
  text = environ.get(name, "").strip()
  if not text:
    return None
  try:
    return int(text)
  except ValueError:
    raise ValueError(f"environment variable {name}={text!r} is not an integer") from None


def _check(coordinator_address: str | None, num_processes: int | None, process_id: int | None,
           names: tuple[str, str, str]) -> None:
  """Raises ValueError naming the setting (flag or variable in ``names``) that is malformed."""
  if coordinator_address is not None:
    host, sep, port = coordinator_address.rpartition(":")
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
      raise ValueError(f"{names[0]}={coordinator_address!r}: expected host:port of process 0, "
                       "e.g. localhost:12345")
  if num_processes is not None and num_processes < 1:
    raise ValueError(f"{names[1]}={num_processes}: must be >= 1")
  if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
    raise ValueError(f"{names[2]}={process_id}: must be in [0, {names[1]}={num_processes})")


def resolve_settings(*, coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, auto: bool = False,
                     environ: Mapping[str, str] | None = None,
                     flag_names: Sequence[str] = ("--coordinator_address", "--num_processes",
                                                  "--process_id")) -> Settings | None:
  """The multi-process settings asked for, or None for a plain single-process run.

  Args:
    coordinator_address, num_processes, process_id: explicit values (the entry point's flags);
      give all three or none.
    auto: a multi-process run was asked for with nothing else given: JAX detects the settings
      from the cluster manager (Slurm, Open MPI, Kubernetes, Cloud TPU).
    environ: the environment (default ``os.environ``); read when no explicit value is given.
    flag_names: how the three explicit values are called in error messages.

  Raises:
    ValueError: naming each flag or variable that is missing (partial settings), malformed, or
      set both as a flag and in the environment with different values.
  """
  environ = os.environ if environ is None else environ
  env = {ENV_COORDINATOR: environ.get(ENV_COORDINATOR, "").strip() or None,
         ENV_NUM_PROCESSES: _env_int(environ, ENV_NUM_PROCESSES),
         ENV_PROCESS_ID: _env_int(environ, ENV_PROCESS_ID)}
  explicit = dict(zip(flag_names, (coordinator_address, num_processes, process_id)))
  if any(v is not None for v in explicit.values()):
    missing = [name for name, value in explicit.items() if value is None]
    if missing:
      raise ValueError(f"multi-process settings are partial: {', '.join(missing)} missing "
                       f"(give {', '.join(flag_names)} together)")
    for (flag, value), (var, env_value) in zip(explicit.items(), env.items()):
      if env_value is not None and env_value != value:
        raise ValueError(f"{flag}={value} disagrees with the environment's {var}={env_value}; "
                         f"unset {var} or make them equal")
    _check(coordinator_address, num_processes, process_id, tuple(flag_names))
    return Settings(coordinator_address, num_processes, process_id, "flags")
  counts = {k: env[k] for k in (ENV_NUM_PROCESSES, ENV_PROCESS_ID)}
  given = [k for k, v in counts.items() if v is not None]
  if len(given) == 1:
    other = ENV_PROCESS_ID if given[0] == ENV_NUM_PROCESSES else ENV_NUM_PROCESSES
    raise ValueError(f"multi-process settings are partial: {given[0]} is set but {other} is not")
  if given and env[ENV_COORDINATOR] is None:
    raise ValueError(f"multi-process settings are partial: {ENV_NUM_PROCESSES} and "
                     f"{ENV_PROCESS_ID} are set but {ENV_COORDINATOR} (host:port of process 0) "
                     "is not")
  names = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)
  if env[ENV_COORDINATOR] is not None:
    _check(*env.values(), names)
    return Settings(*env.values(), "environment")
  if auto:
    return Settings(None, None, None, "cluster")
  return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None,
               local_device_ids: Sequence[int] | None = None) -> None:
  """Joins this process to a multi-process JAX runtime; call before any other JAX use.

  ``coordinator_address`` is ``"host:port"`` of process 0; a value left None is detected by
  ``jax.distributed`` (``JAX_COORDINATOR_ADDRESS``, or a cluster manager). Selects gloo for CPU
  collectives.

  Raises:
    ValueError: when JAX cannot determine a setting (names the flags and variables to set).
  """
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               local_device_ids=local_device_ids)
  except ValueError as e:
    if None in (coordinator_address, num_processes, process_id):
      raise ValueError(
          f"jax.distributed could not detect the multi-process settings ({e}); outside a cluster "
          f"manager it detects, give --coordinator_address, --num_processes and --process_id "
          f"(or {ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID})") from e
    raise


def initialize_from(settings: Settings) -> None:
  """:func:`initialize` with resolved :class:`Settings`."""
  initialize(settings.coordinator_address, settings.num_processes, settings.process_id)


def wait_for_all(name: str, timeout_s: float) -> None:
  """Blocks until every process reaches the barrier ``name`` (no-op with one process).

  A barrier of the coordination service (orbax's ``get_barrier_sync_fn``), not a device
  collective, so one process may wait up to ``timeout_s`` for another's long work. If a process
  dies meanwhile, the coordination service stops the others (heartbeat timeout, 100 s).
  """
  if jax.process_count() == 1:
    return
  from orbax.checkpoint import multihost  # pylint: disable=g-import-not-at-top
  multihost.get_barrier_sync_fn()(key=name, timeout_ms=int(timeout_s * 1000))


def broadcast_str(text: str) -> str:
  """Process 0's ``text`` on every process (a collective: every process calls it).

  Raises:
    ValueError: when process 0's text is longer than 4096 bytes in UTF-8.
  """
  if jax.process_count() == 1:
    return text
  data = text.encode("utf-8")
  if len(data) > _MAX_BROADCAST_BYTES:
    raise ValueError(f"broadcast_str: {len(data)} bytes > {_MAX_BROADCAST_BYTES}: {text[:80]!r}...")
  buf = np.zeros(_MAX_BROADCAST_BYTES, np.uint8)
  buf[:len(data)] = np.frombuffer(data, np.uint8)
  n, buf = multihost_utils.broadcast_one_to_all((np.int32(len(data)), buf))
  return bytes(np.asarray(buf)[:int(n)]).decode("utf-8")


def local_copy(tree: Any) -> Any:
  """The full value of every global array of ``tree``, on this process's first local device.

  For work each process does alone on the trained params (closed-loop evaluation): the arrays
  the trainer returns span every process's devices (FSDP may split them across processes), and
  a jitted computation that also takes host-local inputs cannot consume them. One compiled
  all-gather (a collective: every process calls it) replicates them, then each process keeps its
  own device's copy. With one process the tree is returned unchanged.

  Raises:
    ValueError: when a leaf is not a global array with a ``NamedSharding`` over one mesh.
  """
  if jax.process_count() == 1:
    return tree
  leaves = jax.tree.leaves(tree)
  meshes = {x.sharding.mesh for x in leaves if isinstance(getattr(x, "sharding", None),
                                                             NamedSharding)}
  if len(meshes) != 1 or not all(isinstance(x, jax.Array) for x in leaves):
    kinds = sorted({type(getattr(x, "sharding", x)).__name__ for x in leaves})
    raise ValueError(f"local_copy: expected global arrays with a NamedSharding over one mesh, got "
                     f"{len(meshes)} meshes and leaves of kinds {kinds}")
  replicated = NamedSharding(meshes.pop(), PartitionSpec())
  # jnp.copy: an identity jit may hand back the input arrays, whose buffers the next train step
  # donates; a copy is new buffers.
  gathered = jax.jit(lambda t: jax.tree.map(jnp.copy, t), out_shardings=replicated)(tree)
  return jax.tree.map(lambda x: x.addressable_data(0), gathered)


def tree_fingerprint(tree: Any) -> str:
  """16 hex digits of SHA-256 over the leaves' dtypes, shapes and bytes in flatten order (compare
  params across processes, or with a checkpoint). The arrays must be on this host."""
  h = hashlib.sha256()
  for x in jax.tree.leaves(tree):
    x = np.ascontiguousarray(np.asarray(x))
    h.update(f"{x.dtype}{x.shape}".encode())
    h.update(x.tobytes())
  return h.hexdigest()[:16]
