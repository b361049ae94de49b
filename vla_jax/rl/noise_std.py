"""A learnable Flow-Noise std: one bounded std per action dimension, trained by the policy loss.

ReinFlow (Zhang et al. 2025) learns the noise injected at each Euler step with a small network
and keeps it inside a bounded range so exploration neither vanishes nor swamps the chunk. This
is the state-independent form of that idea (as PPO's Gaussian policies learn a log-std vector):
``std = min + (max - min) * sigmoid(lr_scale * raw)`` per action dimension, ``raw`` float32 [D]
in the params under :data:`NOISE_KEY` (next to the policy's own; the policy's modules ignore the key, so
an RL checkpoint still loads as a policy and evaluates without step noise). The squash keeps
the std in ``[min, max]`` with a gradient everywhere, unlike a clip. The std enters both the
sampler and the exact log-likelihood (``FlowHead.sample_stochastic`` / ``log_prob`` take an
array ``noise_std`` [D]), so the policy-gradient surrogate moves it: up where exploring paid,
down where the noise only cost success. ``lr_scale`` multiplies the std's learning rate: Adam
moves every parameter by about the learning rate per step whatever its gradient, so at the
policy's 1e-4 a few hundred updates would move ``raw`` by ~0.04, the std by under 1% of its range.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

NOISE_KEY = "rl_noise"


def init_noise_params(noise_std: float, action_dim: int, bounds: tuple[float, float],
                      lr_scale: float = 1.0) -> dict:
  """``{"raw": float32 [D]}`` whose std is ``noise_std`` in every dimension.

  Raises:
    ValueError: unless ``0 < min < noise_std < max``.
  """
  low, high = bounds
  if not 0 < low < noise_std < high:
    raise ValueError(f"rl.noise_std_bounds={tuple(bounds)} must satisfy 0 < min < "
                     f"sample_options.flow.noise_std={noise_std} < max")
  p = (noise_std - low) / (high - low)
  return {"raw": jnp.full((action_dim,), math.log(p / (1 - p)) / lr_scale, jnp.float32)}


def noise_std(params: Any, bounds: tuple[float, float], lr_scale: float = 1.0) -> jax.Array:
  """float32 [D]: the std of ``params[NOISE_KEY]`` (normalized action units)."""
  if NOISE_KEY not in params:
    raise KeyError(f"the params have no '{NOISE_KEY}' entry (rl.learn_noise_std adds it at init; "
                   "this state comes from a run without it)")
  low, high = bounds
  return low + (high - low) * jax.nn.sigmoid(lr_scale * params[NOISE_KEY]["raw"])
