"""Train the chunk value of a policy (V-GPS-style steering scorer): data -> features -> MLP.

  python experiments/train_value.py --config=configs/value_tiny.py --workdir=workdirs/value_tiny

Reads (or collects) the world model's RLDS episodes, computes the policy's backbone features of
every step once, trains the value in the one train loop and writes ``<workdir>/report_value.md``
(``vla_jax/jobs/value_job.py``). Steer with it: ``experiments/steer.py --scorers=value
--value=<workdir>``.
"""

from absl import app

from vla_jax.jobs import launch, value_job

main = launch.config_job_main(
    value_job.run_value_job, config="configs/value_tiny.py", workdir="workdirs/value_tiny",
    writes="Checkpoints, TensorBoard events and report_value.md")

if __name__ == "__main__":
  app.run(main)
