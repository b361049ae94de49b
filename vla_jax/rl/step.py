"""The RL step of the one train loop: collect G rollouts per start state, then update.

``trainer.train(..., make_step=RLStepBuilder(...))`` runs it; one train-loop step is one RL
iteration, a single jitted XLA program (sharded like any train step, the env batch along the
mesh's data axis):

1. reset ``num_groups * G`` envs from the batch's seeds (a group's G envs share a seed, so they
   start from identical states; ``vla_jax.rl.collect.train_episodes``);
2. roll them out for the horizon with the current params and the head's stochastic sampler
   (:class:`~vla_jax.rl.collect.RLActor`), recording each decision's observation, sample and
   log-likelihood;
3. advantages: GRPO's group-relative ones of each episode's return (binary success or the
   summed dense reward) with dynamic sampling (:mod:`vla_jax.rl.grpo`), or PPO's GAE with the
   critic's values recorded at each decision (:mod:`vla_jax.rl.ppo`, :mod:`vla_jax.rl.value`);
4. ``rl.updates_per_iteration`` optimizer steps, each on ``rl.decisions_per_update`` decisions
   drawn at random among the kept groups' decisions, on the clipped surrogate of the ratio
   against the rollout policy (exact log-likelihoods, or FPO's per-sample flow-matching losses),
   plus an optional k3 KL to the reference (starting) params (PPO: plus the critic's loss). With no decision kept (every group
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
from vla_jax.rl import collect, grpo, ppo
from vla_jax.rl import noise_std as noise_lib
from vla_jax.rl import value as value_lib
from vla_jax.training import sharding as sharding_lib
from vla_jax.training import train_step as step_lib
from vla_jax.training.train_state import TrainState


class RLStepBuilder:
  """Builds the jitted RL step for the train loop (``make_step`` of ``trainer.train``).

  Args:
    policy: a ``Policy`` whose head implements what ``rl.likelihood`` needs.
    env: the env RL runs in (its ``done_on_success`` set as ``rl.done_on_success``).
    adapter: the evaluation's ``EnvPolicyAdapter`` (text table, normalization, history,
      replanning); with ``rl.replan_every`` set, RL acts through a copy replanning that often.
    rl: the ``rl`` config section (``vla_jax.rl.config``).
    ref_params: the reference params (the starting checkpoint) when ``rl.kl_coef > 0``.
  """

  def __init__(self, policy, env: TabletopEnv, adapter, rl: ml_collections.ConfigDict,
               ref_params: Any = None):
    if rl.kl_coef > 0 and ref_params is None:
      raise ValueError("rl.kl_coef > 0 needs the reference params (the starting checkpoint)")
    if rl.get("replan_every", 0):  # RL's own execution (e.g. whole chunks); evaluation's stays.
      adapter = adapter.with_replan_every(rl.replan_every)
    self.policy, self.env, self.adapter, self.rl = policy, env, adapter, rl
    self.ref_params = ref_params if rl.kl_coef > 0 else None
    check_policy_supports(policy, rl)
    if rl.algorithm == "ppo" and adapter.replan_every != 1:
      raise ValueError(f"rl.algorithm='ppo' needs a decision at every control step (GAE over "
                       f"steps); the adapter replans every {adapter.replan_every}")
    if rl.get("learn_noise_std", False):  # Flow-Noise with the std from the params.
      options = dict(rl.sample_options[policy.config.head])
      options.pop("noise_std")  # The starting value (initial_params).
      std = functools.partial(noise_lib.noise_std, bounds=tuple(rl.noise_std_bounds),
                              lr_scale=rl.noise_std_lr_scale)
      sample_fn = functools.partial(_with_learned_std, policy.sample_stochastic, options, std)
      self.log_prob = functools.partial(_with_learned_std, policy.log_prob, options, std)
    elif rl.likelihood == "exact":  # The options of this head (rl.sample_options.<head>).
      options = dict(rl.sample_options[policy.config.head])
      sample_fn = functools.partial(policy.sample_stochastic, **options)
      self.log_prob = functools.partial(policy.log_prob, **options)
    else:  # FPO: the head's own sampler at its defaults; losses score the chunk.
      sample_fn = functools.partial(_fpo_sample, policy, {})
    if rl.algorithm == "ppo":  # The critic's V(s_t) is recorded at every decision.
      sample_fn = functools.partial(_with_value, sample_fn, self.value)
    self.actor = collect.RLActor(adapter, sample_fn)
    self.rollout = rollout_lib.make_rollout(env, self.actor, record_obs=False)

  def __call__(self, model, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
               ema_decay: float, mesh: Mesh, state_shardings: Any, trainable: str):
    del model  # The policy was given to the constructor.
    return jit_rl_step(self.step, optimizer=optimizer, schedule=schedule, ema_decay=ema_decay,
                       mesh=mesh, state_shardings=state_shardings, trainable=trainable,
                       ref_params=self.ref_params)

  def initial_params(self, rng: jax.Array, example_observation: dict) -> Any:
    """The policy's init params, plus the critic's (:data:`value.VALUE_KEY`) for PPO and the
    learned noise std's (:data:`noise_std.NOISE_KEY`) with ``rl.learn_noise_std``."""
    policy_rng, value_rng = jax.random.split(rng)
    params = self.policy.init(policy_rng, example_observation)
    if self.rl.algorithm == "ppo":
      width = self.policy.backbone_config.llm.width
      params[value_lib.VALUE_KEY] = value_lib.init_value_params(value_rng, width,
                                                                self.rl.value_hidden)
    if self.rl.get("learn_noise_std", False):
      params[noise_lib.NOISE_KEY] = noise_lib.init_noise_params(
          self.rl.sample_options.flow.noise_std, self.policy.action_dim,
          tuple(self.rl.noise_std_bounds), self.rl.noise_std_lr_scale)
    return params

  def value(self, params, observation: dict) -> jax.Array:
    """float32 [B]: the critic's V(observation) (PPO)."""
    return value_lib.value(self.policy, params, observation, self.rl.value_hidden)

  def collect(self, params, batch: dict, key: jax.Array) -> tuple[Any, dict]:
    """Rollouts of ``batch``'s start states with ``params``: ``(final env state, trajectory)``
    (time-major, see ``vla_jax.envs.rollout.make_rollout``)."""
    carry = self.actor.initial_carry(batch["seeds"].shape[0], params)
    return self.rollout(collect.start_states(self.env, batch),
                        jax.random.split(key, self.env.horizon), carry, params)

  def advantages(self, params, final, traj: dict) -> tuple[jax.Array, jax.Array, dict]:
    """``(advantages [T, N], eligible decisions bool [T, N], extra per-decision arrays)``.

    GRPO: the episode's group-relative advantage at each of its decisions, only in kept groups.
    PPO: GAE of per-step rewards with the recorded values, bootstrapped at the horizon with the
    value of the state reached (:mod:`vla_jax.rl.ppo`), normalized over the decisions; the
    returns (targets of the value loss) come along in the extras.
    """
    rl, valid, extras = self.rl, traj["valid"], traj["extras"]
    t, n = valid.shape
    if rl.algorithm == "grpo":
      adv, kept = grpo.group_advantages(_episode_returns(traj, rl.reward), rl.group_size)
      return (jnp.broadcast_to(adv, (t, n)), extras["decision"] & valid & kept[None],
              {"kept": kept})
    if rl.reward == "success":  # 1 at the step that first reaches success.
      before = jnp.concatenate([jnp.zeros_like(traj["success"][:1]), traj["success"][:-1]])
      rewards = (traj["success"] & ~before).astype(jnp.float32)
    else:
      rewards = traj["reward"]
    last = self.adapter.update_history(jax.tree.map(lambda x: x[-1], extras["history"]),
                                       rollout_lib.policy_obs(final))
    v_last = self.value(params, self.adapter.observation(last, traj["instruction_id"]))
    values = extras["value"]
    next_values = jnp.concatenate([values[1:], v_last[None]])
    adv, returns = ppo.gae(rewards, values, next_values, traj["terminal"], traj["done"], valid,
                           rl.gamma, rl.gae_lambda)
    eligible = extras["decision"] & valid
    w = eligible.astype(jnp.float32)
    mean = jnp.sum(adv * w) / jnp.maximum(w.sum(), 1.0)
    std = jnp.sqrt(jnp.sum(jnp.square(adv - mean) * w) / jnp.maximum(w.sum(), 1.0))
    return ((adv - mean) / (std + 1e-8), eligible,
            {"kept": jnp.ones((n,), bool), "return": returns})

  def step(self, state: TrainState, batch: dict, ref_params: Any, *,
           optimizer: optax.GradientTransformation, schedule: optax.Schedule,
           trainable: str) -> tuple[TrainState, dict]:
    """One RL iteration (module docstring); returns the new state and float32 scalar metrics."""
    rl = self.rl
    rng = jax.random.fold_in(state.rng, state.step)
    collect_key, update_key = jax.random.split(rng)
    old_params = jax.lax.stop_gradient(state.params)
    final, traj = self.collect(old_params, batch, collect_key)
    valid = traj["valid"]  # [T, N]
    t, n = valid.shape
    success = traj["success"][-1]
    returns = _episode_returns(traj, rl.reward)
    adv, eligible, more = self.advantages(old_params, final, traj)
    kept = more.pop("kept")
    extras = traj["extras"]
    eligible = eligible.reshape(t * n)
    flat = jax.tree.map(lambda x: x.reshape((t * n,) + x.shape[2:]),
                        {"history": extras["history"], "sample": extras["sample"],
                         "log_prob": extras["log_prob"],
                         "instruction_id": jnp.broadcast_to(traj["instruction_id"], (t, n)),
                         "advantage": adv, **more})

    def update(carry, key):
      params, opt_state = carry
      pick_key, loss_key = jax.random.split(key)
      idx, weights = pick_decisions(pick_key, eligible, rl.decisions_per_update)
      mb = jax.tree.map(lambda x: x[idx], flat)
      obs = self.adapter.observation(mb["history"], mb["instruction_id"])
      (loss, metrics), grads = jax.value_and_grad(self._loss, has_aux=True)(
          params, old_params, ref_params, obs, mb, weights, loss_key)
      params, opt_state, grads = apply_if(weights.sum() > 0, params, opt_state, grads,
                                          optimizer, trainable)
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
    if rl.get("learn_noise_std", False):  # Mean over action dimensions, after the update.
      metrics["noise_std"] = jnp.mean(noise_lib.noise_std(params, tuple(rl.noise_std_bounds),
                                                          rl.noise_std_lr_scale))
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
    if rl.algorithm == "ppo":
      err = jnp.square(self.value(params, obs) - mb["return"])
      value_loss = jnp.sum(weights * err) / jnp.maximum(weights.sum(), 1.0)
      loss = loss + rl.value_coef * value_loss
      metrics["value_loss"] = value_loss
    if ref_params is not None and new_lp is not None:
      if noise_lib.NOISE_KEY in params:  # The reference's chain with the current std: the KL
        ref_params = {**ref_params, noise_lib.NOISE_KEY: params[noise_lib.NOISE_KEY]}  # of flows.
      kl = grpo.k3_kl(new_lp, jax.lax.stop_gradient(self.log_prob(ref_params, obs, mb["sample"])),
                      weights)
      loss = loss + rl.kl_coef * kl
      metrics["kl_ref"] = kl
    return loss, metrics


