"""Exact resume: SIGKILL after a checkpoint, or SIGTERM (save and exit), then restart.

The killed runs are subprocesses; the restarts and the uninterrupted reference run in this process.
Both end with bit-identical params, which needs a deterministic data order (``start_step``) and
per-step rngs ``fold_in(base, step)``; restarting the finished run is a no-op. SIGKILL runs on
the real flow policy at micro sizes (``_training_toy``: ViT, Gemma attention with the action
expert, prefix KV cache; its orbax checkpoint holds all of those arrays and their AdamW moments);
SIGTERM, a property of the loop alone, on the MLP toy.
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


def _steps(workdir):
  return sorted(int(os.path.basename(p)) for p in glob.glob(f"{workdir}/checkpoints/*"))


@pytest.mark.parametrize("model, signal_name", [("policy", "kill_at"), ("mlp", "term_at")])
def test_interrupted_run_resumes_exactly(tmp_path, model, signal_name):
  """Each case makes its own uninterrupted reference, so pytest-xdist may place the two cases on
  different workers without repeating a policy run."""
  workdir = str(tmp_path / "run")
  # The batch of step index 3 is requested after the step-2 checkpoint, mid-way between saves.
  spec = {"mode": "train", "workdir": workdir, "out": str(tmp_path / "out.json"), "train": TRAIN,
          "mesh": {"data": 1, "fsdp": 1}, "model": model, signal_name: 3}
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

  reference = toy.reference_run(str(tmp_path / "reference"), model, **TRAIN)
  ref_params = jax.device_get(reference.state.params)
  result = toy.reference_run(workdir, model, **TRAIN)
  assert isinstance(result, trainer.TrainResult)
  assert result.step == 6 and not result.preempted
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(result.state.params), ref_params)
  # The resumed run logs the last intervals with the same losses as the uninterrupted one.
  np.testing.assert_array_equal([h["loss"] for h in result.history],
                                [h["loss"] for h in reference.history][-len(result.history):])

  again = toy.reference_run(workdir, model, **TRAIN)  # Resuming a finished run: a no-op.
  assert again.step == 6 and again.history == []
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(again.state.params), ref_params)
