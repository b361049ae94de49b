"""The latent world model of the tabletop suite, trained on MJX episodes (demos and failures).

  python experiments/train_world_model.py --config=configs/wm_tiny.py --workdir=workdirs/wm_tiny
  python experiments/train_world_model.py --config=configs/wm_tiny.py:steps=50,episodes=64 \\
      --workdir=/tmp/wm_smoke

Args (``:key=value,...``): steps (training steps), batch (windows per step), window (K, control
steps per training window), episodes (train episodes per noise scale), noise ("+"-separated
expert action-noise scales, one dataset each; the large ones make the expert fail), policies
("+"-separated WORKDIR or WORKDIR@STEP of trained policies whose own rollouts, failures
included, are a dataset each; "none" = experts only), lr, latent (latent size), data_dir (where
the RLDS datasets are cached; "" = <workdir>/tfds).

The default trains on the main job's policy at steps 2000 and 6000 too: run the main job first
(``experiments/train.py --config=configs/vla_tiny.py --workdir=workdirs/vla_tiny``).

Writes ``<workdir>/report_wm.md``: the data, the training curve, open-loop prediction error
against horizon on validation episodes next to the no-change baseline, final-success agreement,
and GIFs of imagined next to true MJX rollouts. ``vla_jax.world_model.env.WorldModelEnv`` runs a
policy in the trained model through the usual rollout and evaluator.
Expected (2026-12-08, run P, 2-core CPU shared with tests): 30.5 min in all (expert data cached;
the policy's 2 x 424 episodes 6 min; training 3000 steps at 1.7-2.8 steps/s; idle, run B's
training took 19 min); open loop on 120 validation episodes, end-effector error 1.1 / 1.7 / 5.0
cm at 1 / 8 / 49 imagined steps (not moving: 4.3 / 17.0 / 19.1 cm), final success imagined right
in 93.3%. The moving gripper is painted blurred, with a ghost at its start position. As a
closed-loop evaluator of 12 policies it fails: Pearson r -0.56 (experiments/evaluate_world_model.py).
History: docs/experiments/world_model.md.
"""

import ml_collections

from vla_jax import config_args
from vla_jax.envs import tabletop
from vla_jax.jobs import wm_job
from vla_jax.training import config as train_config_lib
from vla_jax.world_model import model as model_lib


def get_config(arg=None):
  a = config_args.parse_arg(arg, steps=3000, batch=32, window=8, episodes=400,
                            noise="0.1+0.5+1.0",
                            policies=wm_job.DEFAULT_POLICIES, lr=1e-3, latent=256, data_dir="")
  c = ml_collections.ConfigDict()
  c.env = tabletop.default_env_config()
  c.camera = "base"
  c.data = wm_job.default_data_config(a.noise, a.policies, a.episodes, a.data_dir)
  c.world_model = model_lib.default_model_config()
  c.world_model.window = a.window
  c.world_model.latent_dim = a.latent
  c.train = train_config_lib.default_train_config()
  c.train.num_steps = a.steps
  c.train.batch_size = a.batch
  c.train.learning_rate = a.lr
  c.train.warmup_steps = 100
  c.train.end_lr_fraction = 0.1
  c.train.log_every = 100
  c.train.checkpoint_every = 1000
  c.report = ml_collections.ConfigDict({"horizon": 49, "videos": 4})
  return c
