"""RL fine-tuning of the main job's policy in batched MJX (GRPO with Flow-Noise by default).

  python experiments/train.py --config=configs/vla_tiny.py --workdir=workdirs/vla_tiny  # first
  python experiments/finetune_rl.py --config=configs/rl_tiny.py --workdir=workdirs/rl_tiny
  python experiments/finetune_rl.py --config=configs/rl_tiny.py:iterations=5,eval_episodes=4 \\
      --workdir=/tmp/rl_smoke

Args (``:key=value,...``): algorithm (grpo | ppo | exit: expert iteration, the policy imitating
its own episodes steered by the MJX oracle's best-of-N search), init_workdir (workdirs/vla_tiny),
iterations (300), groups (start states per iteration; -1 = the algorithm's: GRPO 8, exit 64),
group_size (G; -1: GRPO 8, exit 1), likelihood (exact | fpo), reward (success | dense), tasks
(push+pick_place: "+"-separated task families RL trains on, "" = all), eval_episodes
(before/after, per task: 100), eval_block (test; dev for tuning runs), lr (1e-4), train (expert:
the VLM is frozen but its action expert; all: needed by token heads without one,
``policy.ar.expert`` / ``policy.discrete_diffusion.expert`` False), replan (control steps
between decisions during RL; -1: GRPO 4 = whole chunks, exit 0 = the evaluation's), scored
(flow: the likelihood scores the chunk's first this many actions; 0 = all H), updates (optimizer
steps per iteration, 4); exit only: candidates (N, 8), search_steps (flow Euler steps of the
candidates, 0 = evaluation's), demo_weight (weight of the starting run's demonstrations in every
update, 0 = none). vla_jax/rl/config.py lists every RL key and the published values they start
from.

Writes ``<workdir>/report_rl.md``: success per task before and after on the ``test`` block
with 95% intervals, curves against env steps and wall-clock, throughput, videos.
Expected (2026-12-07, 2-core CPU machine, idle; defaults chosen on ``dev``): from the main
job's 83.5% [79.5, 86.8] to 87.2% [83.6, 90.2] on the ``test`` block (n = 400; push 55 -> 68,
pick_place 82 -> 81, lift 97 -> 100, reach 100): push gains, the mean's gain is inside the
intervals; 21.5 min in all (~3.6 s per iteration). History: docs/experiments/rl_tiny.md.
"""

import ml_collections

from vla_jax import config_args
from vla_jax.models import policy as policy_lib
from vla_jax.rl import config as rl_config_lib
from vla_jax.training import config as train_config_lib


def get_config(arg=None):
  a = config_args.parse_arg(arg, algorithm="grpo", init_workdir="workdirs/vla_tiny",
                            iterations=300, groups=-1, group_size=-1, likelihood="exact",
                            reward="success", tasks="push+pick_place", eval_episodes=100,
                            eval_block="test", lr=1e-4, train="expert", replan=-1, scored=0,
                            candidates=8, updates=4, search_steps=0,
                            demo_weight=0.0)
  if a.algorithm not in rl_config_lib.ALGORITHMS:
    raise ValueError(f"rl_tiny: algorithm='{a.algorithm}' not in {rl_config_lib.ALGORITHMS}")
  exit_ = a.algorithm == "exit"
  # -1: the algorithm's default. GRPO: 8 start states x G = 8, whole chunks. Expert iteration:
  # 64 distinct start states, replanning as evaluation does (its targets are what evaluation
  # executes).
  groups = a.groups if a.groups > 0 else (64 if exit_ else 8)
  group_size = a.group_size if a.group_size > 0 else (1 if exit_ else 8)
  replan = a.replan if a.replan >= 0 else (0 if exit_ else 4)
  c = ml_collections.ConfigDict()
  c.init_workdir = a.init_workdir
  c.init_step = 0  # 0 = the latest checkpoint of init_workdir

  c.rl = rl_config_lib.default_rl_config()
  c.rl.algorithm = a.algorithm
  c.rl.exit_candidates = a.candidates
  c.rl.exit_demo_weight = a.demo_weight  # exit: demonstrations mixed into each update
  if a.search_steps:  # Flow: Euler steps of the search's candidates (0 = evaluation's).
    c.rl.exit_sample_options.num_steps = a.search_steps
  c.rl.likelihood = a.likelihood
  c.rl.reward = a.reward
  # Reach and lift succeed in ~all rollouts (dynamic sampling drops those groups): RL spends
  # its episodes where the policy fails (dev: reach 100, lift 96, push 51, pick_place 84).
  c.rl.tasks = a.tasks  # "+"-separated, as env.tasks
  # Whole chunks: with receding-horizon execution only the first of each chunk's H actions
  # reaches the env, but the likelihood scores all H (docs/experiments/rl_tiny.md, run C).
  c.rl.replan_every = replan
  c.rl.num_groups = groups
  c.rl.group_size = group_size
  # Flow-Noise: 0.2 std per Euler step in normalized action units (x_0 keeps the head's own
  # temperature, as in evaluation). The likelihood credits only this step noise (see
  # vla_jax/rl/config.py), so it must be a real share of the action spread; ReinFlow and piRL
  # learn it instead (a possible extension).
  c.rl.sample_options.flow.noise_std = 0.2
  if a.scored:  # Score only the chunk's first `scored` actions (FlowHead.log_prob).
    c.rl.sample_options.flow.scored_actions = a.scored
  # 4 optimizer steps on each batch of rollouts. Learning rate 1e-4 on the action expert: at
  # 3e-4 on every param the rollout success fell from 0.95 to ~0.6 within 20 iterations;
  # 3e-5 on every param moved it little in 100 (docs/experiments/rl_tiny.md, runs 1-2).
  c.rl.updates_per_iteration = a.updates

  c.train = train_config_lib.default_train_config()
  c.train.num_steps = a.iterations  # one step = one RL iteration (rollouts + updates)
  c.train.batch_size = groups * group_size  # envs per iteration
  c.train.learning_rate = a.lr
  c.train.warmup_steps = 0
  c.train.end_lr_fraction = 1.0  # constant learning rate
  c.train.weight_decay = 0.0  # do not pull the imitation weights toward 0
  c.train.ema_decay = 0.0
  if a.train not in ("all", "expert"):
    raise ValueError(f"rl_tiny: train='{a.train}' must be 'all' or 'expert'")
  # "expert": only the action expert and the small projections train, the VLM stays frozen
  # (its backward pass, most of an update's cost, is skipped: ~4-5 s per iteration, not 15).
  c.train.trainable = policy_lib.FREEZE_BACKBONE if a.train == "expert" else ".*"
  c.train.log_every = 1
  c.train.checkpoint_every = 10

  c.eval = ml_collections.ConfigDict({
      "num_episodes_per_task": a.eval_episodes,  # before and after, test block
      "video_episodes": 1,
      "block": a.eval_block,  # "dev" for tuning runs; the reported figure is test's
  })
  return c
