"""Train the chunk value of a policy (V-GPS-style steering scorer): data -> features -> MLP.

  python experiments/train_value.py --config=configs/value_tiny.py --workdir=workdirs/value_tiny

Reads (or collects) the world model's RLDS episodes, computes the policy's backbone features of
every step once, trains the value in the one train loop and writes ``<workdir>/report_value.md``
(``vla_jax/jobs/value_job.py``). Steer with it: ``experiments/steer.py --scorers=value
--value=<workdir>``.
"""

import os
import shlex
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from vla_jax import console
from vla_jax.jobs import value_job

_CONFIG = config_flags.DEFINE_config_file("config", "configs/value_tiny.py",
                                          "Chunk-value config (configs/value_tiny.py).")
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/value_tiny",
                               "Checkpoints, TensorBoard events and report_value.md go here.")


def main(argv):
  console.configure()
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  t0 = time.time()
  command = " ".join(shlex.quote(a) for a in ["python", *sys.argv])
  path = value_job.run_value_job(_CONFIG.value, os.path.abspath(_WORKDIR.value),
                                 command=command)
  print(f"Done in {(time.time() - t0) / 60:.1f} min" + (f"; report: {path}" if path else ""),
        flush=True)


if __name__ == "__main__":
  app.run(main)
