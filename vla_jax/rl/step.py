"""The RL step of the one train loop: collect G rollouts per start state, then update.

``trainer.train(..., make_step=RLStepBuilder(...))`` runs it; one train-loop step is one RL
iteration, a single jitted XLA program (sharded like any train step, the env batch along the
mesh's data axis):

1. reset ``num_groups * G`` envs from the batch's seeds (a group's G envs share a seed, so they
   start from identical states; ``vla_jax.rl.collect.train_episodes``);
2. roll them out for the horizon with the current params and the head's stochastic sampler
   (:class:`~vla_jax.rl.collect.RLActor`), recording each decision's observation, sample and
   log-likelihood;
3. returns per episode (binary success or the summed dense reward), group-relative advantages
   with dynamic sampling (:mod:`vla_jax.rl.grpo`);
4. ``rl.updates_per_iteration`` optimizer steps, each on ``rl.decisions_per_update`` decisions
   drawn at random among the kept groups' decisions, on the clipped surrogate of the ratio
   against the rollout policy (exact log-likelihoods, or FPO's per-sample flow-matching losses),
   plus an optional k3 KL to the reference (starting) params. With no decision kept (every group
   all-success or all-failure) the params and optimizer state are left unchanged.

The ``batch`` is ``{"seeds": int32 [N], "task_ids": int32 [N]}`` (N = ``train.batch_size`` =
``rl.num_groups * rl.group_size``); the randomness of iteration s is ``fold_in(state.rng, s)``,
so a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from vla_jax.envs import rollout as rollout_lib
from vla_jax.envs.tabletop import TabletopEnv
from vla_jax.rl import collect, grpo
from vla_jax.training import sharding as sharding_lib
from vla_jax.training import train_step as step_lib
from vla_jax.training.train_state import TrainState


class RLStepBuilder:
  """Builds the jitted RL step for the train loop (``make_step`` of ``trainer.train``).

  Args:
    policy: a ``Policy`` whose head implements what ``rl.likelihood`` needs.
    env: the env RL runs in (its ``done_on_success`` set as ``rl.done_on_success``).
    adapter: the ``EnvPolicyAdapter`` (text table, normalization, history, replanning).
    rl: the ``rl`` config section (``vla_jax.rl.config``).
    ref_params: the reference params (the starting checkpoint) when ``rl.kl_coef > 0``.
  """

  def __init__(self, policy, env: TabletopEnv, adapter, rl: ml_collections.ConfigDict,
               ref_params: Any = None):
    if rl.kl_coef > 0 and ref_params is None:
      raise ValueError("rl.kl_coef > 0 needs the reference params (the starting checkpoint)")
    self.policy, self.env, self.adapter, self.rl = policy, env, adapter, rl
    self.ref_params = ref_params if rl.kl_coef > 0 else None
    check_policy_supports(policy, rl)
    options = dict(rl.sample_options)
    if rl.likelihood == "exact":
      sample_fn = functools.partial(policy.sample_stochastic, **options)
      self.log_prob = functools.partial(policy.log_prob, **options)
    else:  # FPO: the head's own sampler (options are ``sample``'s); losses score the chunk.
      sample_fn = functools.partial(_fpo_sample, policy, options)
    self.actor = collect.RLActor(adapter, sample_fn)
    self.rollout = rollout_lib.make_rollout(env, self.actor, record_obs=False)

  def __call__(self, model, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
               ema_decay: float, mesh: Mesh, state_shardings: Any, trainable: str):
    del model  # The policy was given to the constructor.
    if ema_decay > 0:
      raise ValueError("RL fine-tuning keeps no EMA (train.ema_decay must be 0): the rollouts "
                       "must come from the params being updated")
    step = functools.partial(self.step, optimizer=optimizer, schedule=schedule,
                             trainable=trainable)
    jitted = jax.jit(step, in_shardings=(state_shardings, sharding_lib.batch_sharding(mesh),
                                         state_shardings.params if self.ref_params is not None
                                         else None),
                     out_shardings=(state_shardings, sharding_lib.replicated(mesh)),
                     donate_argnums=(0,))
    return lambda state, batch: jitted(state, batch, self.ref_params)

  def collect(self, params, batch: dict, key: jax.Array) -> dict:
    """Rollouts of ``batch``'s start states with ``params``: the trajectory (time-major)."""
    n, t = batch["seeds"].shape[0], self.env.horizon
    reset_keys, _ = rollout_lib.seed_keys(batch["seeds"])
    start = rollout_lib.reset_batch(self.env, reset_keys, batch["task_ids"])
    carry = self.actor.initial_carry(n, params)
    _, traj = self.rollout(start, jax.random.split(key, t), carry, params)
    return traj

  def step(self, state: TrainState, batch: dict, ref_params: Any, *,
           optimizer: optax.GradientTransformation, schedule: optax.Schedule,
           trainable: str) -> tuple[TrainState, dict]:
    """One RL iteration (module docstring); returns the new state and float32 scalar metrics."""
    rl = self.rl
    rng = jax.random.fold_in(state.rng, state.step)
    collect_key, update_key = jax.random.split(rng)
    old_params = jax.lax.stop_gradient(state.params)
    traj = self.collect(old_params, batch, collect_key)
    valid = traj["valid"]  # [T, N]
    t, n = valid.shape
    success = traj["success"][-1]
    if rl.reward == "success":
      returns = success.astype(jnp.float32)
    else:
      returns = jnp.sum(jnp.where(valid, traj["reward"], 0.0), axis=0)
    adv, kept = grpo.group_advantages(returns, rl.group_size)
    extras = traj["extras"]
    eligible = (extras["decision"] & valid & kept[None]).reshape(t * n)
    flat = jax.tree.map(lambda x: x.reshape((t * n,) + x.shape[2:]),
                        {"history": extras["history"], "sample": extras["sample"],
                         "log_prob": extras["log_prob"],
                         "instruction_id": jnp.broadcast_to(traj["instruction_id"], (t, n)),
                         "advantage": jnp.broadcast_to(adv, (t, n))})

    def update(carry, key):
      params, opt_state = carry
      pick_key, loss_key = jax.random.split(key)
      idx, weights = _pick(pick_key, eligible, rl.decisions_per_update)
      mb = jax.tree.map(lambda x: x[idx], flat)
      obs = self.adapter.observation(mb["history"], mb["instruction_id"])
      (loss, metrics), grads = jax.value_and_grad(self._loss, has_aux=True)(
          params, old_params, ref_params, obs, mb, weights, loss_key)
      new_params, new_opt, grads, _ = step_lib.apply_gradients(params, opt_state, grads,
                                                               optimizer, trainable)
      any_kept = weights.sum() > 0
      params, opt_state = jax.tree.map(lambda a, b: jnp.where(any_kept, a, b),
                                       (new_params, new_opt), (params, opt_state))
      return (params, opt_state), {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}

    (params, opt_state), per_update = jax.lax.scan(
        update, (state.params, state.opt_state),
        jax.random.split(update_key, rl.updates_per_iteration))
    metrics = jax.tree.map(jnp.mean, per_update)
    decided = extras["decision"] & valid
    metrics.update(
        rollout_success=success.astype(jnp.float32).mean(), return_mean=returns.mean(),
        kept_fraction=kept.astype(jnp.float32).mean(),
        env_steps=valid.sum().astype(jnp.float32),
        decisions=decided.sum().astype(jnp.float32),
        # NaN here (a NaN reward or log-likelihood) stops the loop with these metrics shown
        # and the last good checkpoint kept (trainer.NonFiniteLossError).
        rollout_log_prob=jnp.sum(jnp.where(decided, extras["log_prob"], 0.0))
        / jnp.maximum(decided.sum(), 1),
        param_norm=optax.tree.norm(params), learning_rate=schedule(state.step))
    metrics = jax.tree.map(lambda m: jnp.asarray(m, jnp.float32), metrics)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def _loss(self, params, old_params, ref_params, obs, mb, weights, key):
    rl = self.rl
    if rl.likelihood == "exact":
      new_lp = self.log_prob(params, obs, mb["sample"])
      log_ratio = new_lp - mb["log_prob"]
    else:
      new_lp = None
      noise, t = _fpo_pairs(key, mb["sample"]["actions"].shape, rl.fpo_samples)
      l_new = self.policy.cfm_losses(params, obs, mb["sample"]["actions"], noise, t)
      l_old = jax.lax.stop_gradient(
          self.policy.cfm_losses(old_params, obs, mb["sample"]["actions"], noise, t))
      log_ratio = jnp.mean(l_old - l_new, axis=1)  # FPO's ratio estimate, in log space.
    loss, metrics = grpo.clipped_surrogate(log_ratio, mb["advantage"], weights, rl.clip_low,
                                           rl.clip_high)
    metrics["policy_loss"] = loss
    if ref_params is not None and new_lp is not None:
      kl = grpo.k3_kl(new_lp, jax.lax.stop_gradient(self.log_prob(ref_params, obs, mb["sample"])),
                      weights)
      loss = loss + rl.kl_coef * kl
      metrics["kl_ref"] = kl
    return loss, metrics


