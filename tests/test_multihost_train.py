"""experiments/train.py itself as 2 processes on localhost (jax.distributed, gloo CPU collectives).

Process 0 gets its multi-process settings as flags, process 1 as environment variables, with the
tiny job of ``_multihost_train_config.py`` (FSDP splits params across the two processes). Asserts:
both exit 0; process 0 alone built the dataset and fitted the tokenizer while process 1 waited and
then read them; only process 0 evaluated (periodically on the dev seed block, finally on test)
and wrote the report, with intervals; both processes end at the same step, loss and params
(equal to the checkpoint's, gathered across the FSDP split). This is also the end-to-end smoke
test of the main job through its entry point (colabs/quickstart.ipynb runs it in-process); then the RL job's entry
point (experiments/finetune_rl.py), also as 2 processes, fine-tunes that run's checkpoint: the
end-to-end test of the second stage (before/after evaluation on test, RL iterations in the
train loop with each process simulating its own envs, periodic dev evaluation, all by process 0
alone, report_rl.md, an RL checkpoint experiments/eval.py can load); and
experiments/steer.py's sweep (best-of-N steering with the MJX oracle) on that checkpoint,
in-process. The settings
rules (flags, environment, partial or inconsistent settings) are tested without processes.
"""

import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from vla_jax.training import distributed

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO_ROOT, "tests", "_multihost_train_config.py")
# Cheaper XLA CPU compilation: the runs are mostly compiles of tiny programs (measured here: 157 s
# of CPU instead of 232 s for the multi-process test).
_FAST_COMPILE_ENV = {"JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO_ROOT, "TF_CPP_MIN_LOG_LEVEL": "2",
                     "XLA_FLAGS": "--xla_force_host_platform_device_count=1 "
                     "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"}
