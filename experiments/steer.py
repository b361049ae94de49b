"""Best-of-N steering of a saved checkpoint: success against the number of sampled candidates.

  python experiments/steer.py --workdir=workdirs/vla_tiny --block=dev --episodes=50

At every decision the policy samples N action chunks, a scorer rates them and the best is
executed (``vla_jax/world_model/steering.py``); N = 1 is the policy alone. Scorers: ``oracle``
(the MJX oracle, privileged: each candidate simulated in a copy of the true state) and
``world_model`` (imagined in a trained world model, ``--world_model=workdirs/wm_tiny``) and
``value`` (a chunk value over the policy's features, ``--value=workdirs/value_tiny``). Writes
``<workdir>/steering/report_steering.md`` (success per task with 95% intervals for every N, ms
per decision) and ``steering.png``. Tune on ``--block=dev``; ``test`` is for the reported figure.

Currently (main job's checkpoint, flow head, test block, n = 400 per row; 19 min for the
sweep on 2 CPU cores): 83.5% alone, the oracle at N = 8 92.0% [88.9, 94.3], at N = 16 93.8%
(docs/experiments/steering.md).
"""

import os
import sys

from absl import app, flags

from vla_jax import config_args, console
from vla_jax.jobs import main_job, steer_job

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of the policy (holds checkpoints/).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_EPISODES = flags.DEFINE_integer("episodes", 50, "Episodes per task (from --block).")
_BLOCK = flags.DEFINE_enum("block", "dev", ["dev", "test"],
                           "Seed block (vla_jax/eval/seeds.py): dev for every tuning choice, "
                           "test only for the figure a report states.")
_N = flags.DEFINE_list("num_candidates", ["1", "2", "4", "8", "16"],
                       "Candidates sampled per decision (1 = the policy alone).")
_SCORERS = flags.DEFINE_list("scorers", ["oracle"], f"Scorers, of {steer_job.SCORERS}.")
_LOOKAHEAD = flags.DEFINE_integer("lookahead", None, "Control steps the oracle simulates per "
                                  "candidate (default: the chunk length H).")
_OPTIONS = flags.DEFINE_multi_string(
    "sample_option", [], "name=value head sampling option for the candidates, repeatable "
    "(value as a Python literal), e.g. --sample_option=noise_temperature=1.5.")
_WORLD_MODEL = flags.DEFINE_string(
    "world_model", None, "Workdir of a trained world model (experiments/train_world_model.py), "
    "for the world_model scorer.")
_VALUE = flags.DEFINE_string(
    "value", None, "Workdir of a trained chunk value (experiments/train_value.py) of this "
    "checkpoint, for the value scorer.")
_OUT = flags.DEFINE_string("out", None, "Report directory (default <workdir>/steering).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  console.configure()
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    counts = [int(n) for n in _N.value]
  except ValueError as e:
    raise app.UsageError(f"--num_candidates expects integers, got {_N.value}") from e
  try:
    options = config_args.parse_name_values(_OPTIONS.value, "--sample_option")
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  loaded = main_job.load_checkpoint_policy(_WORKDIR.value, _STEP.value)
  print(f"[steer] {_WORKDIR.value} step {loaded.step} ({loaded.config['policy']['head']} head), "
        f"{_EPISODES.value} episodes per task on the '{_BLOCK.value}' block", flush=True)
  lookahead = _LOOKAHEAD.value or loaded.policy.action_horizon
  world_model = None
  if "world_model" in _SCORERS.value:
    if not _WORLD_MODEL.value:
      raise app.UsageError("--scorers=world_model needs --world_model=<world-model workdir>")
    from vla_jax.jobs import wm_job  # pylint: disable=g-import-not-at-top
    world_model = wm_job.load_world_model(_WORLD_MODEL.value)
  value = None
  if "value" in _SCORERS.value:
    if not _VALUE.value:
      raise app.UsageError("--scorers=value needs --value=<chunk-value workdir>")
    from vla_jax.jobs import value_job  # pylint: disable=g-import-not-at-top
    value = value_job.load_value(_VALUE.value)
  rows = steer_job.run_sweep(loaded, scorers=_SCORERS.value, num_candidates=counts,
                             block=_BLOCK.value, episodes_per_task=_EPISODES.value,
                             lookahead=lookahead, sample_options=options,
                             world_model=world_model, value=value,
                             policy_workdir=_WORKDIR.value)
  out = _OUT.value or os.path.join(_WORKDIR.value, "steering")
  path = steer_job.write_report(rows, out, workdir=_WORKDIR.value, step=loaded.step,
                                lookahead=lookahead, command=" ".join(sys.argv),
                                sample_options=options)
  print(f"[report] {path}")


if __name__ == "__main__":
  app.run(main)
