"""Env steps per second of the whole RL loop (rollouts + GRPO update) against its parts.

From the repository root:

  PYTHONPATH=. python benchmarks/rl_throughput.py
  PYTHONPATH=. python benchmarks/rl_throughput.py --envs=64,256,1024 --steps=50 --repeats=3
  PYTHONPATH=. python benchmarks/rl_throughput.py --envs=8 --steps=2 --repeats=1  # quick check

The policy is the main job's (``--config=configs/vla_tiny.py``: flow head on the conv-stem tiny
backbone, 64 px images of the default tabletop env) with random init, identity normalization
statistics and a text tokenizer fitted on the env's instructions; the RL settings are the RL
job's (``--rl_config=configs/rl_tiny.py``: ``vla_jax.rl.config.default_rl_config``, G = 8, so
``num_groups = envs / 8``). The env is the main job's with the RL job's ``done_on_success`` and
a horizon of ``--steps`` (default 50, the env's). Per number of envs, three jitted programs,
each timed as the fastest of ``--repeats`` calls after a compiling warm-up call
(``block_until_ready``), every one starting with the reset from seeds:

1. whole loop: the jitted RL step the train loop runs (``RLStepBuilder(...)(...)`` on a real
   ``TrainState`` from ``trainer.initial_train_state``): rollouts with the stochastic sampler
   (Flow-Noise), group advantages, ``rl.updates_per_iteration`` optimizer steps;
2. policy rollout: ``builder.collect`` alone (simulation + sampling, recording the decisions);
3. simulation alone: the same env rollout with a policy that costs nothing (zero actions).

Env steps are counted as ``envs x steps`` for all three (frozen envs are still computed). The
time of one RL iteration is split into simulation (3), sampling ((2) - (3)) and update
((1) - (2)); target: the update takes at most half of the loop's time at 256 envs. A random
policy rarely succeeds, so dynamic sampling keeps no group and the update leaves the params
unchanged, but it computes the same gradients either way (the keep mask only weights them).

Prints one line per number of envs: env steps/s of (1), (2) and (3), (1)/(2), the iteration's
split, the update's share and the compile + first-call seconds of (1) / (2) / (3). The quick
check takes about 3 minutes on 2 CPU cores, nearly all of it compilation.

Measured (2026-12-07, idle 2-core CPU machine, ``--envs=64,256,1024 --steps=50 --repeats=1``,
rl_tiny's defaults: the action expert trains, the VLM is frozen; a decision every 4 steps):

  envs 64: whole loop 831.3 env steps/s | policy rollout 1291.0 | sim alone 1263.4 |
    whole/rollout 0.64x | iteration 3.849 s = sim 2.533 + sampling -0.054 + update 1.371 s |
    update 35.6% of the loop
  envs 256: whole loop 1049.7 env steps/s | policy rollout 1126.9 | sim alone 1155.9 |
    whole/rollout 0.93x | iteration 12.194 s = sim 11.074 + sampling 0.285 + update 0.835 s |
    update 6.8% of the loop (target <= 50% at 256 envs: met)
  envs 1024: whole loop 947.3 env steps/s | policy rollout 986.9 | sim alone 1223.6 |
    whole/rollout 0.96x | iteration 54.048 s = sim 41.844 + sampling 10.034 + update 2.170 s |
    update 4.0% of the loop

With one call per program the split is noisy at 64 envs (a negative sampling time: the policy
rollout measured faster than the zero-action one). The simulation is now the cost: MJX on 2 CPU
cores saturates at ~1200 env steps/s from 64 envs on. With the previous defaults (every param
trains, a decision at every step; 2026-12-06) the update was 11.2 s at 64 envs (73.8%) and 10.7 s
at 256 (44.0%): the backward pass through the VLM was most of it.
"""

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from vla_jax.envs import rollout as rollout_lib
from vla_jax.envs import tabletop
from vla_jax.jobs import main_job
from vla_jax.rl import collect
from vla_jax.rl import config as rl_config_lib
from vla_jax.rl import step as rl_step
from vla_jax.tokenizers import text
from vla_jax.training import global_batch, optimizer, trainer, transfer
from vla_jax.training import mesh as mesh_lib

_CONFIG = config_flags.DEFINE_config_file("config", "configs/vla_tiny.py",
                                          "Main-job config: policy, env (collect.env), data.")
_RL_CONFIG = config_flags.DEFINE_config_file("rl_config", "configs/rl_tiny.py",
                                             "RL-job config: the rl and train sections.")
_ENVS = flags.DEFINE_list("envs", ["64", "256", "1024"], "Envs per RL iteration to time "
                          "(multiples of rl.group_size).")
_STEPS = flags.DEFINE_integer("steps", None, "Env steps per rollout (default: the env horizon).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per measurement (fastest is kept).")


class _RandomInit:
  """The train loop's model: the policy's random init from an example observation."""

  def __init__(self, policy, example_observation: dict):
    self.policy, self.example_observation = policy, example_observation

  def init(self, rng, example_batch):
    del example_batch  # Seeds; the params' shapes come from an observation.
    return self.policy.init(rng, self.example_observation)


def _identity_stats(dim: int) -> dict:
  """Normalization statistics that leave values unchanged (zscore or quantile)."""
  ones = np.ones(dim, np.float32)
  return {"mean": 0 * ones, "std": ones, "min": -ones, "max": ones, "q01": -ones, "q99": ones,
          "mask": np.ones(dim, bool)}


