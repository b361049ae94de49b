"""The MJX tabletop task suite and its expert-rollout videos.

``config.env`` is ``vla_jax.envs.default_env_config()`` with the argument's overrides (other
configs embed the same dict). Launch (writes one GIF per task under --outdir and prints the expert
success per task):

  python experiments/render_rollouts.py --config=configs/env_tabletop.py --outdir=/tmp/rollouts
  python experiments/render_rollouts.py \
      --config=configs/env_tabletop.py:tasks=push+lift,episodes=2,cameras=base+wrist,noise=0.1 \
      --config.env.randomize_colors=True --outdir=/tmp/rollouts

Expected: every task's expert succeeds on all episodes (>= 95% over many); about a minute on a
2-core CPU, most of it compilation.
"""

import ml_collections

from vla_jax.config_args import parse_arg
from vla_jax.envs import default_env_config


def get_config(arg=None):
  a = parse_arg(arg, tasks="reach,push,pick_place,lift", image_size=64, cameras="base",
                episodes=3, noise=0.0, seed=0, scale=4)
  config = ml_collections.ConfigDict()
  config.env = default_env_config()
  config.env.tasks = a.tasks
  config.env.image_size = a.image_size
  config.env.cameras = a.cameras
  config.episodes_per_task = a.episodes  # episodes per task in each video
  config.noise_scale = a.noise  # expert action noise (std, in action units)
  config.seed = a.seed
  config.scale = a.scale  # integer upscaling of the frames in the GIF (nearest neighbour)
  config.lock()
  return config
