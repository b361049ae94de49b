"""Train the latent world model of the tabletop suite: MJX episodes -> world model -> report_wm.md.

  python experiments/train_world_model.py --config=configs/wm_tiny.py --workdir=workdirs/wm_tiny

Collects (or reuses) the RLDS episodes, trains in the one train loop (resuming from
``--workdir`` when a checkpoint is there; SIGTERM saves and stops) and writes
``<workdir>/report_wm.md``. See configs/wm_tiny.py for the options.
"""

import os
import shlex
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from vla_jax import console
from vla_jax.jobs import wm_job

_CONFIG = config_flags.DEFINE_config_file("config", "configs/wm_tiny.py",
                                          "World-model config (configs/wm_tiny.py).")
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/wm_tiny",
                               "Checkpoints, TensorBoard events, videos and report_wm.md go here.")


def main(argv):
  console.configure()
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  t0 = time.time()
  command = " ".join(shlex.quote(a) for a in ["python", *sys.argv])
  path = wm_job.run_wm_job(_CONFIG.value, os.path.abspath(_WORKDIR.value), command=command)
  print(f"Done in {(time.time() - t0) / 60:.1f} min" + (f"; report: {path}" if path else ""),
        flush=True)


if __name__ == "__main__":
  app.run(main)