_DONE = re.compile(r"\[main\] process (\d) of 2: step (\d+), final loss (\S+), params (\w+)")


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run_two_processes(command: list[str], tmp) -> list[str]:
  """Runs ``command`` as processes 0 and 1 of one run on localhost (process 0 gets its settings
  as flags, process 1 as environment variables); asserts both exit 0; returns their outputs."""
  coordinator = f"localhost:{_free_port()}"
  base_env = {k: v for k, v in os.environ.items()
              if k not in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES,
                           distributed.ENV_PROCESS_ID)}
  base_env.update(_FAST_COMPILE_ENV)
  procs, logs = [], []
  for i in range(2):
    env = dict(base_env)
    args = list(command)
    if i == 0:
      args += [f"--coordinator_address={coordinator}", "--num_processes=2", "--process_id=0"]
    else:
      env.update({distributed.ENV_COORDINATOR: coordinator, distributed.ENV_NUM_PROCESSES: "2",
                  distributed.ENV_PROCESS_ID: "1"})
    logs.append(tmp / f"process{i}.log")
    with open(logs[-1], "w") as f:  # Files, not pipes: a full pipe would stall a process.
      procs.append(subprocess.Popen(args, env=env, cwd=str(tmp), stdout=f,
                                    stderr=subprocess.STDOUT))
  try:
    codes = [p.wait(timeout=900) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  outputs = [log.read_text() for log in logs]
  for i, (code, out) in enumerate(zip(codes, outputs)):
    assert code == 0, f"process {i} exited with {code}:\n{out[-6000:]}"
  return outputs


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """Runs both processes once; returns (workdir, data_root, [output of process 0, 1])."""
  tmp = tmp_path_factory.mktemp("multihost_train")
  workdir, data_root = str(tmp / "run"), str(tmp / "data")
  command = [sys.executable, os.path.join(REPO_ROOT, "experiments", "train.py"),
             f"--config={CONFIG}", f"--config.data_root={data_root}", f"--workdir={workdir}"]
  return workdir, data_root, _run_two_processes(command, tmp)


def test_process_0_alone_builds_the_dataset_and_fits_the_tokenizer(run):
  _, data_root, (out0, out1) = run
  built = re.findall(r"tabletop_demos: built at (\S+) in", out0)
  assert len(built) == 1 and "built at" not in out1
  assert os.listdir(os.path.join(data_root, "tabletop_demos")) == [os.path.basename(built[0])]
  assert "waiting for process 0 to prepare the dataset" in out1
  assert f"[data] using {built[0]}" in out1
  assert "text tokenizer fitted" in out0 and "text tokenizer fitted" not in out1
  assert "text tokenizer reloaded" in out1


def test_only_process_0_evaluates_and_writes_the_report(run):
  workdir, _, (out0, out1) = run
  assert "[eval] test block: success" in out0 and "[eval]" not in out1
  assert "[eval @ step 2] dev block: success" in out0
  assert "[report]" in out0 and "[report]" not in out1
  for name in ("report.md", "training_curve.png", os.path.join("videos", "reach.gif")):
    assert os.path.isfile(os.path.join(workdir, name)), name
  assert re.search(r"Done in [\d.]+ min; report: \S+report.md", out0)
  assert re.search(r"Done in [\d.]+ min\n", out1)


def test_report_states_the_test_block_with_counts_and_intervals(run):
  workdir, _, _ = run
  with open(os.path.join(workdir, "report.md")) as f:
    text = f.read()
  assert "on the **test** seed block" in text
  assert re.search(r"\| reach \| [01] / 1 \| [\d.]+% \| \[[\d.]+, [\d.]+\] \|", text), text
  assert re.search(r"\| \*\*mean over tasks\*\* \| [01] / 1 \|", text)
  assert "Periodic evaluation on the dev seed block (2 episodes per task; step: mean success): 2:" \
      in text


def test_both_processes_train_on_one_fsdp_mesh_and_agree(run):
  import jax  # pylint: disable=g-import-not-at-top

  from vla_jax.training import checkpoints  # pylint: disable=g-import-not-at-top
  workdir, _, (out0, out1) = run
  assert "mesh {'data': 1, 'fsdp': 2} (2 processes), global batch 4 (2 per process)" in out0
  done = [_DONE.findall(out) for out in (out0, out1)]
  assert [len(d) for d in done] == [1, 1], done
  (i0, *rest0), (i1, *rest1) = done[0][0], done[1][0]
  assert (i0, i1) == ("0", "1") and rest0 == rest1
  step, loss, fingerprint = rest0
  assert step == "3" and float(loss) > 0
  saved = checkpoints.load_params(workdir)
  assert distributed.tree_fingerprint(jax.device_get(saved)) == fingerprint
  # Self-describing: the checkpoint alone rebuilds the policy (what experiments/eval.py does).
  from vla_jax.jobs import main_job  # pylint: disable=g-import-not-at-top
  loaded = main_job.load_checkpoint_policy(workdir)
  assert loaded.step == 3 and loaded.config["eval"]["block"] == "test"
  # The action probe (experiments/probe_actions.py) reads the run's validation split with it.
  from vla_jax.eval import probe  # pylint: disable=g-import-not-at-top
  result = probe.probe(loaded, num_batches=1, batch_size=8)
  d = loaded.policy.action_dim
  assert result["mean action"]["n"] > 0
  for variant in ("mean action", *probe.VARIANTS):
    assert result[variant]["mae"].shape == (d,) and np.isfinite(result[variant]["mae"]).all()
  assert len(probe.format_probe(result).splitlines()) == 2 + len(probe.VARIANTS)


def test_finetune_rl_entry_point_fine_tunes_the_checkpoint(run, tmp_path):
  workdir, _, _ = run
  rl_dir = str(tmp_path / "rl")
  config = (f"--config={os.path.join(REPO_ROOT, 'configs', 'rl_tiny.py')}:"
            f"init_workdir={workdir},iterations=2,groups=1,group_size=2,eval_episodes=1,"
            "tasks=,replan=0")
  command = [sys.executable, os.path.join(REPO_ROOT, "experiments", "finetune_rl.py"), config,
             "--config.rl.eval_every=1", "--config.rl.eval_episodes_per_task=1",
             "--config.rl.decisions_per_update=4", "--config.rl.reward=dense",
             # PPO: the job end to end with the critic (GRPO runs in tests/test_rl_*.py).
             "--config.rl.algorithm=ppo",
             f"--workdir={rl_dir}"]
  # Two processes, one env each: each simulates its own shard of the iteration's envs.
  out, out1 = _run_two_processes(command, tmp_path)
  for i, text in enumerate((out, out1)):
    assert f"[rl] joined a multi-process run (settings from {('flags', 'environment')[i]}: " \
        f"process {i} of 2" in text, text[-3000:]
    assert f"[rl] starting point: {workdir} step 3 (flow head)" in text
  assert "mesh {'data': 2, 'fsdp': 1} (2 processes), global batch 2 (1 per process)" in out
  assert "[eval] before RL: test block: success" in out
  assert "[eval @ iteration 1] dev block: success" in out
  assert "[eval" not in out1 and "[report]" not in out1  # Only process 0 evaluates.
  assert re.search(r"step 2/2 loss \S+ .* rollout_success [\d.]+", out), out[-3000:]
  with open(os.path.join(rl_dir, "report_rl.md")) as f:
    text = f.read()
  assert re.search(r"\| reach \| [\d.]+% \[[\d.]+, [\d.]+\] \(n=1\) \| [\d.]+% \[", text), text
  for name in ("rl_curves.png", os.path.join("videos", "before_reach.gif"),
               os.path.join("videos", "after_reach.gif")):
    assert os.path.isfile(os.path.join(rl_dir, name)), name
  # The RL checkpoint is self-describing too: experiments/eval.py rebuilds its policy.
  from vla_jax.jobs import main_job  # pylint: disable=g-import-not-at-top
  loaded = main_job.load_checkpoint_policy(rl_dir)
  assert loaded.step == 2 and loaded.config["rl"]["algorithm"] == "ppo"
  # The critic is saved with the policy's params (the policy's modules ignore it: the "after"
  # evaluation above acted with exactly these params).
  assert "rl_value" in loaded.params
  # Without a starting checkpoint the job stops with the command that makes one: tested
  # in-process (rl_job.require_init_checkpoint, tests/test_rl_training.py), not with another
  # process start here.


@pytest.mark.parametrize("kwargs, environ, match", [
    ({"coordinator_address": "localhost:1234", "num_processes": 2}, {},
     "--process_id missing"),
    ({"num_processes": 2, "process_id": 0}, {}, "--coordinator_address missing"),
    ({}, {"JAX_NUM_PROCESSES": "2"}, "JAX_NUM_PROCESSES is set but JAX_PROCESS_ID is not"),
    ({}, {"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"},
     "JAX_COORDINATOR_ADDRESS .* is not"),
    ({"coordinator_address": "localhost:1234", "num_processes": 2, "process_id": 0},
     {"JAX_PROCESS_ID": "1"}, "--process_id=0 disagrees with the environment's JAX_PROCESS_ID=1"),
    ({"coordinator_address": "localhost:1234", "num_processes": 2, "process_id": 2}, {},
     r"--process_id=2: must be in \[0, --num_processes=2\)"),
    ({"coordinator_address": "localhost", "num_processes": 2, "process_id": 0}, {},
     "--coordinator_address='localhost': expected host:port"),
    ({}, {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
     "JAX_NUM_PROCESSES='two' is not an integer"),
])
def test_partial_or_inconsistent_settings_are_named(kwargs, environ, match):
  with pytest.raises(ValueError, match=match):
    distributed.resolve_settings(environ=environ, **kwargs)


def test_settings_from_flags_environment_or_cluster():
  flags = {"coordinator_address": "h:1", "num_processes": 2, "process_id": 1}
  assert distributed.resolve_settings(environ={}) is None
  assert distributed.resolve_settings(environ={}, **flags) == distributed.Settings(
      "h:1", 2, 1, "flags")
  env = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
  assert distributed.resolve_settings(environ=env) == distributed.Settings("h:1", 2, 1,
                                                                           "environment")
  assert distributed.resolve_settings(environ=env, **flags).source == "flags"  # they agree
  # The coordinator alone: the counts come from a cluster manager JAX detects.
  assert distributed.resolve_settings(environ={"JAX_COORDINATOR_ADDRESS": "h:1"}) == (
      distributed.Settings("h:1", None, None, "environment"))
  assert distributed.resolve_settings(environ={}, auto=True) == distributed.Settings(
      None, None, None, "cluster")


def test_steering_sweep_of_the_checkpoint_writes_its_report(run, tmp_path):
  """experiments/steer.py's library path on this run's checkpoint (in-process, one process):
  the MJX oracle at N = 2, with the report. (N = 1 is plain evaluation, which the main and RL
  jobs above run; a second compiled rollout here cost ~100 s of CI.)"""
  from vla_jax.jobs import main_job, steer_job  # pylint: disable=g-import-not-at-top
  workdir, _, _ = run
  loaded = main_job.load_checkpoint_policy(workdir)
  printed = []
  rows = steer_job.run_sweep(loaded, scorers=["oracle"], num_candidates=[2], block="dev",
                             episodes_per_task=1, print_fn=lambda *a, **k: printed.append(a[0]))
  assert [(r.scorer, r.num_candidates) for r in rows] == [("oracle", 2)]
  assert all(r.result.totals[1] == 1 and r.decision_ms > 0 for r in rows)
  assert re.match(r"\[steer\] oracle N=2: dev block: success [\d.]+% \[", printed[0]), printed
  path = steer_job.write_report(rows, str(tmp_path), workdir=workdir, step=loaded.step,
                                lookahead=loaded.policy.action_horizon)
  with open(path) as f:
    text = f.read()
  assert "on the **dev** seed block" in text and "**privileged**" in text
  assert re.search(r"\| oracle \| 2 \| [01]/1 \| \*\*[\d.]+% \[[\d.]+, [\d.]+\] \(n=1\)\*\* \|",
                   text), text
  assert os.path.isfile(os.path.join(str(tmp_path), "steering.png"))
  h = loaded.policy.action_horizon
  for kwargs, match in (({"lookahead": h + 1}, f"lookahead={h + 1} must be in \\[1, H={h}\\]"),
                        ({"num_candidates": [0]}, r"num_candidates \[0\] must be"),
                        ({"scorers": ["magic"]}, r"unknown scorer\(s\) \['magic'\]"),
                        ({"scorers": ["value"]}, "'value' needs a trained chunk value"),
                        ({"scorers": ["world_model"]}, "'world_model' needs a trained world")):
    args = {"scorers": ["oracle"], "num_candidates": [1], "block": "dev",
            "episodes_per_task": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
      steer_job.run_sweep(loaded, **args)
