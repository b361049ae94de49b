"""Two real processes on localhost (jax.distributed + gloo CPU collectives) match one process.

Each process has 2 simulated CPU devices and reads only its own rows of every global batch; the
4-device mesh is data=2 x fsdp=2. Process 0 alone receives SIGTERM: both processes must agree on
one step, save the same checkpoint and exit cleanly; a single-device run then resumes from that
multi-host checkpoint (resharded) and ends where the uninterrupted single-process run ends.
"""

import glob
import json
import os
import socket

import _training_toy as toy
import jax
import numpy as np
import pytest

TRAIN = {"num_steps": 8, "log_every": 1, "checkpoint_every": 0}


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  result = toy.reference_run(str(tmp_path_factory.mktemp("ref")), **TRAIN)
  return jax.device_get(result.state.params), [h["loss"] for h in result.history]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("multihost")
  coordinator = f"localhost:{_free_port()}"
  procs = []
  for i in range(2):
    spec = {"mode": "multihost", "coordinator": coordinator, "num_processes": 2,
            "process_id": i, "workdir": str(tmp / "run"), "out": str(tmp / f"out{i}.json"),
            "train": TRAIN, "mesh": {"data": 2, "fsdp": 2}}
    if i == 0:
      spec.update(term_at=2, sleep_after_term=1.0)
    procs.append(toy.start_worker(spec, num_devices=2))
  results = []
  for i, proc in enumerate(procs):
    code, out = toy.finish_worker(proc)
    assert code == 0, f"process {i}:\n{out}"
    with open(tmp / f"out{i}.json") as f:
      results.append(json.load(f))
  return str(tmp / "run"), results


def test_two_process_losses_match_single_process(two_processes, reference):
  _, results = two_processes
  for res in results:
    assert res["processes"] == 2 and res["devices"] == 4
    n = len(res["losses"])
    assert n >= 3
    np.testing.assert_allclose(res["losses"], reference[1][:n], rtol=0, atol=1e-5)


def test_sigterm_on_one_process_stops_both_at_one_checkpoint(two_processes):
  workdir, results = two_processes
  steps = {res["step"] for res in results}
  assert len(steps) == 1 and all(res["preempted"] for res in results)
  step = steps.pop()
  assert 2 < step < TRAIN["num_steps"]
  saved = [int(os.path.basename(p)) for p in glob.glob(f"{workdir}/checkpoints/*")]
  assert saved == [step]


def test_single_device_resumes_the_multihost_checkpoint(two_processes, reference):
  workdir, results = two_processes
  result = toy.reference_run(workdir, **TRAIN)
  assert result.step == TRAIN["num_steps"]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5),
               jax.device_get(result.state.params), reference[0])
  resumed = [h["loss"] for h in result.history]
  np.testing.assert_allclose(resumed, reference[1][results[0]["step"]:], rtol=0, atol=1e-5)
