"""RL fine-tuning of a saved policy in batched MJX: before/after evaluation -> report_rl.md.

  python experiments/finetune_rl.py --config=configs/rl_tiny.py --workdir=workdirs/rl_tiny

Starts from ``config.init_workdir`` (default the main job's ``workdirs/vla_tiny``; without a
checkpoint there it stops and prints the command that makes one), evaluates on the ``test`` seed
block, runs GRPO iterations in the one train loop (resuming from ``--workdir`` if a checkpoint is
there; SIGTERM saves and stops), evaluates again and writes ``<workdir>/report_rl.md``. See
configs/rl_tiny.py for the options.

Multi-process: the flags and variables of ``experiments/train.py`` (``--coordinator_address``,
``--num_processes``, ``--process_id``, ``--distributed``; :mod:`vla_jax.jobs.launch`). Each
process simulates its share of the ``rl.num_groups * rl.group_size`` envs of an iteration;
process 0 evaluates and writes the report. On CPU, with two processes on localhost::

  for i in 0 1; do python experiments/finetune_rl.py --config=configs/rl_tiny.py \\
      --workdir=workdirs/rl_mh --coordinator_address=localhost:12356 --num_processes=2 \\
      --process_id=$i & done; wait
"""

import os
import shlex
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from vla_jax import console
from vla_jax.jobs import launch, rl_job

_CONFIG = config_flags.DEFINE_config_file("config", "configs/rl_tiny.py",
                                          "RL config (configs/rl_tiny.py).")
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/rl_tiny",
                               "Checkpoints, TensorBoard events, videos and report_rl.md go here.")
_JOIN = launch.define_flags()


def main(argv):
  console.configure()
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  _JOIN("rl")  # Multi-process: before any JAX computation.
  t0 = time.time()
  command = " ".join(shlex.quote(a) for a in ["python", *sys.argv])
  try:
    path = rl_job.run_rl_job(_CONFIG.value, os.path.abspath(_WORKDIR.value), command=command)
  except FileNotFoundError as e:
    sys.exit(f"finetune_rl: {e}")
  print(f"Done in {(time.time() - t0) / 60:.1f} min" + (f"; report: {path}" if path else ""),
        flush=True)


if __name__ == "__main__":
  app.run(main)
