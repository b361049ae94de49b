"""A trained world model behind the MJX env's interface, so rollouts run in imagination.

:class:`WorldModelEnv` has the tabletop env's functional interface (``reset(rng)``,
``reset_task(rng, task_id)``, ``step(State, action) -> State`` on one env, vmapped by the
caller) and its attributes (``horizon``, ``task_names``, ``instructions``, ``camera_names``...),
so ``vla_jax.envs.rollout.make_rollout`` and ``vla_jax.eval.closed_loop.Evaluator`` run a policy
in the world model unchanged.

Start states are real: a reset samples the scene in the MJX env (the same seed gives the same
scene as the simulator's evaluation) and encodes its first observation. From there on every
observation, reward and success flag is the model's: ``State.data`` is ``{"latent": f32 [Z],
"context": uint8 [H, W, 3], "streak": int32 []}`` (the start frame the images are painted over;
consecutive steps imagined successful) and ``State.obs``
the decoded image and proprio state. Success is latched; ``done`` comes at the
horizon or on a non-finite action (``info["error"]``), as in the env.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from vla_jax.envs.tabletop import State, TabletopEnv
from vla_jax.world_model.model import WorldModel


class WorldModelEnv:
  """The env interface over a world model (module docstring).

  Args:
    model: the :class:`WorldModel`. params: its trained params (closed over: one compilation
      per params).
    env: the MJX env it models (resets, task and instruction tables, horizon).
    success_steps: consecutive imagined steps with success probability > 0.5 before success
      latches (1: the first such step, as the env latches its exact predicate; more filters
      out single-step spikes of the imagined success over long closed-loop rollouts).
  """

  def __init__(self, model: WorldModel, params: Any, env: TabletopEnv, success_steps: int = 1):
    if success_steps < 1:
      raise ValueError(f"WorldModelEnv: success_steps={success_steps} must be >= 1")
    self.success_steps = int(success_steps)
    if model.image_key not in {f"image/{c}" for c in env.camera_names}:
      raise ValueError(f"WorldModelEnv: the model reads '{model.image_key}', which the env does "
                       f"not render (env cameras: {env.camera_names})")
    if model.image_size != env.image_size[0]:
      raise ValueError(f"WorldModelEnv: model image_size {model.image_size} != env image size "
                       f"{env.image_size[0]}")
    if (model.action_dim, model.state_dim) != (env.action_dim, env.state_dim):
      raise ValueError(f"WorldModelEnv: model action/state dims {model.action_dim}/"
                       f"{model.state_dim} != env's {env.action_dim}/{env.state_dim}")
    self.model, self.params, self.env = model, params, env
    self.camera_names = [model.camera]
    for name in ("task_names", "enabled_task_ids", "instructions", "horizon", "control_hz",
                 "image_size", "action_dim", "state_dim"):
      setattr(self, name, getattr(env, name))

  def start(self, state: State) -> State:
    """The imagined episode that starts from one real env state []."""
    obs = {self.model.image_key: state.obs[self.model.image_key], "state": state.obs["state"]}
    z = self.model.encode(self.params, jax.tree.map(lambda x: x[None], obs))[0]
    info = {k: state.info[k] for k in ("task_id", "instruction_id", "step", "error")}
    data = {"latent": z, "context": obs[self.model.image_key], "streak": jnp.int32(0)}
    return State(data=data, obs=obs, reward=jnp.float32(0.0), done=state.done,
                 success=state.success, info=info)

  def reset(self, rng: jax.Array) -> State:
    return self.start(self.env.reset(rng))

  def reset_task(self, rng: jax.Array, task_id: jax.Array) -> State:
    return self.start(self.env.reset_task(rng, task_id))

  def step(self, state: State, action: jax.Array) -> State:
    """One imagined control step of one env (see the module docstring)."""
    bad = ~jnp.all(jnp.isfinite(action))
    a = jnp.where(bad, 0.0, action).astype(jnp.float32)
    z = self.model.advance(self.params, state.data["latent"][None], a[None])
    reward, prob = self.model.outcome(self.params, z, state.info["instruction_id"][None])
    context = state.data["context"]
    obs = jax.tree.map(lambda x: x[0], self.model.decode(self.params, z, context[None]))
    info = dict(state.info)
    info["step"] = state.info["step"] + 1
    info["error"] = state.info["error"] | bad
    # A bad action freezes the imagined world, as it freezes the physics.
    z = jnp.where(bad, state.data["latent"], z[0])
    streak = jnp.where((prob[0] > 0.5) & ~bad, state.data["streak"] + 1, 0)
    success = state.success | (streak >= self.success_steps)
    done = (info["step"] >= self.horizon) | info["error"]
    return State(data={"latent": z, "context": context, "streak": streak}, obs=obs,
                 reward=jnp.where(bad, 0.0, reward[0]), done=done, success=success, info=info)
