"""PPO's critic: an MLP on the backbone's pooled observation features (``Policy.features``).

Its params live in the train state's params under :data:`VALUE_KEY`, next to the policy's own
(the policy's modules ignore that key, so an RL checkpoint still loads as a policy). The critic
reads the features through ``stop_gradient``: the value loss trains the MLP only and never moves
the backbone the policy acts with (a design choice: a shared trunk trained by both losses needs
their relative weight tuned; piRL attaches its critic to the VLM instead).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

VALUE_KEY = "rl_value"


class ValueMLP(nn.Module):
  """features float [B, W] -> values float32 [B]."""

  hidden: int = 256

  @nn.compact
  def __call__(self, features: jax.Array) -> jax.Array:
    x = nn.gelu(nn.Dense(self.hidden)(features))
    x = nn.gelu(nn.Dense(self.hidden)(x))
    return nn.Dense(1)(x)[..., 0].astype(jnp.float32)


def init_value_params(rng: jax.Array, width: int, hidden: int) -> Any:
  """The critic's params for features of width W."""
  return ValueMLP(hidden).init(rng, jnp.zeros((1, width), jnp.float32))["params"]


def value(policy, params: Any, observation: dict, hidden: int) -> jax.Array:
  """float32 [B]: V(observation) with the critic of ``params[VALUE_KEY]``."""
  if VALUE_KEY not in params:
    raise KeyError(f"the params have no '{VALUE_KEY}' critic (PPO adds one at init; this state "
                   "comes from a run without it)")
  features = jax.lax.stop_gradient(policy.features(params, observation))
  return ValueMLP(hidden).apply({"params": params[VALUE_KEY]}, features)
