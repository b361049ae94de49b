"""DDPM noise schedule and the generalized DDIM update (pure functions, jit-able).

Cosine schedule (Nichol & Dhariwal 2021, eq. 17, offset s = 0.008, betas clipped at 0.999):
``alpha_bar(t) = f(t) / f(0)``, ``f(t) = cos^2((t / T + s) / (1 + s) * pi / 2)``.

Sampling (Song et al. 2021, DDIM, eq. 12) over a decreasing subsequence of the T training steps:
``x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z`` with
``sigma = eta * sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev))``. ``eta = 1`` over all T
steps is exactly DDPM ancestral sampling with the posterior variance (beta tilde); over fewer
steps it is the respaced DDPM sampler; ``eta = 0`` is deterministic DDIM.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def cosine_alpha_bars(num_steps: int, s: float = 0.008) -> np.ndarray:
  """float32 [T]: alpha_bar at training steps 0..T-1 (step t has noise level ab[t], t=0 least)."""
  if num_steps < 1:
    raise ValueError(f"cosine_alpha_bars: num_steps must be >= 1, got {num_steps}")
  x = np.arange(num_steps + 1, dtype=np.float64) / num_steps
  f = np.cos((x + s) / (1 + s) * math.pi / 2) ** 2
  betas = np.clip(1.0 - f[1:] / f[:-1], 0.0, 0.999)
  return np.cumprod(1.0 - betas).astype(np.float32)


def sampling_timesteps(num_train_steps: int, num_steps: int) -> np.ndarray:
  """int32 [num_steps]: decreasing, evenly spaced training steps, first T - 1, last 0."""
  if not 1 <= num_steps <= num_train_steps:
    raise ValueError(f"diffusion sampling: num_steps={num_steps} must lie in [1, "
                     f"num_train_steps={num_train_steps}]")
  return np.round(np.linspace(num_train_steps - 1, 0, num_steps)).astype(np.int32)


def ddim_mean_std(x: Array, eps: Array, ab_t: Array, ab_prev: Array, eta: float,
                  clip: float) -> tuple[Array, Array]:
  """Mean and std of the generalized DDIM transition p(x_prev | x) (see the module docstring).

  Args:
    x: the current sample x_t [...]; eps: predicted noise, same shape.
    ab_t, ab_prev: alpha_bar at the current and next (less noisy) step (1.0 after the last),
      scalars or arrays broadcasting against ``x``.
    eta: 0 = DDIM, 1 = DDPM.
    clip: clip the predicted x0 to [-clip, clip] (0 = no clipping); eps is recomputed from the
      clipped x0 so the update stays consistent. Clipping is a deterministic function of x, so
      the transition stays an exact Gaussian.

  Returns:
    (mean like ``x``, sigma broadcast of ``ab_t`` and ``ab_prev``); ``x_prev = mean + sigma z``.
  """
  x0 = (x - jnp.sqrt(1.0 - ab_t) * eps) / jnp.sqrt(ab_t)
  if clip > 0:
    x0 = jnp.clip(x0, -clip, clip)
    eps = (x - jnp.sqrt(ab_t) * x0) / jnp.sqrt(1.0 - ab_t)
  sigma = eta * jnp.sqrt((1.0 - ab_prev) / (1.0 - ab_t) * (1.0 - ab_t / ab_prev))
  direction = jnp.sqrt(jnp.maximum(1.0 - ab_prev - sigma**2, 0.0)) * eps
  return jnp.sqrt(ab_prev) * x0 + direction, sigma


def ddim_step(x: Array, eps: Array, ab_t: Array, ab_prev: Array, eta: float, noise: Array,
              clip: float) -> Array:
  """One generalized DDIM update: ``mean + sigma * noise`` of :func:`ddim_mean_std`.

  Args:
    x, eps, ab_t, ab_prev, eta, clip: as :func:`ddim_mean_std`; noise: standard normal like ``x``.

  Returns:
    x_prev, same shape and dtype as ``x``.
  """
  mean, sigma = ddim_mean_std(x, eps, ab_t, ab_prev, eta, clip)
  return mean + sigma * noise


def gaussian_log_prob(x: Array, mean: Array, std: Array, num_event_dims: int) -> Array:
  """Log-density of x under N(mean, std^2 I), summed over the last ``num_event_dims`` axes.

  Args:
    x, mean: same shape [..., *event]; std: positive, broadcasting against them.

  Returns:
    float32 [...] (the batch axes).
  """
  std = jnp.broadcast_to(std, x.shape)
  z = (x - mean) / std
  lp = -0.5 * jnp.square(z) - jnp.log(std) - 0.5 * math.log(2.0 * math.pi)
  return jnp.sum(lp, axis=tuple(range(-num_event_dims, 0)))
