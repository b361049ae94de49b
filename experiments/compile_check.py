"""Lowers and compiles ONE train step of a big VLA on a device mesh, allocating nothing.

  python experiments/compile_check.py --config=configs/vla_paligemma_3b.py:head=flow

Builds the policy of ``config.policy`` with ``jax.eval_shape`` parameters, the ``data x fsdp``
mesh of ``config.train.mesh``, a batch-contract example batch of ``ShapeDtypeStruct``s
(``config.train.batch_size`` rows, image size / cameras / history / text length / horizon from
``config.data``, action and state dims from ``config.compile_check``), lowers and compiles the
real train step (``vla_jax.training.compile_check``) and prints the parameter count (backbone and
head), the per-device memory from XLA's compiled memory analysis (state, arguments, temporaries,
peak) and the compile time.

Devices. Unless the user set ``XLA_FLAGS`` or asked for an accelerator (``JAX_PLATFORMS`` set to
anything but ``cpu``), this program sets ``JAX_PLATFORMS=cpu`` and
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before importing jax, so the default
8-device mesh (data=1, fsdp=8) is simulated on the host CPU. For another device count set
``XLA_FLAGS`` yourself; to compile for real chips run with e.g. ``JAX_PLATFORMS=tpu`` (or
``cuda``) and a mesh that matches them (``--config=...:data=1,fsdp=4``).

Measured (2 CPU cores shared with other jobs, 8 simulated CPU devices, data=1 x fsdp=8, head=flow,
batch 8 at 224 px, f32 params + AdamW, 1.3 GiB host RSS):

  [policy] head=flow backbone=paligemma_3b: 3.238B params = backbone 2.923B + head 314.6M
  [memory per device] state 4.524 GiB | arguments 4.524 GiB | outputs 4.524 GiB | temporaries
    3.016 GiB | donated aliases 4.524 GiB | peak 7.539 GiB
  [done] 3.238B params compiled in 53.4 s (lower + compile) on 8 cpu devices

The state agrees with the count: 3.238B x 12 bytes (params, AdamW mu and nu in f32) / 8 devices
= 4.52 GiB; the donated state aliases the outputs, so the peak is state + temporaries.
"""

import os

FORCED_HOST_DEVICES = 8  # the default mesh of configs/vla_paligemma_3b.py: data=1 x fsdp=8

# Must run before jax is imported: XLA reads the flag when it creates the CPU client.
if "XLA_FLAGS" not in os.environ and os.environ.get("JAX_PLATFORMS", "") in ("", "cpu"):
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={FORCED_HOST_DEVICES}"

import time

import jax
import numpy as np
from absl import app
from ml_collections import config_flags

from vla_jax import console
from vla_jax.models import policy as policy_lib
from vla_jax.training import compile_check as check_lib
from vla_jax.training import mesh as mesh_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/vla_paligemma_3b.py", "Experiment config (configs/vla_paligemma_3b.py).")

# Extra Gemma experts' weights in the LM ("mlp_1", "q_einsum_1"; the ViT's "Dense_0" are not).


def _fmt(num_bytes: int) -> str:
  return f"{num_bytes / 2**30:.3f} GiB"


def main(argv):
  console.configure()  # library INFO lines and progress bars only at --verbosity=1
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  devices = jax.devices()
  print(f"[devices] {len(devices)} x {devices[0].platform} ({devices[0].device_kind}); "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}", flush=True)
  want = dict(config.train.mesh)
  try:
    mesh = mesh_lib.make_mesh(config.train.mesh)
  except ValueError as e:
    raise ValueError(f"{e}. On CPU, simulate the devices with "
                     "XLA_FLAGS=--xla_force_host_platform_device_count=<data*fsdp> "
                     f"(config train.mesh={want})") from e

  dims = config.compile_check
  policy = policy_lib.make_policy(
      config.policy, action_dim=dims.action_dim, action_horizon=config.data.horizon,
      state_dim=dims.state_dim, text_vocab_size=config.text_vocab_size)
  batch = check_lib.batch_spec(
      config.train.batch_size, image_size=config.data.image_size,
      cameras=tuple(config.data.cameras), history=config.data.window, state_dim=dims.state_dim,
      text_len=config.data.max_text_len, horizon=config.data.horizon,
      action_dim=dims.action_dim)
  params = jax.eval_shape(policy.init, jax.random.key(config.train.seed), batch)
  backbone, head = policy_lib.param_split(params)
  print(f"[policy] head={config.policy.head} backbone={config.policy.backbone.variant}: "
        f"{(backbone + head) / 1e9:.3f}B params = backbone {backbone / 1e9:.3f}B + head "
        f"{head / 1e6:.1f}M", flush=True)
  print(f"[batch] {config.train.batch_size} rows: " + ", ".join(
      f"{k} {tuple(v.shape)} {np.dtype(v.dtype).name}" for k, v in batch.items()), flush=True)

  print(f"[compile] lowering and compiling the train step on mesh {dict(mesh.shape)} ...",
        flush=True)
  t0 = time.perf_counter()
  report = check_lib.compile_check(policy, batch, config.train, mesh=mesh)
  seconds = time.perf_counter() - t0
  print(f"[memory per device] state {_fmt(report['state_bytes_per_device'])} | arguments "
        f"{_fmt(report['argument_bytes'])} | outputs {_fmt(report['output_bytes'])} | "
        f"temporaries {_fmt(report['temp_bytes'])} | donated aliases "
        f"{_fmt(report['alias_bytes'])} | peak {_fmt(report['peak_bytes'])}", flush=True)
  print(f"[done] {report['num_params'] / 1e9:.3f}B params compiled in {seconds:.1f} s "
        f"(lower + compile) on {len(devices)} {devices[0].platform} devices", flush=True)


if __name__ == "__main__":
  app.run(main)
