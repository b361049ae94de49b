"""Rolls out the scripted experts and writes one GIF per task (all of its episodes in sequence).

  python experiments/render_rollouts.py --config=configs/env_tabletop.py --outdir=/tmp/rollouts

Prints the expert success per task and the path of each GIF. Each frame shows the camera images
side by side, upscaled by ``config.scale``; a short still of the final frame separates episodes.
"""

import os
import time

import imageio.v2 as imageio
import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from vla_jax import console
from vla_jax.envs import make_env, rollout

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/env_tabletop.py).")
_OUTDIR = flags.DEFINE_string("outdir", None, "Directory the GIFs are written into.")
flags.mark_flags_as_required(["config", "outdir"])


def episode_frames(traj, i: int, cameras: list[str], scale: int, hold: int = 5) -> list[np.ndarray]:
  """Frames of env ``i`` from a recorded trajectory (time-major), cameras side by side."""
  imgs = np.concatenate([np.asarray(traj["obs"][f"image/{c}"][:, i]) for c in cameras], axis=2)
  imgs = imgs.repeat(scale, axis=1).repeat(scale, axis=2)
  return list(imgs) + [imgs[-1]] * hold


def main(argv):
  console.configure()  # library INFO lines and progress bars only at --verbosity=1
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  env = make_env(config.env)
  if not env.camera_names:
    raise ValueError("render_rollouts: config.env.cameras is empty; name at least one camera")
  os.makedirs(_OUTDIR.value, exist_ok=True)
  task_ids = np.repeat(env.enabled_task_ids, config.episodes_per_task)
  print(f"[1/2] Rolling out {len(task_ids)} expert episodes ({config.episodes_per_task} per task,"
        f" horizon {env.horizon}, noise {config.noise_scale})", flush=True)
  run = rollout.make_seeded_rollout(env, rollout.make_rollout(
      env, rollout.expert_policy(env, config.noise_scale), privileged=True))
  t0 = time.time()
  final, traj = jax.device_get(run(config.seed + np.arange(len(task_ids)), task_ids))
  print(f"      done in {time.time() - t0:.1f} s (including compilation)", flush=True)
  print("[2/2] Writing GIFs", flush=True)
  success = np.asarray(final.success)
  for t in env.enabled_task_ids:
    name = env.task_names[int(t)]
    idx = np.nonzero(task_ids == t)[0]
    frames = [f for i in idx for f in episode_frames(traj, i, env.camera_names, config.scale)]
    path = os.path.join(_OUTDIR.value, f"{name}.gif")
    imageio.mimsave(path, frames, duration=1000 / env.control_hz, loop=0)
    texts = "; ".join(env.instructions[int(traj["instruction_id"][i])] for i in idx)
    print(f"  {name}: success {int(success[idx].sum())}/{len(idx)} -> {path}  ({texts})")


if __name__ == "__main__":
  app.run(main)
