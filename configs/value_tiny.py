"""The chunk value of the main job's policy (V-GPS-style steering scorer), on the world model's data.

  python experiments/train_value.py --config=configs/value_tiny.py --workdir=workdirs/value_tiny
  python experiments/steer.py --workdir=workdirs/vla_tiny --scorers=value \\
      --value=workdirs/value_tiny --block=dev

Needs the main job's checkpoint. The episodes are the world model's (configs/wm_tiny.py's data
section, the same cache: pass the same data_dir to share it).

Args (``:key=value,...``): init_workdir, lookahead (steps of reward the value predicts; the
steering scorers' lookahead, at most the chunk length 4), steps, lr, hidden, episodes,
noise, policies, data_dir (as in configs/wm_tiny.py).

Writes ``<workdir>/report_value.md`` (validation error against predicting the mean, Spearman
rho). Currently (2026-12-08, the world model's run-P data, 2 CPU cores): validation R^2 0.870,
Spearman rho 0.856 (3518 examples) in 2.0 min. History: docs/experiments/value.md.
"""

import ml_collections

from vla_jax import config_args
from vla_jax.envs import tabletop
from vla_jax.jobs import wm_job
from vla_jax.training import config as train_config_lib


def get_config(arg=None):
  a = config_args.parse_arg(arg, init_workdir="workdirs/vla_tiny", lookahead=4, steps=3000,
                            lr=1e-3, hidden=256, episodes=400, noise="0.1+0.5+1.0",
                            policies=wm_job.DEFAULT_POLICIES, data_dir="")
  c = ml_collections.ConfigDict()
  c.init_workdir = a.init_workdir
  c.init_step = 0  # 0 = the latest checkpoint
  c.env = tabletop.default_env_config()  # must be the policy's (checked)
  c.camera = "base"
  c.data = wm_job.default_data_config(a.noise, a.policies, a.episodes, a.data_dir)
  c.value = ml_collections.ConfigDict({"lookahead": a.lookahead, "hidden": a.hidden})
  c.train = train_config_lib.default_train_config()
  c.train.num_steps = a.steps
  c.train.batch_size = 256
  c.train.learning_rate = a.lr
  c.train.warmup_steps = 100
  c.train.end_lr_fraction = 0.1
  c.train.log_every = 250
  c.train.checkpoint_every = 1000
  return c