def _episode_returns(traj: dict, reward: str) -> jax.Array:
  """float32 [N]: binary success at the episode's end, or the summed dense reward."""
  if reward == "success":
    return traj["success"][-1].astype(jnp.float32)
  return jnp.sum(jnp.where(traj["valid"], traj["reward"], 0.0), axis=0)


def _with_learned_std(fn, options: dict, std_fn, params, observation, *args) -> Any:
  """``fn(params, observation, *args, noise_std=std_fn(params), **options)``: the flow head's
  ``sample_stochastic`` or ``log_prob`` with the learned std [D] (:mod:`noise_std`)."""
  return fn(params, observation, *args, noise_std=std_fn(params), **options)


def _with_value(sample_fn, value_fn, params, observation, key) -> dict:
  return {**sample_fn(params, observation, key), "value": value_fn(params, observation)}


def check_policy_supports(policy, rl: ml_collections.ConfigDict) -> None:
  """Raises NotImplementedError naming the head when it lacks what ``rl.likelihood`` needs."""
  need = ("sample_stochastic", "log_prob") if rl.likelihood == "exact" else ("cfm_losses",)
  missing = [m for m in need if not policy.supports(m)]
  if missing:
    raise NotImplementedError(
        f"the checkpoint's '{policy.config.head}' head has no stochastic sampler for "
        f"rl.likelihood='{rl.likelihood}' (it lacks {missing}); heads with one: flow (exact = "
        "Flow-Noise, or fpo), and the heads whose sample_stochastic has landed")


