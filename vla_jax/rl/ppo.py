"""PPO's advantages: generalized advantage estimation over a batched, time-major rollout.

Truncation and termination differ (Pardo et al. 2018): an episode that ends by the horizon
(``truncated``) is bootstrapped with the value of the state it reached, one that ends by success
or an error (``terminal``) is not; in both cases nothing flows back across the episode's end.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def gae(rewards: Array, values: Array, next_values: Array, terminal: Array, done: Array,
        valid: Array, gamma: float, lam: float) -> tuple[Array, Array]:
  """``(advantages, returns)`` float32 [T, N] (0 where ``valid`` is False).

  Args:
    rewards: float [T, N], reward of step t. values: float [T, N], V(s_t).
    next_values: float [T, N], V(s_{t+1}) (the last row: the value of the state after the
      rollout's final step).
    terminal, done, valid: bool [T, N]: the step ended the episode without / with or without
      bootstrapping, and the env was running at step t.
    gamma, lam: discount and GAE's lambda.
  """
  f32 = jnp.float32
  delta = rewards + gamma * next_values * (1.0 - terminal.astype(f32)) - values
  carry_on = gamma * lam * (1.0 - done.astype(f32))

  def back(adv_next, xs):
    d, c, v = xs
    adv = jnp.where(v, d + c * adv_next, 0.0)
    return adv, adv

  _, adv = jax.lax.scan(back, jnp.zeros_like(rewards[0], f32),
                        (delta.astype(f32), carry_on, valid), reverse=True)
  return adv, jnp.where(valid, adv + values, 0.0)
