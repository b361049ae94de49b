"""What the entry points share: the multi-process flags (``experiments/train.py``,
``experiments/finetune_rl.py``) and the join that uses them, and :func:`config_job_main`, the
whole ``main`` of a one-process config + workdir job (``train_world_model.py``,
``train_value.py``, ``finetune_dpo.py``).

Start the same command in every process with ``--coordinator_address=<host of process 0>:<port>
--num_processes=N --process_id=i`` (or the variables ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``); under Slurm, Open MPI, Kubernetes or Cloud TPU
``--distributed`` alone lets JAX detect them (:mod:`vla_jax.training.distributed`).
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Callable

from absl import app, flags
from ml_collections import config_flags

from vla_jax import console
from vla_jax.training import distributed


def config_job_main(run_job: Callable[..., str], *, config: str, workdir: str,
                    writes: str) -> Callable[[list[str]], None]:
  """Defines ``--config`` (default ``config``) and ``--workdir`` (default ``workdir``) and
  returns the ``main`` for ``app.run``: it runs ``run_job(config, absolute workdir,
  command=<the command line>)`` (which returns its report's path, "" when preempted) and
  prints ``Done in X min; report: ...``. ``writes``: what the workdir receives (flag help)."""
  config_flag = config_flags.DEFINE_config_file("config", config, f"Job config ({config}).")
  workdir_flag = flags.DEFINE_string("workdir", workdir, f"{writes} go here.")

  def main(argv: list[str]) -> None:
    console.configure()
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    t0 = time.time()
    command = " ".join(shlex.quote(a) for a in ["python", *sys.argv])
    path = run_job(config_flag.value, os.path.abspath(workdir_flag.value), command=command)
    print(f"Done in {(time.time() - t0) / 60:.1f} min" + (f"; report: {path}" if path else ""),
          flush=True)

  return main


def define_flags() -> Callable[[str], None]:
  """Defines ``--coordinator_address``, ``--num_processes``, ``--process_id`` and
  ``--distributed``; returns ``join(job_name)``, to call first thing in ``main``: it joins the
  multi-process run those flags (or the environment) describe, prints one line saying so, and
  does nothing for a single-process run. Bad settings raise ``app.UsageError`` naming them."""
  coordinator = flags.DEFINE_string(
      "coordinator_address", None,
      f"Multi-process: host:port of process 0 (default: ${distributed.ENV_COORDINATOR}).")
  num_processes = flags.DEFINE_integer(
      "num_processes", None,
      f"Multi-process: number of processes (default: ${distributed.ENV_NUM_PROCESSES}).")
  process_id = flags.DEFINE_integer(
      "process_id", None,
      f"Multi-process: this process's index in [0, num_processes) (default: "
      f"${distributed.ENV_PROCESS_ID}).")
  auto = flags.DEFINE_bool(
      "distributed", False,
      "Multi-process with the settings jax.distributed detects from a cluster manager (Slurm, "
      "Open MPI, Kubernetes, Cloud TPU); implied by the three flags above or their variables.")

  def join(job_name: str) -> None:
    try:
      settings = distributed.resolve_settings(
          coordinator_address=coordinator.value, num_processes=num_processes.value,
          process_id=process_id.value, auto=auto.value)
    except ValueError as e:
      raise app.UsageError(str(e)) from e
    if settings is None:
      return
    # Before any JAX computation; nothing here may touch the devices (the jobs first set the
    # CPU device count).
    distributed.initialize_from(settings)
    print(f"[{job_name}] joined a multi-process run (settings from {settings.source}: process "
          f"{settings.process_id} of {settings.num_processes}, coordinator "
          f"{settings.coordinator_address}; None = detected by JAX)", flush=True)

  return join
