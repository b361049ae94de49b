"""Does a checkpoint's head use the image and the instruction? Offline action probe.

  python experiments/probe_actions.py --workdir=workdirs/vla_tiny --batches=8

Prints, per action dimension (x, y, z, gripper), the error of the chunk's first action on
validation steps as a ratio to predicting the mean action (``1.0x`` = no better; lower is
better): with the real observations, the images shuffled across the batch, and the instructions
shuffled (``vla_jax.eval.probe``). A head that uses the image gets worse when the images are
shuffled. Examples and their readings: docs/experiments/heads.md.
"""

from absl import app, flags

from vla_jax import console
from vla_jax.eval import probe
from vla_jax.jobs import main_job

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (holds checkpoints/).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_BATCHES = flags.DEFINE_integer("batches", 8, "Validation batches to probe.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Observations per batch.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling and shuffling seed.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  console.configure()
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  loaded = main_job.load_checkpoint_policy(_WORKDIR.value, _STEP.value)
  print(f"checkpoint {_WORKDIR.value} step {loaded.step} ({loaded.config['policy']['head']} head)")
  result = probe.probe(loaded, _BATCHES.value, _BATCH_SIZE.value, _SEED.value)
  print(probe.format_probe(result))


if __name__ == "__main__":
  app.run(main)
