"""Rolls out the scripted experts in batch and writes the ``tabletop_demos`` RLDS dataset.

  python experiments/collect_demos.py --config=configs/collect_demos.py --data_dir=workdirs/tfds

See configs/collect_demos.py for the options. Prints the dataset path, per-split episode counts,
per-task success counts and the wall-clock time.
"""

import json
import time

from absl import app, flags, logging
from ml_collections import config_flags

from vla_jax import console
from vla_jax.data import rlds, tabletop_demos

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/collect_demos.py).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir the dataset is written into.")
flags.mark_flags_as_required(["config", "data_dir"])


def main(argv):
  console.configure()  # library INFO lines and progress bars only at --verbosity=1
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  c = config.collect
  logging.info("[1/2] Collecting %d train + %d validation episodes (seed %d, %d envs at once, "
               "tasks %s)", c.num_train_episodes, c.num_validation_episodes, c.seed,
               c.batch_envs, c.env.tasks)
  t0 = time.time()
  path = tabletop_demos.build_demo_dataset(c, _DATA_DIR.value, overwrite=config.overwrite)
  seconds = time.time() - t0
  logging.info("[2/2] Summary")
  info = rlds.open_builder(path).info
  splits = {s: v.num_examples for s, v in info.splits.items()}
  print(f"dataset: {path}")
  print(f"episodes per split: {splits}")
  print("per-task counts: " + json.dumps(info.metadata.get("counts", {}), sort_keys=True))
  print(f"wall-clock: {seconds:.1f} s")


if __name__ == "__main__":
  app.run(main)
