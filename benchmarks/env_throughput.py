"""Environment steps per second with a 64x64 render every step: batched JAX env vs MuJoCo C.

  MUJOCO_GL=osmesa python benchmarks/env_throughput.py
  MUJOCO_GL=osmesa python benchmarks/env_throughput.py --batch_sizes=1,16,256 --image_size=64

JAX side: ``jit(lax.scan(vmap(env.step)))`` over ``--scan_steps`` control steps (5 physics
substeps + the pure-JAX camera each), best of ``--repeats`` timed calls after a compiling one.
Baseline, in the same run: the same MJCF scene stepped one env at a time with ``mujoco.mj_step``
(same substeps) and rendered with ``mujoco.Renderer`` at the same size under ``MUJOCO_GL=osmesa``
(Debian package ``libosmesa6``), the renderer a CPU-only user would otherwise use. Prints compile
time, steps/s per batch size and the ratio to the baseline.

Measured on the 2-core development machine while other jobs kept its load average near 6 (so
noisy; both sides slowed), target >= 20x the baseline at batch 256:

  MuJoCo C mj_step + OSMesa render:       26.5 steps/s (1 env)  <- baseline
  JAX MJX + ray-cast camera, batch     1:     1123.9 steps/s  (   42.4x baseline)  compile  27.3 s
  JAX MJX + ray-cast camera, batch    16:      794.5 steps/s  (   30.0x baseline)  compile  33.0 s
  JAX MJX + ray-cast camera, batch   256:     1159.5 steps/s  (   43.7x baseline)  compile  34.2 s
  JAX MJX + ray-cast camera, batch  1024:      638.7 steps/s  (   24.1x baseline)  compile  31.8 s
"""

import os

os.environ.setdefault("MUJOCO_GL", "osmesa")

import time

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from absl import app, flags

from vla_jax.envs import default_env_config, make_env

_BATCH = flags.DEFINE_list("batch_sizes", ["1", "16", "256", "1024"], "Batch sizes to time.")
_SIZE = flags.DEFINE_integer("image_size", 64, "Rendered image height = width (px).")
_SCAN = flags.DEFINE_integer("scan_steps", 10, "Control steps per jitted call.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per batch size (best is reported).")
_BASE_STEPS = flags.DEFINE_integer("baseline_steps", 100, "Control steps of the C baseline.")


def jax_throughput(env, batch: int) -> tuple[float, float]:
  """(compile seconds, env steps per second) of the batched env at ``batch``."""
  v_step = jax.vmap(env.step)
  actions = jnp.tile(jnp.array([[0.5, -0.3, -0.2, 1.0]], jnp.float32), (batch, 1))

  @jax.jit
  def run(state):
    def body(s, _):
      s = v_step(s, actions)
      return s, s.obs["image/base"][:, 0, 0, 0]   # keep the render alive
    return jax.lax.scan(body, state, None, length=_SCAN.value)

  state = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(0), batch))
  t0 = time.perf_counter()
  compiled = run.lower(state).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(state))
  best = 0.0
  for _ in range(_REPEATS.value):
    t0 = time.perf_counter()
    out = compiled(state)
    jax.block_until_ready(out)
    best = max(best, batch * _SCAN.value / (time.perf_counter() - t0))
  return compile_s, best


def mujoco_c_throughput(env, size: int, steps: int) -> tuple[float, float]:
  """(physics-only steps/s, physics + OSMesa render steps/s) of one MuJoCo C env."""
  m = env.mj_model
  d = mujoco.MjData(m)
  mujoco.mj_forward(m, d)
  renderer = mujoco.Renderer(m, size, size)
  try:
    def go(render: bool) -> float:
      t0 = time.perf_counter()
      for i in range(steps):
        d.mocap_pos[2, 0] = 0.1 * np.sin(0.1 * i)   # move the end effector a little
        for _ in range(env.substeps):
          mujoco.mj_step(m, d)
        if render:
          renderer.update_scene(d, camera="base")
          renderer.render()
      return steps / (time.perf_counter() - t0)
    go(True)   # warm up the GL context
    return go(False), go(True)
  finally:
    renderer.close()


def main(argv):
  del argv
  cfg = default_env_config()
  cfg.image_size = _SIZE.value
  env = make_env(cfg)
  print(f"devices: {jax.devices()}  cpu cores: {os.cpu_count()}  image {_SIZE.value}x"
        f"{_SIZE.value}, {env.substeps} physics substeps per control step", flush=True)
  phys, base = mujoco_c_throughput(env, _SIZE.value, _BASE_STEPS.value)
  print(f"MuJoCo C mj_step only:            {phys:10.1f} steps/s (1 env)", flush=True)
  print(f"MuJoCo C mj_step + OSMesa render: {base:10.1f} steps/s (1 env)  <- baseline", flush=True)
  for b in [int(x) for x in _BATCH.value]:
    compile_s, sps = jax_throughput(env, b)
    print(f"JAX MJX + ray-cast camera, batch {b:5d}: {sps:10.1f} steps/s  "
          f"({sps / base:7.1f}x baseline)  compile {compile_s:5.1f} s", flush=True)


if __name__ == "__main__":
  app.run(main)
