"""The world model as a policy evaluator: imagined against MJX success over many policies.

  python experiments/evaluate_world_model.py --world_model=workdirs/wm_tiny \
      --policies=workdirs/vla_tiny@all --replan_every=1,4 --block=test --episodes=50

Every policy (each kept checkpoint of a run with ``@all``, one with ``@STEP``, the latest
without; crossed with every ``--replan_every``) runs the same seed-block episodes in MJX and in
the world model. Writes ``<world_model>/evaluator/report_wm_eval.md``: success per policy in
both, Pearson r / Spearman rho / MMRV with bootstrap intervals, ``wm_eval_scatter.png`` and
imagined next to true GIFs (``vla_jax/jobs/wm_eval_job.py``).

Currently (2026-12-08, configs/wm_tiny.py's run P, the main job's 6 checkpoints x replan 1 and 4,
test block, 100 episodes each): Pearson r -0.56 [-0.76, -0.29], MMRV 41 points; in closed loop
the model imagines push and lift succeeding and pick_place failing whatever the policy
(docs/experiments/world_model.md). 8.5 min on 2 CPU cores.
"""

import os
import shlex
import sys
import time

from absl import app, flags

from vla_jax import console
from vla_jax.jobs import wm_eval_job, wm_job

_WORLD_MODEL = flags.DEFINE_string("world_model", "workdirs/wm_tiny",
                                   "Workdir of experiments/train_world_model.py.")
_POLICIES = flags.DEFINE_list("policies", ["workdirs/vla_tiny@all"],
                              "Policy runs: WORKDIR (latest), WORKDIR@STEP or WORKDIR@all.")
_REPLAN = flags.DEFINE_list("replan_every", ["1"], "Control steps between policy queries; "
                            "every policy is evaluated with each value.")
_BLOCK = flags.DEFINE_enum("block", "dev", ["dev", "test"],
                           "Seed block (vla_jax/eval/seeds.py): dev for every tuning choice, "
                           "test only for the figure a report states.")
_EPISODES = flags.DEFINE_integer("episodes", 50, "Episodes per task, per policy and env.")
_SUCCESS_STEPS = flags.DEFINE_integer(
    "success_steps", 1, "Consecutive imagined steps with success probability > 0.5 before an "
    "imagined episode counts as successful (WorldModelEnv).")
_OUT = flags.DEFINE_string("out", None, "Report directory (default <world_model>/evaluator).")


def main(argv):
  console.configure()
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    replan = [int(r) for r in _REPLAN.value]
  except ValueError as e:
    raise app.UsageError(f"--replan_every expects integers, got {_REPLAN.value}") from e
  t0 = time.time()
  specs = wm_eval_job.parse_policies(_POLICIES.value, replan)
  world_model = wm_job.load_world_model(_WORLD_MODEL.value)
  print(f"[wm-eval] world model {_WORLD_MODEL.value} step {world_model.step}; {len(specs)} "
        f"policies x {_EPISODES.value} episodes per task on the '{_BLOCK.value}' block",
        flush=True)
  rows = wm_eval_job.run_evaluation(world_model, specs, block=_BLOCK.value,
                                    episodes_per_task=_EPISODES.value,
                                    success_steps=_SUCCESS_STEPS.value)
  out = _OUT.value or os.path.join(_WORLD_MODEL.value, "evaluator")
  command = " ".join(shlex.quote(a) for a in ["python", *sys.argv])
  path, stats = wm_eval_job.write_report(rows, out, world_model_workdir=_WORLD_MODEL.value,
                                         world_model_step=world_model.step,
                                         seen=wm_eval_job.seen_in_training(world_model.config),
                                         command=command)
  print(wm_eval_job.summary_line(stats), flush=True)
  if stats["held_out"] is not None:
    print(wm_eval_job.summary_line(stats["held_out"]) + " (policies the world model did not "
          "train on)", flush=True)
  print(f"Done in {(time.time() - t0) / 60:.1f} min; report: {path}", flush=True)


if __name__ == "__main__":
  app.run(main)
