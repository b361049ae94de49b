"""The main job: demonstrations -> tiny VLA -> closed-loop evaluation -> report.md.

  python experiments/train.py --config=configs/vla_tiny.py --workdir=workdirs/vla_tiny

With no dataset present it builds the MJX demonstration dataset (cached under
``config.data_root`` for the next run), fits the text tokenizer on the instruction corpus (and
FAST for ``head=ar_fast``), trains the policy with the one train loop (resuming from
``--workdir`` if a checkpoint is there), evaluates it closed-loop in the simulator periodically
and at the end, and writes ``<workdir>/report.md``. See configs/vla_tiny.py for the options.

Multi-process (several hosts, or several processes on one host): start the same command in every
process with ``--coordinator_address=<host of process 0>:<port> --num_processes=N
--process_id=i`` (or the variables ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
``JAX_PROCESS_ID``; under Slurm, Open MPI, Kubernetes or Cloud TPU ``--distributed`` alone lets
JAX detect them). ``--workdir`` and ``config.data_root`` must be on a filesystem every process
sees. Process 0 builds the dataset and fits the tokenizers while the others wait; each process
trains on its own shard of the episodes; process 0 evaluates and writes the report while the
others wait. On CPU, try it with two processes on localhost::

  for i in 0 1; do python experiments/train.py --config=configs/vla_tiny.py \\
      --workdir=workdirs/mh --coordinator_address=localhost:12355 --num_processes=2 \\
      --process_id=$i & done; wait
"""

import os
import shlex
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from vla_jax import console
from vla_jax.jobs import launch, main_job

_CONFIG = config_flags.DEFINE_config_file("config", "configs/vla_tiny.py",
                                          "Experiment config (configs/vla_tiny.py).")
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/vla_tiny",
                               "Checkpoints, TensorBoard events, videos and report.md go here.")
_JOIN = launch.define_flags()


def main(argv):
  console.configure()  # library INFO lines and progress bars only at --verbosity=1
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  _JOIN("main")  # Multi-process: before any JAX computation (run_main_job makes the first).
  t0 = time.time()
  command = " ".join(shlex.quote(a) for a in ["python", *sys.argv])
  report = main_job.run_main_job(_CONFIG.value, os.path.abspath(_WORKDIR.value), command=command)
  print(f"Done in {(time.time() - t0) / 60:.1f} min" + (f"; report: {report}" if report else ""),
        flush=True)


if __name__ == "__main__":
  app.run(main)
