"""Subprocess worker for the training tests (needs its own XLA device count / process / signals).

Usage: ``python tests/_training_worker.py '<json spec>'``; the spec's ``mode`` is one of
``sharding`` (8 simulated devices: losses per mesh + compile_check reports), ``multihost``
(one process of a ``jax.distributed`` run) or ``train`` (one run, optionally SIGKILL/SIGTERM-ing
itself when the batch of step ``kill_at`` / ``term_at`` is requested). ``spec.model`` names the
trained model of ``_training_toy.MODELS`` (default ``"mlp"``; compile_check always measures the
MLP). Results go to ``spec.out`` as JSON.
"""

import json
import os
import signal
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _losses(result):
  return [h["loss"] for h in result.history]


def _specs(state):
  """PartitionSpec (as text) of every param, to check that fsdp really splits arrays."""
  import jax
  return {jax.tree_util.keystr(p): str(x.sharding.spec)
          for p, x in jax.tree_util.tree_flatten_with_path(state.params)[0]}


def _status_bytes(field: str) -> int:
  """A memory field of /proc/self/status ("VmRSS", "VmHWM": the peak RSS) in bytes (Linux)."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024
  raise RuntimeError(f"no {field} line in /proc/self/status")


def _reset_peak_rss() -> None:
  """Resets this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0: clear_refs 5)."""
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")


def main(spec):
  if spec["mode"] == "multihost":
    from vla_jax.training import distributed
    distributed.initialize(spec["coordinator"], spec["num_processes"], spec["process_id"])
  import _training_toy as toy
  import jax

  from vla_jax.training import compile_check, trainer
  out = {"devices": jax.device_count(), "processes": jax.process_count()}
  model = spec.get("model", "mlp")
  if spec["mode"] == "sharding":
    for name, mesh in spec["meshes"].items():
      config = toy.make_config(model, mesh=mesh, **spec["train"])
      result = trainer.train(config, os.path.join(spec["workdir"], name),
                             model=toy.make_model(model),
                             make_data_iterator=toy.make_data_iterator())
      out[name] = {"losses": _losses(result), "specs": _specs(result.state)}
    for name, mesh in spec["compile_meshes"].items():
      config = toy.make_config(mesh=mesh, **spec["train"])
      batch = toy.global_batch(0, config.train.batch_size)
      out["compile_" + name] = compile_check.compile_check(
          toy.ToyModel(hidden=spec["compile_hidden"]), batch, config.train)
    # A 1.07B-param model: its train state (~12.9 GB in f32 with AdamW) must never be allocated.
    _reset_peak_rss()  # The peak below is then this check's alone.
    out["rss_before_big_bytes"] = _status_bytes("VmRSS")
    config = toy.make_config(mesh={"data": 1, "fsdp": 8}, **spec["train"])
    out["compile_big"] = compile_check.compile_check(
        toy.ToyModel(hidden=32768), compile_check.batch_spec(
            8, image_size=toy.IMG, history=toy.T, state_dim=toy.S, text_len=toy.L,
            horizon=toy.H, action_dim=toy.D), config.train)
    out["peak_rss_big_bytes"] = _status_bytes("VmHWM")
  else:
    def on_batch(step):
      if step == spec.get("kill_at"):
        os.kill(os.getpid(), signal.SIGKILL)
      if step == spec.get("term_at"):
        os.kill(os.getpid(), signal.SIGTERM)
      if spec.get("term_at") is not None and step > spec["term_at"]:
        # Slow steps after the notice: JAX's multi-process preemption sync (an RPC round through
        # the coordinator) would otherwise lose the race against the toy's millisecond steps.
        time.sleep(spec.get("sleep_after_term", 0.0))
    config = toy.make_config(model, mesh=spec.get("mesh"), **spec["train"])
    result = trainer.train(config, spec["workdir"], model=toy.make_model(model),
                           make_data_iterator=toy.make_data_iterator(on_batch=on_batch))
    out.update(losses=_losses(result), step=result.step, preempted=result.preempted)
  with open(spec["out"], "w") as f:
    json.dump(out, f)


if __name__ == "__main__":
  main(json.loads(sys.argv[1]))
