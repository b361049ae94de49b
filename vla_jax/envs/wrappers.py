"""Batched env with auto-reset and episode bookkeeping.

``BatchedEnv(env, num_envs)`` vmaps ``reset``/``step`` over ``num_envs`` envs. After each step,
envs whose episode is ``done`` are reset in place (fresh episode from a per-env key carried in the
state), Brax/Playground style: the returned state then holds the *new* episode's observation,
while ``reward``, ``done`` and ``success`` are the finished episode's last step's, so a learner sees
the terminal transition. Reset work is skipped (``lax.cond``) on steps where no env is done.

Bookkeeping in ``info`` (per env): ``episode_return`` float32 and ``episode_length`` int32 of the
running episode; ``episodes`` and ``successes`` int32 counts of finished episodes; ``last_return``
float32 / ``last_success`` bool of the most recently finished episode; ``reset_key`` the PRNG key
of the next auto-reset.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vla_jax.envs.tabletop import State, TabletopEnv

_BOOK = ("episode_return", "episode_length", "episodes", "successes", "last_return",
         "last_success", "reset_key")


class BatchedEnv:
  """``num_envs`` copies of ``env`` stepped together; see module docstring."""

  def __init__(self, env: TabletopEnv, num_envs: int):
    if num_envs < 1:
      raise ValueError(f"BatchedEnv: num_envs must be >= 1, got {num_envs}")
    self.env = env
    self.num_envs = int(num_envs)
    self.action_dim = env.action_dim
    self.horizon = env.horizon

  def _fresh(self, keys: jax.Array) -> State:
    """Resets every env from keys [N, 2]; the next reset keys are split off them."""
    pairs = jax.vmap(jax.random.split)(keys)               # [N, 2, 2]
    state = jax.vmap(self.env.reset)(pairs[:, 0])
    return state, pairs[:, 1]

  def reset(self, rng: jax.Array) -> State:
    """Resets all envs; returns a batched State with a leading [num_envs] axis."""
    state, next_keys = self._fresh(jax.random.split(rng, self.num_envs))
    n = self.num_envs
    info = dict(state.info)
    info.update(episode_return=jnp.zeros(n, jnp.float32), episode_length=jnp.zeros(n, jnp.int32),
                episodes=jnp.zeros(n, jnp.int32), successes=jnp.zeros(n, jnp.int32),
                last_return=jnp.zeros(n, jnp.float32), last_success=jnp.zeros(n, bool),
                reset_key=next_keys)
    return state.replace(info=info)

  def step(self, state: State, action: jax.Array) -> State:
    """Steps all envs with actions float32 [num_envs, action_dim]; auto-resets finished ones."""
    if action.shape != (self.num_envs, self.action_dim):
      raise ValueError(f"BatchedEnv.step: action shape {action.shape}, expected "
                       f"({self.num_envs}, {self.action_dim})")
    book = {k: state.info[k] for k in _BOOK}
    inner = state.replace(info={k: v for k, v in state.info.items() if k not in _BOOK})
    new = jax.vmap(self.env.step)(inner, action)
    done = new.done
    ret = book["episode_return"] + new.reward
    length = book["episode_length"] + 1
    book.update(
        episode_return=jnp.where(done, 0.0, ret), episode_length=jnp.where(done, 0, length),
        episodes=book["episodes"] + done, successes=book["successes"] + (done & new.success),
        last_return=jnp.where(done, ret, book["last_return"]),
        last_success=jnp.where(done, new.success, book["last_success"]))

    def do_reset(args):
      new, keys = args
      fresh, next_keys = self._fresh(keys)
      pick = lambda f, o: jnp.where(jnp.reshape(done, done.shape + (1,) * (f.ndim - 1)), f, o)
      data = jax.tree.map(pick, fresh.data, new.data)
      obs = jax.tree.map(pick, fresh.obs, new.obs)
      info = jax.tree.map(pick, fresh.info, new.info)
      return new.replace(data=data, obs=obs, info=info), jnp.where(done[:, None], next_keys, keys)

    new, book["reset_key"] = jax.lax.cond(jnp.any(done), do_reset, lambda a: a,
                                          (new, book["reset_key"]))
    return new.replace(info={**new.info, **book})
