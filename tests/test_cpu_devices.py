"""train.cpu_devices: the host CPU split into single-threaded XLA devices before JAX starts.

Each case runs in a fresh subprocess: the CPU device count is fixed once JAX initializes.
"""

import json
import os
import subprocess
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str, xla_flags: str | None = None) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=_ROOT)
  env.pop("XLA_FLAGS", None)
  if xla_flags:
    env["XLA_FLAGS"] = xla_flags
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        check=False, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


_PRELUDE = """
import json, os
from vla_jax.training import mesh
"""


def test_two_devices_with_single_threaded_matmuls_and_a_clear_error_on_a_late_change():
  out = _run(_PRELUDE + """
n = mesh.configure_cpu_devices(2)
import jax, jax.numpy as jnp
x = jax.device_put(jnp.arange(8.0), jax.sharding.NamedSharding(
    mesh.make_mesh({"data": -1, "fsdp": 1}), jax.sharding.PartitionSpec("data")))
same = mesh.configure_cpu_devices(2)   # already applied: fine
try:
  mesh.configure_cpu_devices(3)
  late = "no error"
except RuntimeError as e:
  late = str(e)
print(json.dumps({"n": n, "same": same, "devices": len(jax.devices()), "sum": float(x.sum()),
                  "shards": len(x.addressable_shards), "flags": os.environ["XLA_FLAGS"],
                  "late": late}))
""")
  assert out["n"] == out["same"] == out["devices"] == out["shards"] == 2
  assert out["sum"] == 28.0
  assert "--xla_cpu_multi_thread_eigen=false" in out["flags"]
  assert "train.cpu_devices=3" in out["late"] and "2 CPU device" in out["late"]


def test_one_per_core_divides_the_batch_and_zero_leaves_xla_alone():
  out = _run(_PRELUDE + """
cores = len(os.sched_getaffinity(0))
n = mesh.configure_cpu_devices(-1, batch_size=7 * cores - 1 if cores > 1 else 1)
import jax
print(json.dumps({"n": n, "cores": cores, "devices": len(jax.devices())}))
""")
  want = out["cores"]
  batch = 7 * want - 1 if want > 1 else 1
  while batch % want:
    want -= 1
  assert out["n"] == out["devices"] == want
  assert _run(_PRELUDE + """
n = mesh.configure_cpu_devices(0)
import jax
print(json.dumps({"n": n, "devices": len(jax.devices()), "flags": os.environ.get("XLA_FLAGS")}))
""") == {"n": 0, "devices": 1, "flags": None}


def test_a_device_count_forced_in_xla_flags_wins():
  out = _run(_PRELUDE + """
n = mesh.configure_cpu_devices(2)
import jax
print(json.dumps({"n": n, "devices": len(jax.devices())}))
""", xla_flags="--xla_force_host_platform_device_count=3")
  assert out == {"n": 0, "devices": 3}


def test_a_negative_count_is_rejected():
  from vla_jax.training import mesh  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="train.cpu_devices=-2"):
    mesh.configure_cpu_devices(-2)
