"""Evaluates a saved checkpoint closed-loop in the MJX task suite (the checkpoint is self-describing).

  python experiments/eval.py --workdir=workdirs/vla_tiny --episodes=100 --block=dev

The config, normalization statistics and tokenizers are read from the checkpoint's assets, the
policy is rebuilt from them, and the params (EMA params when the run used EMA) are loaded. Prints
the success per task and the inference latency; ``--videos`` writes one GIF per task.
"""

import os

import ml_collections
from absl import app, flags

from vla_jax import config_args, console
from vla_jax.eval import report
from vla_jax.jobs import main_job

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (holds checkpoints/).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_EPISODES = flags.DEFINE_integer("episodes", 100, "Episodes per task (from --block).")
_BLOCK = flags.DEFINE_enum("block", "dev", ["dev", "test"],
                           "Seed block (vla_jax/eval/seeds.py): dev for every tuning choice, "
                           "test only for the figure a report states.")
_OFFSET = flags.DEFINE_integer("offset", 0, "Episodes of the block to skip (e.g. to draw fresh "
                               "dev episodes after a first comparison).")
_REPLAN = flags.DEFINE_integer("replan_every", None, "Control steps between policy queries "
                               "(default: the run's config.eval.replan_every).")
_OPTIONS = flags.DEFINE_multi_string(
    "sample_option", [], "name=value head sampling option, repeatable (value as a Python "
    "literal), e.g. --sample_option=noise_temperature=0 --sample_option=num_steps=5.")
_VIDEOS = flags.DEFINE_integer("videos", 0, "Rollout GIFs per task, written to <workdir>/eval_videos.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  console.configure()  # library INFO lines and progress bars only at --verbosity=1
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  loaded = main_job.load_checkpoint_policy(_WORKDIR.value, _STEP.value)
  config = ml_collections.ConfigDict(loaded.config)
  if _REPLAN.value is not None:
    config.eval.replan_every = _REPLAN.value
  try:
    options = config_args.parse_name_values(_OPTIONS.value, "--sample_option")
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  evaluator = main_job.make_evaluator(config, loaded.policy, loaded.norm_stats,
                                      loaded.text_tokenizer, sample_options=options)
  res = evaluator(loaded.params, num_episodes_per_task=_EPISODES.value, block=_BLOCK.value,
                  offset=_OFFSET.value, video_episodes=_VIDEOS.value)
  print(f"checkpoint step {loaded.step}: {res.summary()}")
  print(report.success_table(res.per_task))
  print(f"inference: {evaluator.latency_ms(loaded.params):.1f} ms per action chunk")
  for task, frames in res.videos.items():
    from vla_jax.eval import videos  # pylint: disable=g-import-not-at-top
    print(videos.write_gif(frames, os.path.join(_WORKDIR.value, "eval_videos", f"{task}.gif"),
                           fps=config.collect.env.control_hz))


if __name__ == "__main__":
  app.run(main)
