"""Multi-host start-up: ``jax.distributed.initialize`` with gloo CPU collectives."""

from __future__ import annotations

from collections.abc import Sequence

import jax


def initialize(coordinator_address: str, num_processes: int, process_id: int,
               local_device_ids: Sequence[int] | None = None) -> None:
  """Joins this process to a multi-process JAX runtime; call before any other JAX use.

  On CPU, cross-process collectives need an implementation: gloo (bundled with jaxlib). On TPU/GPU
  the flag is ignored. ``coordinator_address`` is ``"host:port"`` of process 0.
  """
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             local_device_ids=local_device_ids)
