"""Subprocess worker for tests/test_rl_training.py (its own XLA device count / process / signal).

Usage: ``python tests/_rl_worker.py '<json spec>'``. The spec holds ``workdir``, ``out`` (the
final params as ``.npz``, keyed by ``transfer.named_leaves`` names), ``cache_dir`` (JAX's
persistent compilation cache, shared with the test process so each program compiles once),
``rl`` and ``train`` (overrides of ``_rl_toy.rl_config`` / ``train_config``), optional ``mesh``
and ``kill_at`` (SIGKILL itself when the batch of that step is requested). With a mesh, the
PartitionSpec of every param goes to ``out + ".specs.json"``.
"""

import json
import os
import signal
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(spec):
  import jax
  jax.config.update("jax_compilation_cache_dir", spec["cache_dir"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  import _rl_toy
  import numpy as np

  from vla_jax.training import mesh as mesh_lib
  from vla_jax.training import transfer

  def on_batch(step):
    if step == spec.get("kill_at"):
      os.kill(os.getpid(), signal.SIGKILL)

  mesh = mesh_lib.make_mesh(spec["mesh"], jax.devices()) if spec.get("mesh") else None
  result = _rl_toy.run(spec["workdir"], rl=_rl_toy.rl_config(**spec["rl"]), mesh=mesh,
                       on_batch=on_batch, **spec["train"])
  params = jax.device_get(result.state.params)
  np.savez(spec["out"], **{k: np.asarray(v) for k, v in transfer.named_leaves(params).items()})
  specs = {k: str(v.sharding.spec) for k, v in transfer.named_leaves(result.state.params).items()}
  with open(spec["out"] + ".specs.json", "w") as f:
    json.dump({"devices": jax.device_count(), "specs": specs}, f)


if __name__ == "__main__":
  main(json.loads(sys.argv[1]))
