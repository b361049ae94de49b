"""Every action head on the same cached data for the same training wall-clock -> compare_heads.md.

  python experiments/compare_heads.py --workdir=workdirs/compare_heads

Runs the main job (configs/vla_tiny.py) once per variant (flow, hybrid, diffusion, ar, ar_fast,
discrete_diffusion, and the flow head with M = 1 and M = 8 level-2 copies), each as its
own ``experiments/train.py`` process in ``<workdir>/<variant>``, after a short calibration that
measures every variant's training rate side by side; each trains for the wall-clock the flow head
needs for ``--flow_steps`` (the main job's 6000). Writes ``<workdir>/compare_heads.md`` (success
per task on the test seed block with 95% intervals, NFE, latency, tokens per chunk, steps,
training time; the seed papers' claims, confirmed or not) and ``learning_curves.png``.

Expect about 25 minutes per variant on a 2-core CPU machine (8 variants: about 3.5 hours). It
resumes: stop it any time and rerun the same command; finished variants are not rerun, and the
report is rewritten with what is finished (``--report_only`` rewrites it without training).
See vla_jax/jobs/compare_heads.py for the method.
"""

import os

from absl import app, flags

from vla_jax import atomic_files, console
from vla_jax.jobs import compare_heads, compare_report

_WORKDIR = flags.DEFINE_string("workdir", "workdirs/compare_heads",
                               "One subdirectory per variant; compare_heads.md goes here.")
_HEADS = flags.DEFINE_list("heads", list(compare_heads.DEFAULT),
                           f"Variants to compare, from {list(compare_heads.VARIANTS)}.")
_FLOW_STEPS = flags.DEFINE_integer(
    "flow_steps", 6000, "The flow head's steps; the budget is the time it takes to train them.")
_TRAIN_MINUTES = flags.DEFINE_float(
    "train_minutes", 0.0, "Training budget per variant in minutes (0 = from --flow_steps).")
_CAL_STEPS = flags.DEFINE_integer("calibration_steps", 150,
                                  "Steps of each variant's calibration run.")
_CAL_LOG = flags.DEFINE_integer("calibration_log_every", 50,
                                "Logging interval of the calibration runs (the rate is the "
                                "median over the intervals after the first).")
_EPISODES = flags.DEFINE_integer("eval_episodes", 100, "Final test episodes per task.")
_DATA_ROOT = flags.DEFINE_string("data_root", "workdirs/data",
                                 "Where the demo dataset is built once and shared.")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False,
                                 "Rewrite compare_heads.md from the finished variants only.")


def main(argv):
  console.configure()
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  workdir = os.path.abspath(_WORKDIR.value)
  if _REPORT_ONLY.value:
    rates = atomic_files.read_json(os.path.join(workdir, "calibration.json")) or {}
    rates = {n: r for n, r in rates.items() if n in _HEADS.value}
    steps = compare_heads.plan_steps(rates, flow_steps=_FLOW_STEPS.value,
                                     train_minutes=_TRAIN_MINUTES.value) if rates else {}
    print(compare_report.write_report(workdir, _HEADS.value, compare_heads.labels(), rates,
                                      steps), flush=True)
    return
  compare_heads.run_comparison(
      workdir, _HEADS.value, flow_steps=_FLOW_STEPS.value, train_minutes=_TRAIN_MINUTES.value,
      calibration_steps=_CAL_STEPS.value, calibration_log_every=_CAL_LOG.value,
      eval_episodes=_EPISODES.value, data_root=_DATA_ROOT.value)


if __name__ == "__main__":
  app.run(main)
