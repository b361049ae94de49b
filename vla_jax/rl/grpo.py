"""GRPO's math: group-relative advantages and the clipped surrogate (pure jnp, jit-able).

GRPO (Shao et al. 2024, DeepSeekMath) replaces PPO's critic by the statistics of a group of G
rollouts from one start state: ``A_i = (R_i - mean(R)) / (std(R) + eps)``. A group whose G
returns are all equal (all success, all failure) carries no signal; dynamic sampling (DAPO, Yu
et al. 2025) drops it. The policy loss is PPO's clipped surrogate with DAPO's asymmetric clip
range ``[1 - clip_low, 1 + clip_high]``, averaged over decisions (not over sequences).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def group_advantages(returns: Array, group_size: int, eps: float = 1e-6
                     ) -> tuple[Array, Array]:
  """``(advantages float32 [N], kept bool [N])`` of episode returns float [N] laid out as
  ``N / group_size`` contiguous groups.

  ``advantages = (R - group mean) / (group std + eps)`` (population std); ``kept`` is False for
  every episode of a group whose returns are all equal (their advantage is 0).
  """
  n = returns.shape[0]
  if n % group_size:
    raise ValueError(f"group_advantages: {n} returns do not split into groups of {group_size}")
  r = returns.astype(jnp.float32).reshape(-1, group_size)
  mean = r.mean(axis=1, keepdims=True)
  std = r.std(axis=1, keepdims=True)
  kept = jnp.broadcast_to(std > 0, r.shape)
  adv = jnp.where(kept, (r - mean) / (std + eps), 0.0)
  return adv.reshape(n), kept.reshape(n)


def clipped_surrogate(log_ratio: Array, advantages: Array, weights: Array, clip_low: float,
                      clip_high: float) -> tuple[Array, dict[str, Array]]:
  """PPO/DAPO clipped policy loss over decisions.

  Args:
    log_ratio: float32 [M] ``log pi_new - log pi_old`` per decision.
    advantages: float32 [M]. weights: float32 [M] (0 = not part of the loss).

  Returns:
    ``(loss float32 [], metrics)``: ``loss = -sum(w * min(r A, clip(r) A)) / sum(w)`` with
    ``r = exp(log_ratio)``; metrics ``clip_fraction`` and ``approx_kl`` (k3 of old vs new).
  """
  ratio = jnp.exp(log_ratio)
  clipped = jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
  surrogate = jnp.minimum(ratio * advantages, clipped * advantages)
  total = jnp.maximum(weights.sum(), 1.0)
  loss = -jnp.sum(weights * surrogate) / total
  clip_frac = jnp.sum(weights * (jnp.abs(ratio - clipped) > 0)) / total
  approx_kl = jnp.sum(weights * (ratio - 1.0 - log_ratio)) / total
  return loss, {"clip_fraction": clip_frac, "approx_kl": approx_kl}


def k3_kl(log_p: Array, log_ref: Array, weights: Array) -> Array:
  """Unbiased non-negative estimate of KL(p || ref) from samples of p (Schulman's k3):
  mean of ``exp(log_ref - log_p) - (log_ref - log_p) - 1`` over weighted decisions."""
  d = jnp.clip(log_ref - log_p, -20.0, 20.0)
  return jnp.sum(weights * (jnp.exp(d) - d - 1.0)) / jnp.maximum(weights.sum(), 1.0)