def check_policy_supports(policy, rl: ml_collections.ConfigDict) -> None:
  """Raises NotImplementedError naming the head when it lacks what ``rl.likelihood`` needs."""
  need = ("sample_stochastic", "log_prob") if rl.likelihood == "exact" else ("cfm_losses",)
  missing = [m for m in need if not policy.supports(m)]
  if missing:
    raise NotImplementedError(
        f"the checkpoint's '{policy.config.head}' head has no stochastic sampler for "
        f"rl.likelihood='{rl.likelihood}' (it lacks {missing}); heads with one: flow (exact = "
        "Flow-Noise, or fpo), and the heads whose sample_stochastic has landed")


def _pick(key: jax.Array, eligible: jax.Array, count: int) -> tuple[jax.Array, jax.Array]:
  """``count`` distinct indices drawn uniformly among ``eligible`` bool [M] (Gumbel top-k), and
  weights float32 [count]: 1 for an eligible pick, 0 for filler when fewer are eligible."""
  count = min(count, eligible.shape[0])
  scores = jnp.where(eligible, jax.random.gumbel(key, eligible.shape), -jnp.inf)
  _, idx = jax.lax.top_k(scores, count)
  return idx, eligible[idx].astype(jnp.float32)


def _fpo_pairs(key, action_shape, m: int):
  """FPO's (noise [B, M, H, D], t [B, M]) pairs, t ~ U(0.001, 1) as in flow training's range."""
  b = action_shape[0]
  noise_key, t_key = jax.random.split(key)
  noise = jax.random.normal(noise_key, (b, m) + tuple(action_shape[1:]))
  t = jax.random.uniform(t_key, (b, m), minval=0.001, maxval=1.0)
  return noise, t


def _fpo_sample(policy, options: dict, params, observation, key) -> dict:
  """FPO's rollout sampler: the head's own ``sample``; records the executed (normalized) chunk."""
  out = policy.sample(params, observation, key, **options)
  b = out["actions"].shape[0]
  return {"actions": out["actions"], "valid": out["valid"],
          "log_prob": jnp.zeros((b,), jnp.float32), "sample": {"actions": out["actions"]}}
