"""Collect scripted-expert demonstrations of the MJX task suite into the RLDS dataset.

Launch (from the repository root):

  python experiments/collect_demos.py --config=configs/collect_demos.py --data_dir=workdirs/tfds

Small run / other settings:

  python experiments/collect_demos.py \
      --config=configs/collect_demos.py:train_episodes=64,val_episodes=16,batch_envs=32 \
      --config.collect.env.horizon=30 --data_dir=/tmp/tfds

Writes ``<data_dir>/tabletop_demos/1.0.0`` (train + validation splits, tfrecord; the version dir
is what ``config.data.datasets.tabletop_demos.path`` of a training config points at). Episodes
are drawn with a fixed seed per split, so the same config gives the same dataset. Expected with
the defaults on a 2-core CPU: see the figures in the report of the data pipeline (under 10 min).

Args (``configs/collect_demos.py:key=value,...``): train_episodes, val_episodes, seed,
batch_envs, noise, steps_after_success, keep_failures, tasks, image_size, overwrite.
"""

import ml_collections

from vla_jax import config_args
from vla_jax.data import collect


def get_config(arg=None):
  a = config_args.parse_arg(arg, train_episodes=1200, val_episodes=80, seed=0, batch_envs=200,
                            noise=0.1, steps_after_success=5, keep_failures=False,
                            tasks="reach,push,pick_place,lift", image_size=64, overwrite=False)
  c = ml_collections.ConfigDict()
  c.collect = collect.default_collect_config()
  c.collect.num_train_episodes = a.train_episodes  # tasks drawn uniformly: ~1/4 each
  c.collect.num_validation_episodes = a.val_episodes
  c.collect.seed = a.seed
  c.collect.batch_envs = a.batch_envs  # episodes simulated at once
  c.collect.noise_scale = a.noise  # expert action noise
  c.collect.steps_after_success = a.steps_after_success
  c.collect.keep_failures = a.keep_failures
  c.collect.env.tasks = a.tasks
  c.collect.env.image_size = a.image_size  # stored at the env's render size
  c.overwrite = a.overwrite  # rebuild even if the dataset exists
  return c