def _fastest(fn, args: list[tuple], repeats: int) -> tuple[float, float]:
  """(compile + first call seconds, fastest of ``repeats`` later calls [s]) of ``fn``, call
  ``i`` on ``args[i % len(args)]``."""
  times = []
  for i in range(repeats + 1):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args[i % len(args)]))
    times.append(time.perf_counter() - t0)
  return times[0], min(times[1:])


def _time_size(simulate, collect_fn, rl_step_fn, state, batches: list[dict], repeats: int):
  """Seconds per call of the three programs on ``batches`` (module docstring):
  ``((first, fastest) of whole, policy rollout, simulation), the train state after``."""
  key = jax.random.PRNGKey(0)
  sim = _fastest(simulate, [(b, key) for b in batches], repeats)
  roll = _fastest(collect_fn, [(state.params, b, key) for b in batches], repeats)
  holder = [state]

  def whole(batch):
    holder[0], metrics = rl_step_fn(holder[0], batch)  # The state's buffers are donated.
    return metrics

  return (_fastest(whole, [(b,) for b in batches], repeats), roll, sim), holder[0]


def main(argv):
  del argv
  config = _CONFIG.value
  rl_job_config = _RL_CONFIG.value
  rl, tc = rl_job_config.rl, rl_job_config.train
  rl_config_lib.check_rl_config(rl, config.policy.head)

  env_config = ml_collections.ConfigDict(config.collect.env)
  env_config.done_on_success = rl.done_on_success
  if _STEPS.value is not None:
    env_config.horizon = _STEPS.value
  env = tabletop.make_env(env_config)
  steps = env.horizon
  norm_stats = {"action": _identity_stats(env.action_dim), "state": _identity_stats(env.state_dim)}
  text_tokenizer = text.TextTokenizer.fit(env.instructions, config.text_vocab_size)
  policy = main_job.build_policy(config, norm_stats, text_tokenizer)
  # The RL job's adapter: the evaluator's (window, cameras, text table), replanning every
  # rl.replan_every steps when set (RLStepBuilder applies it).
  adapter = main_job.make_evaluator(config, policy, norm_stats, text_tokenizer, env=env).adapter
  builder = rl_step.RLStepBuilder(policy, env, adapter, rl)
  task_ids = [int(i) for i in env.enabled_task_ids]

  mesh = mesh_lib.make_mesh(tc.mesh)
  example_obs = jax.tree.map(np.asarray, adapter.observation(adapter.initial_history(1),
                                                             np.zeros((1,), np.int32)))
  model = _RandomInit(policy, example_obs)
  example = {"seeds": np.zeros((1,), np.int32), "task_ids": np.zeros((1,), np.int32)}
  abstract, shardings = trainer.abstract_train_state(model, tc, example, mesh)
  state = trainer.initial_train_state(model, tc, example, mesh, abstract=(abstract, shardings))
  rl_step_fn = builder(model, optimizer.make_optimizer(tc), optimizer.learning_rate_schedule(tc),
                       tc.ema_decay, mesh, shardings,
                       tc.get("trainable", transfer.DEFAULT_TRAINABLE))
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  print(f"devices: {jax.devices()}; {config.policy.head} head, {num_params / 1e6:.3f}M params, "
        f"{env.image_size[0]} px, {steps} env steps per rollout, G={rl.group_size}, "
        f"{rl.updates_per_iteration} updates x {rl.decisions_per_update} decisions, "
        f"sampling {rl.sample_options[config.policy.head].to_dict()}, a decision every "
        f"{builder.adapter.replan_every} steps, train.trainable {tc.get('trainable', transfer.DEFAULT_TRAINABLE)!r}; fastest "
        f"of {_REPEATS.value} calls", flush=True)

  collect_fn = jax.jit(builder.collect)
  zero = rollout_lib.make_rollout(
      env, rollout_lib.stateless(
          lambda obs, key: jnp.zeros((obs["state"].shape[0], env.action_dim), jnp.float32)),
      record_obs=False)

  @jax.jit
  def simulate(batch, key):
    reset_keys, _ = rollout_lib.seed_keys(batch["seeds"])
    start = rollout_lib.reset_batch(env, reset_keys, batch["task_ids"])
    return zero(start, jax.random.split(key, steps))

  for envs in [int(x) for x in _ENVS.value]:
    if envs % rl.group_size:
      raise ValueError(f"--envs={envs} is not a multiple of rl.group_size={rl.group_size}")
    groups = envs // rl.group_size
    # One batch of start states per call, as the train loop's iterator gives them.
    batches = [global_batch.to_global(
        dict(zip(("seeds", "task_ids"), collect.train_episodes(i, groups, rl.group_size,
                                                                task_ids), strict=True)),
        mesh, envs) for i in range(_REPEATS.value + 1)]
    times, state = _time_size(simulate, collect_fn, rl_step_fn, state, batches, _REPEATS.value)
    (whole_first, t_whole), (roll_first, t_roll), (sim_first, t_sim) = times
    n = envs * steps
    sample, update = t_roll - t_sim, t_whole - t_roll
    print(f"envs {envs:5d}: whole loop {n / t_whole:9.1f} env steps/s | policy rollout "
          f"{n / t_roll:9.1f} | sim alone {n / t_sim:9.1f} | whole/rollout "
          f"{t_roll / t_whole:5.2f}x | iteration {t_whole:7.3f} s = sim {t_sim:7.3f} + sampling "
          f"{sample:7.3f} + update {update:7.3f} s | update {100 * update / t_whole:5.1f}% of "
          f"the loop (target <= 50% at 256 envs) | compile+first {whole_first:.0f} / "
          f"{roll_first:.0f} / {sim_first:.0f} s", flush=True)


if __name__ == "__main__":
  app.run(main)
