"""Exact resume: SIGKILL after a checkpoint, or SIGTERM (save and exit), then restart.

The killed runs are subprocesses; the restarts and the uninterrupted reference run in this process.
Both end with bit-identical params, which needs a deterministic data order (``start_step``) and
per-step rngs ``fold_in(base, step)``.
"""

import glob
import json
import os

import _training_toy as toy
import jax
import numpy as np
import pytest

from vla_jax.training import trainer

TRAIN = {"num_steps": 6, "checkpoint_every": 2, "log_every": 2}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("ref"))
  result = toy.reference_run(workdir, **TRAIN)
  return jax.device_get(result.state.params), [h["loss"] for h in result.history], workdir


def _steps(workdir):
  return sorted(int(os.path.basename(p)) for p in glob.glob(f"{workdir}/checkpoints/*"))


def _resume_and_compare(workdir, reference):
  result = toy.reference_run(workdir, **TRAIN)
  assert result.step == 6 and not result.preempted
  ref_params, ref_losses, _ = reference
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(result.state.params), ref_params)
  # The resumed run logs the last intervals with the same losses as the uninterrupted one.
  np.testing.assert_array_equal([h["loss"] for h in result.history],
                                ref_losses[-len(result.history):])


@pytest.mark.parametrize("signal_name", ["kill_at", "term_at"])
def test_interrupted_run_resumes_exactly(tmp_path, reference, signal_name):
  workdir = str(tmp_path / "run")
  # The batch of step index 3 is requested after the step-2 checkpoint, mid-way between saves.
  spec = {"mode": "train", "workdir": workdir, "out": str(tmp_path / "out.json"), "train": TRAIN,
          "mesh": {"data": 1, "fsdp": 1}, signal_name: 3}
  code, out = toy.finish_worker(toy.start_worker(spec))
  if signal_name == "kill_at":
    assert code == -9, out
    assert _steps(workdir) == [2]
  else:
    # SIGTERM: the step in flight finishes, a checkpoint is saved, and the process exits cleanly.
    assert code == 0, out
    assert "SIGTERM: saved checkpoint at step 4" in out
    with open(spec["out"]) as f:
      res = json.load(f)
    assert res["preempted"] and res["step"] == 4
    assert _steps(workdir) == [2, 4]
  _resume_and_compare(workdir, reference)


def test_resume_at_the_end_is_a_no_op(reference):
  again = toy.reference_run(reference[2], **TRAIN)
  assert again.step == 6 and again.history == []
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(again.state.params), reference[0])
  assert isinstance(again, trainer.TrainResult)