def jit_rl_step(step, *, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                ema_decay: float, mesh: Mesh, state_shardings: Any, trainable: str,
                ref_params: Any = None):
  """An RL builder's ``step(state, batch, ref_params, *, optimizer, schedule, trainable) ->
  (state, metrics)`` jitted for the train loop: ``(state, batch) -> (state, metrics)`` with the
  state donated and sharded like training's, the batch (seeds) along the mesh's data axis, the
  metrics replicated.

  Raises:
    ValueError: with an EMA (``train.ema_decay > 0``): rollouts must come from the params being
      updated.
  """
  if ema_decay > 0:
    raise ValueError("RL fine-tuning keeps no EMA (train.ema_decay must be 0): the rollouts "
                     "must come from the params being updated")
  step = functools.partial(step, optimizer=optimizer, schedule=schedule, trainable=trainable)
  jitted = jax.jit(step, in_shardings=(state_shardings, sharding_lib.batch_sharding(mesh),
                                       state_shardings.params if ref_params is not None
                                       else None),
                   out_shardings=(state_shardings, sharding_lib.replicated(mesh)),
                   donate_argnums=(0,))
  return lambda state, batch: jitted(state, batch, ref_params)


def apply_if(apply: jax.Array, params, opt_state, grads, optimizer: optax.GradientTransformation,
             trainable: str) -> tuple[Any, Any, Any]:
  """``(params, opt_state, grads)`` after one optimizer step on ``grads`` (the ``trainable``
  params only), or the inputs unchanged where the scalar bool ``apply`` is False (an update with
  nothing to learn from: no kept decision)."""
  new_params, new_opt, grads, _ = step_lib.apply_gradients(params, opt_state, grads, optimizer,
                                                           trainable)
  params, opt_state = jax.tree.map(lambda a, b: jnp.where(apply, a, b), (new_params, new_opt),
                                   (params, opt_state))
  return params, opt_state, grads


def pick_decisions(key: jax.Array, eligible: jax.Array, count: int) -> tuple[jax.Array, jax.Array]:
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
