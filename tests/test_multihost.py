"""Two real processes on localhost (jax.distributed + gloo CPU collectives) match one process.

Each process has 2 simulated CPU devices and reads only its own rows of every global batch; the
4-device mesh is data=2 x fsdp=2.
"""

import json
import socket

import _training_toy as toy
import numpy as np
import pytest

TRAIN = {"num_steps": 5, "log_every": 1, "checkpoint_every": 0}


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("multihost")
  coordinator = f"localhost:{_free_port()}"
  procs = [toy.start_worker({"mode": "multihost", "coordinator": coordinator,
                             "num_processes": 2, "process_id": i, "workdir": str(tmp / "run"),
                             "out": str(tmp / f"out{i}.json"), "train": TRAIN,
                             "mesh": {"data": 2, "fsdp": 2}}, num_devices=2) for i in range(2)]
  results = []
  for i, proc in enumerate(procs):
    code, out = toy.finish_worker(proc)
    assert code == 0, f"process {i}:\n{out}"
    with open(tmp / f"out{i}.json") as f:
      results.append(json.load(f))
  return results


def test_two_process_losses_match_single_process(two_processes, tmp_path):
  reference = [h["loss"] for h in toy.reference_run(str(tmp_path), **TRAIN).history]
  for res in two_processes:
    assert res["processes"] == 2 and res["devices"] == 4
    np.testing.assert_allclose(res["losses"], reference, rtol=0, atol=1e-5)
