"""The main job: demonstrations -> tiny VLA -> closed-loop evaluation -> report.md.

  python experiments/train.py --config=configs/vla_tiny.py --workdir=workdirs/vla_tiny

With no dataset present it builds the MJX demonstration dataset (cached under
``config.data_root`` for the next run), fits the text tokenizer on the instruction corpus (and
FAST for ``head=ar_fast``), trains the policy with the one train loop (resuming from
``--workdir`` if a checkpoint is there), evaluates it closed-loop in the simulator periodically
and at the end, and writes ``<workdir>/report.md``. See configs/vla_tiny.py for the options.
"""

import os
import shlex
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from vla_jax import console
from vla_jax.jobs import main_job

_CONFIG = config_flags.DEFINE_config_file("config", "configs/vla_tiny.py",
                                          "Experiment config (configs/vla_tiny.py).")
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/vla_tiny",
                               "Checkpoints, TensorBoard events, videos and report.md go here.")


def main(argv):
  console.configure()  # library INFO lines and progress bars only at --verbosity=1
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  t0 = time.time()
  command = " ".join(shlex.quote(a) for a in ["python", *sys.argv])
  report = main_job.run_main_job(_CONFIG.value, os.path.abspath(_WORKDIR.value), command=command)
  print(f"Done in {(time.time() - t0) / 60:.1f} min; report: {report}", flush=True)


if __name__ == "__main__":
  app.run(main)
