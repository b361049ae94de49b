"""DPO of a flow policy on preferences judged by a world model: pairs -> DPO -> report_dpo.md.

  python experiments/finetune_dpo.py --config=configs/dpo_tiny.py --workdir=workdirs/dpo_tiny

Evaluates the starting checkpoint, collects chosen/rejected chunk pairs ranked by the world
model's imagined return, fine-tunes with flow-DPO in the one train loop (resuming from
``--workdir``; SIGTERM saves and stops), evaluates again and writes ``<workdir>/report_dpo.md``
(``vla_jax/jobs/dpo_job.py``). The result loads like any checkpoint:
``experiments/eval.py --workdir=<workdir>``.
"""

from absl import app

from vla_jax.jobs import dpo_job, launch

main = launch.config_job_main(
    dpo_job.run_dpo_job, config="configs/dpo_tiny.py", workdir="workdirs/dpo_tiny",
    writes="Checkpoints, TensorBoard events and report_dpo.md")

if __name__ == "__main__":
  app.run(main)
