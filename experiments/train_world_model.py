"""Train the latent world model of the tabletop suite: MJX episodes -> world model -> report_wm.md.

  python experiments/train_world_model.py --config=configs/wm_tiny.py --workdir=workdirs/wm_tiny

Collects (or reuses) the RLDS episodes, trains in the one train loop (resuming from
``--workdir`` when a checkpoint is there; SIGTERM saves and stops) and writes
``<workdir>/report_wm.md``. See configs/wm_tiny.py for the options.
"""

from absl import app

from vla_jax.jobs import launch, wm_job

main = launch.config_job_main(
    wm_job.run_wm_job, config="configs/wm_tiny.py", workdir="workdirs/wm_tiny",
    writes="Checkpoints, TensorBoard events, videos and report_wm.md")

if __name__ == "__main__":
  app.run(main)
