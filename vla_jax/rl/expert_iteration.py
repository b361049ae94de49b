"""Expert iteration: distil the MJX oracle's best-of-N search into the policy (``rl.algorithm =
"exit"``).

ExIt (Anthony et al. 2017) and AlphaZero improve a policy by imitating a search built on top of
it; ReST / RAFT (Gulcehre et al. 2023; Dong et al. 2023) keep only high-reward samples. Here the
search is best-of-N steering with the MJX oracle (``vla_jax.world_model.steering``: at each
decision N chunks of the current policy, each simulated ``rl.exit_lookahead`` control steps in a
copy of the true state, the best executed), which raised the main job's policy from 83.5% to
92-94% on the ``test`` block (docs/experiments/steering.md). The policy then learns, with its
own imitation loss, the chunks its steered episodes executed. Unlike GRPO/PPO it needs no
likelihood, so it works for every head, and it trains in the evaluation's execution mode
(receding horizon): the improvement lands on the action that evaluation executes.

One train-loop step (one jitted XLA program, sharded like any train step):

1. reset ``num_groups * group_size`` envs from the batch's seeds (demo block);
2. roll them out with best-of-``rl.exit_candidates`` steering under the current params,
   recording each step's observation window and executed action;
3. build imitation examples exactly as the data pipeline does from demonstrations: at step t the
   target chunk is the next H executed actions (``action_mask`` False past the episode's end),
   normalized with the checkpoint's statistics; with ``rl.exit_success_only`` only the steps of
   episodes that end in success are eligible (the rest is not known to be good);
4. ``rl.updates_per_iteration`` optimizer steps of the head's own loss (``policy.loss``), each
   on ``rl.decisions_per_update`` eligible steps drawn at random, plus, with
   ``rl.exit_demo_weight > 0``, that weight times the loss on the batch's demonstrations
   (``demo/<key>``: the main job's data pipeline, one row per env; every update of the
   iteration uses them). With neither the params and optimizer state are left unchanged.

Why the demonstrations: imitating its own samples alone drifts. At lr 1e-4 the main job's
policy imitating its own successful episodes (no search) fell from 82% to 40% on ``dev`` within
~100 updates, the gripper tasks first (docs/experiments/rl_tiny.md, seventh session); the
demonstrations anchor the imitation as DAgger's aggregated data does (Ross et al. 2011).

The evaluated policy is the plain one: the oracle (privileged: it reads the simulator's state)
is used only to produce training episodes.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from vla_jax.data import normalization
from vla_jax.envs import rollout as rollout_lib
from vla_jax.envs.tabletop import TabletopEnv
from vla_jax.rl import collect
from vla_jax.rl import step as rl_step
from vla_jax.training.train_state import TrainState
from vla_jax.world_model import steering


class ExpertIterationStep:
  """Builds the jitted expert-iteration step for the train loop (``make_step`` of
  ``trainer.train``); same interface as :class:`vla_jax.rl.step.RLStepBuilder`.

  Args:
    policy: any ``Policy`` (its imitation ``loss`` is what trains; no likelihood needed).
    env: the env RL runs in (its ``done_on_success`` set as ``rl.done_on_success``); the oracle
      simulates candidates in it.
    adapter: the evaluation's ``EnvPolicyAdapter``; with ``rl.replan_every`` set, the steered
      episodes replan that often.
    rl: the ``rl`` config section (``vla_jax.rl.config``).
  """

  def __init__(self, policy, env: TabletopEnv, adapter, rl: ml_collections.ConfigDict):
    if rl.algorithm != "exit":
      raise ValueError(f"ExpertIterationStep: rl.algorithm='{rl.algorithm}' is not 'exit'")
    if rl.get("replan_every", 0):
      adapter = adapter.with_replan_every(rl.replan_every)
    if rl.get("exit_sample_options"):
      adapter = adapter.with_sample_options(**rl.exit_sample_options)
    self.policy, self.env, self.adapter, self.rl = policy, env, adapter, rl
    self.search = steering.BestOfN(
        adapter, scorer=steering.MJXOracle(env, rl.exit_lookahead),
        num_candidates=rl.exit_candidates)
    self.rollout = rollout_lib.make_rollout(env, self._act, record_obs=False, privileged=True)

  def _act(self, state, key, carry, params):
    """The steered policy, also recording the observation window each action was chosen from
    (``history``: ``image/<camera>`` uint8 [N, T, h, w, 3], ``state`` [N, T, S], ``obs_mask``)."""
    action, carry, _ = self.search(state, key, carry, params)
    return action, carry, {"history": carry[0]}

  def __call__(self, model, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
               ema_decay: float, mesh: Mesh, state_shardings: Any, trainable: str):
    del model  # The policy was given to the constructor.
    return rl_step.jit_rl_step(self.step, optimizer=optimizer, schedule=schedule,
                               ema_decay=ema_decay, mesh=mesh, state_shardings=state_shardings,
                               trainable=trainable)

  def initial_params(self, rng: jax.Array, example_observation: dict) -> Any:
    """The policy's init params (every one is then loaded from the starting checkpoint)."""
    return self.policy.init(rng, example_observation)

  def collect(self, params, batch: dict, key: jax.Array) -> tuple[Any, dict]:
    """Steered rollouts of ``batch``'s start states: ``(final env state, trajectory)``
    (time-major, ``vla_jax.envs.rollout.make_rollout``; ``extras["history"]`` [T, N, ...])."""
    return self.rollout(collect.start_states(self.env, batch),
                        jax.random.split(key, self.env.horizon),
                        self.search.initial_carry(batch["seeds"].shape[0]), params)

  def examples(self, traj: dict) -> tuple[dict, jax.Array]:
    """Imitation examples of a steered trajectory, flattened over (step, env) [T * N, ...]:
    ``({observation keys, "actions" float32 [M, H, D] normalized, "action_mask" bool [M, H]},
    eligible bool [M])`` (module docstring, step 3)."""
    valid, action = traj["valid"], traj["action"]  # [T, N], [T, N, D]
    t, n = valid.shape
    h = self.policy.action_horizon
    index = jnp.arange(t)[:, None] + jnp.arange(h)[None, :]  # [T, H]
    inside = index < t
    index = jnp.minimum(index, t - 1)
    normalized = normalization.normalize(action, self.adapter.action_stats,
                                         self.adapter.norm_mode)
    chunks = jnp.swapaxes(normalized[index], 1, 2)  # [T, H, N, D] -> [T, N, H, D]
    mask = jnp.swapaxes(valid[index] & inside[:, :, None], 1, 2)  # [T, N, H]
    eligible = valid
    if self.rl.exit_success_only:
      eligible = eligible & traj["success"][-1][None]
    flat = jax.tree.map(lambda x: x.reshape((t * n,) + x.shape[2:]), {
        **traj["extras"]["history"],
        "instruction_id": jnp.broadcast_to(traj["instruction_id"], (t, n)),
        "actions": chunks, "action_mask": mask})
    return flat, eligible.reshape(t * n)

  def loss(self, params, examples: dict, demos: dict | None, key: jax.Array
           ) -> tuple[jax.Array, dict]:
    """The head's imitation loss on steered ``examples`` (batch contract), plus
    ``rl.exit_demo_weight`` times its loss on ``demos`` (None: no demonstrations)."""
    steered_key, demo_key = jax.random.split(key)
    loss, metrics = self.policy.loss(params, examples, steered_key)
    metrics = {**metrics, "steered_loss": loss}
    if demos is not None:
      demo_loss, _ = self.policy.loss(params, demos, demo_key)
      loss = loss + self.rl.exit_demo_weight * demo_loss
      metrics["demo_loss"] = demo_loss
    return loss, metrics

  def step(self, state: TrainState, batch: dict, ref_params: Any, *,
           optimizer: optax.GradientTransformation, schedule: optax.Schedule,
           trainable: str) -> tuple[TrainState, dict]:
    """One expert-iteration step (module docstring); the new state and float32 scalar metrics."""
    del ref_params  # No KL term: the targets are the policy's own (searched) samples.
    rl = self.rl
    demos = demo_batch(batch)
    demo_weight = rl.get("exit_demo_weight", 0.0)
    if demo_weight > 0 and not demos:
      raise ValueError("rl.exit_demo_weight > 0 but the batch holds no 'demo/<key>' rows (the RL "
                       "job adds them from the starting run's dataset)")
    rng = jax.random.fold_in(state.rng, state.step)
    collect_key, update_key = jax.random.split(rng)
    final, traj = self.collect(jax.lax.stop_gradient(state.params), batch, collect_key)
    del final
    flat, eligible = self.examples(traj)

    def update(carry, key):
      params, opt_state = carry
      pick_key, loss_key = jax.random.split(key)
      idx, weights = rl_step.pick_decisions(pick_key, eligible, rl.decisions_per_update)
      mb = jax.tree.map(lambda x: x[idx], flat)
      examples = {**self.adapter.observation(
          {k: v for k, v in mb.items() if k not in ("instruction_id", "actions", "action_mask")},
          mb["instruction_id"]),
          "actions": mb["actions"], "action_mask": mb["action_mask"] & (weights[:, None] > 0)}
      (loss, metrics), grads = jax.value_and_grad(self.loss, has_aux=True)(
          params, examples, demos if demo_weight > 0 else None, loss_key)
      params, opt_state, grads = rl_step.apply_if((weights.sum() > 0) | (demo_weight > 0),
                                                  params, opt_state, grads, optimizer, trainable)
      return (params, opt_state), {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}

    (params, opt_state), per_update = jax.lax.scan(
        update, (state.params, state.opt_state),
        jax.random.split(update_key, rl.updates_per_iteration))
    metrics = jax.tree.map(jnp.mean, per_update)
    valid = traj["valid"]
    success = traj["success"][-1]
    decided = valid if self.adapter.replan_every == 1 else (
        valid & (jnp.arange(valid.shape[0]) % self.adapter.replan_every == 0)[:, None])
    metrics.update(
        rollout_success=success.astype(jnp.float32).mean(),
        return_mean=jnp.sum(jnp.where(valid, traj["reward"], 0.0), axis=0).mean(),
        kept_fraction=success.astype(jnp.float32).mean() if rl.exit_success_only
        else jnp.ones((), jnp.float32),
        eligible_steps=eligible.sum().astype(jnp.float32),
        env_steps=valid.sum().astype(jnp.float32),
        decisions=decided.sum().astype(jnp.float32),
        param_norm=optax.tree.norm(params), learning_rate=schedule(state.step))
    metrics = jax.tree.map(lambda m: jnp.asarray(m, jnp.float32), metrics)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


DEMO_PREFIX = "demo/"


def demo_batch(batch: dict) -> dict:
  """The demonstrations of an RL batch: its ``demo/<key>`` entries under ``<key>`` (the batch
  contract, one row per env); ``{}`` when it has none."""
  return {k[len(DEMO_PREFIX):]: v for k, v in batch.items() if k.startswith(DEMO_PREFIX)}


def with_demos(episodes, demos):
  """A ``make_data_iterator`` yielding the RL episode batches of ``episodes`` (seeds, task ids)
  with each batch of the ``demos`` factory added as ``demo/<key>`` (same rows per process)."""
  def factory(**kwargs):
    demo_it = demos(**kwargs)
    for batch in episodes(**kwargs):
      demo = next(demo_it)
      yield {**batch, **{DEMO_PREFIX + k: v for k, v in demo.items()}}
  return factory
