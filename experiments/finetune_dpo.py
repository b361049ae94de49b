"""DPO of a flow policy on preferences judged by a world model: pairs -> DPO -> report_dpo.md.

  python experiments/finetune_dpo.py --config=configs/dpo_tiny.py --workdir=workdirs/dpo_tiny

Evaluates the starting checkpoint, collects chosen/rejected chunk pairs ranked by the world
model's imagined return, fine-tunes with flow-DPO in the one train loop (resuming from
``--workdir``; SIGTERM saves and stops), evaluates again and writes ``<workdir>/report_dpo.md``
(``vla_jax/jobs/dpo_job.py``). The result loads like any checkpoint:
``experiments/eval.py --workdir=<workdir>``.
"""

import os
import shlex
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from vla_jax import console
from vla_jax.jobs import dpo_job

_CONFIG = config_flags.DEFINE_config_file("config", "configs/dpo_tiny.py",
                                          "DPO config (configs/dpo_tiny.py).")
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/dpo_tiny",
                               "Checkpoints, TensorBoard events and report_dpo.md go here.")


def main(argv):
  console.configure()
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  t0 = time.time()
  command = " ".join(shlex.quote(a) for a in ["python", *sys.argv])
  path = dpo_job.run_dpo_job(_CONFIG.value, os.path.abspath(_WORKDIR.value), command=command)
  print(f"Done in {(time.time() - t0) / 60:.1f} min" + (f"; report: {path}" if path else ""),
        flush=True)


if __name__ == "__main__":
  app.run(main)
