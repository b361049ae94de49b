"""Flow-matching action expert (pi0, Black et al. 2024), with level-2 minibatching.

Model. A second Gemma expert (narrower than the LM; same depth, heads and head size) shares
attention with the backbone in every layer (:mod:`vla_jax.models.gemma` experts). Its suffix is H
action tokens: ``action_in_proj(x_t)`` concatenated with a sine-cosine embedding of the flow time,
mixed by a two-layer swish MLP (pi0's ``action_time_mlp``); the suffix attends to the whole valid
prefix and bidirectionally to itself; the prefix never attends to it. ``action_out_proj`` maps the
expert outputs to a velocity [H, D].

Flow convention (pi0): ``x_t = t * noise + (1 - t) * actions``, target velocity
``u = noise - actions``, t ~ Beta(1.5, 1) rescaled to [0.001, 1] (pi0 Sec. 4 samples a shifted
Beta that emphasises high noise). Sampling integrates from t = 1 (noise) to t = 0 with
``num_steps`` Euler steps (default 10, as pi0) in ``lax.scan``.

Prefix caching. Training and sampling run the prefix once (``Backbone.run_prefix``) and the suffix
over its read-only KV cache; sampling reuses that one cache for every integration step.
``use_cache=False`` recomputes the whole prefix (images included) at every step: the reference the
test compares against (same actions to 1e-5) and the benchmark's baseline.

Level-2 minibatching (Mini-Diffuser, 2025): ``num_noise_samples`` = M noised copies of every
chunk (own noise and own t) share one prefix pass. The copies are folded into the batch axis
(row ``b * M + m``): B * M suffixes of H tokens, each over its row's prefix KV cache (repeated M
times; its gradient sums over the copies), so copy m sees the prefix and only its own H tokens,
at the same positions as a single copy, and the loss is exactly the mean of M independent
single-copy losses. Design choice: packing the M copies into one suffix of M * H tokens with a
block-diagonal mask (Mini-Diffuser's layout) gives the same numbers but pays attention for
M * H queries over P + M * H keys, quadratic in M; folding pays M * H * (P + H), linear in M.

Loss: mean squared velocity error over D, averaged over valid chunk steps (``action_mask``) and M.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from vla_jax.models import gemma, vlm
from vla_jax.models.heads import common

Array = jax.Array


class FlowModule(nn.Module):
  """Backbone + action expert; one-shot methods (the loops live in :class:`FlowHead`).

  Attributes:
    backbone_config: VLM shape; expert: the action expert's Gemma shape.
    state_dim, action_dim, horizon: S, D, H.
  """

  backbone_config: vlm.VLMConfig
  expert: gemma.GemmaConfig
  state_dim: int
  action_dim: int
  horizon: int

  def setup(self):
    self.backbone = common.Backbone(self.backbone_config, (self.expert,), self.state_dim)
    w = self.expert.width
    self.action_in_proj = nn.Dense(w)
    self.time_mlp_in = nn.Dense(w)
    self.time_mlp_out = nn.Dense(w)
    self.action_out_proj = nn.Dense(self.action_dim)

  def _suffix(self, x_t: Array, t: Array, prefix_mask: Array):
    """x_t [B, M, H, D], t [B, M] -> the M copies folded into the batch (row b * M + m):
    tokens [B*M, H, We], positions [B*M, H], mask [B*M, H, P+H], prefix_mask [B*M, P]."""
    b, m, h, _ = x_t.shape
    a = self.action_in_proj(x_t)  # [B, M, H, We]
    temb = common.sinusoidal_embedding(t, self.expert.width)[:, :, None]  # [B, M, 1, We]
    x = jnp.concatenate([a, jnp.broadcast_to(temb, a.shape)], axis=-1)
    x = self.time_mlp_out(nn.swish(self.time_mlp_in(x))).reshape(b * m, h, -1)
    prefix_mask = jnp.repeat(prefix_mask, m, axis=0)
    positions = common.suffix_positions(prefix_mask, h)
    mask = common.suffix_mask(prefix_mask, jnp.zeros((h,), jnp.int32))
    return x, positions, mask, prefix_mask

  def velocity(self, x_t: Array, t: Array, prefix_mask: Array, cache: dict) -> Array:
    """Velocity float32 [B, M, H, D] of x_t [B, M, H, D] at times t [B, M] over a prefix cache
    (``cache`` {"k", "v"} [depth, B, P, K, Hd], shared by the M copies of a row)."""
    m = x_t.shape[1]
    x, positions, mask, prefix_mask = self._suffix(x_t, t, prefix_mask)
    if m > 1:
      cache = jax.tree.map(lambda c: jnp.repeat(c, m, axis=1), cache)
    out = self.backbone.run_suffix([None, x], prefix_mask, positions, mask, cache)[1]
    return self.action_out_proj(out).astype(jnp.float32).reshape(x_t.shape)

  def velocity_uncached(self, obs: Mapping[str, Array], x_t: Array, t: Array) -> Array:
    """Same as :meth:`velocity` but recomputing the whole prefix in one joint pass (per copy)."""
    emb, prefix_mask = self.backbone.embed_prefix(obs)
    x, positions, mask, prefix_mask = self._suffix(x_t, t, prefix_mask)
    emb = jnp.repeat(emb, x_t.shape[1], axis=0)
    out = self.backbone.run_joint(emb, prefix_mask, [None, x], positions, mask)[1]
    return self.action_out_proj(out).astype(jnp.float32).reshape(x_t.shape)

  def prefix(self, obs: Mapping[str, Array]) -> tuple[Array, dict]:
    """``(prefix_mask bool [B, P], cache {"k", "v"} [depth, B, P, K, Hd])``."""
    _, mask, cache = self.backbone.run_prefix(obs)
    return mask, cache

  def loss(self, batch: Mapping[str, Array], rng: Array, num_noise_samples: int):
    """Flow-matching loss with M = ``num_noise_samples`` noised copies per chunk."""
    common.check_actions(batch, self.horizon, self.action_dim, "FlowHead.loss")
    b, m = batch["actions"].shape[0], num_noise_samples
    noise_rng, time_rng = jax.random.split(rng)
    actions = batch["actions"].astype(jnp.float32)[:, None]  # [B, 1, H, D]
    noise = jax.random.normal(noise_rng, (b, m) + actions.shape[2:])
    t = jax.random.beta(time_rng, 1.5, 1.0, (b, m)) * 0.999 + 0.001
    tb = t[..., None, None]
    x_t = tb * noise + (1.0 - tb) * actions
    u = noise - actions
    prefix_mask, cache = self.prefix(batch)
    v = self.velocity(x_t, t, prefix_mask, cache)
    err = jnp.mean(jnp.square(v - u), axis=-1)  # [B, M, H]
    loss = common.masked_chunk_mean(err, batch["action_mask"])
    return loss, {"flow_mse": loss}


@dataclasses.dataclass(frozen=True, eq=False)  # Hashed by identity (jit of bound methods).
class FlowHead:
  """pi0 flow matching behind the policy interface (see the module docstring).

  Attributes:
    module: the :class:`FlowModule`.
    num_steps: default Euler steps for sampling.
    num_noise_samples: M for level-2 minibatching (1 = standard training).
    noise_temperature: default std of the initial noise x_1 at sampling (1 = the trained
      distribution; < 1 trades sample diversity for precision, 0 = one deterministic ODE
      solution from x_1 = 0; a knob for unimodal experts, e.g. scripted demonstrations).
  """

  module: FlowModule
  num_steps: int = 10
  num_noise_samples: int = 1
  noise_temperature: float = 1.0

  def init(self, rng: Array, batch: Mapping[str, Array]):
    """Params of backbone, expert and projections (uses the uncached joint pass to create all)."""
    b = batch["obs_mask"].shape[0]
    x = jnp.zeros((b, 1, self.module.horizon, self.module.action_dim), jnp.float32)
    return self.module.init(common.init_key(rng), batch, x, jnp.ones((b, 1)),
                            method=FlowModule.velocity_uncached)["params"]

  def loss(self, params, batch, rng):
    return self.module.apply({"params": params}, batch, rng, self.num_noise_samples,
                             method=FlowModule.loss)

  def sample(self, params, obs, rng, num_steps: int | None = None,
             use_cache: bool = True, noise_temperature: float | None = None
             ) -> dict[str, Array]:
    """Euler integration from noise (t = 1) to actions (t = 0).

    Args:
      num_steps: Euler steps (static; default ``self.num_steps``).
      noise_temperature: std of the initial noise (static; default ``self.noise_temperature``).
      use_cache: compute the prefix KV cache once and reuse it at every step (default), or
        recompute the full prefix at every step (reference / benchmark baseline).

    Returns:
      ``{"actions": float32 [B, H, D], "valid": bool [B] (all True), "nfe": int32 []}``; nfe
      counts suffix evaluations (each with a full prefix pass when ``use_cache=False``).
    """
    n = int(num_steps or self.num_steps)
    if n < 1:
      raise ValueError(f"FlowHead.sample: num_steps must be >= 1, got {n}")
    mod = self.module
    b = obs["obs_mask"].shape[0]
    temp = self.noise_temperature if noise_temperature is None else noise_temperature
    if temp < 0:
      raise ValueError(f"FlowHead.sample: noise_temperature must be >= 0, got {temp}")
    x = temp * jax.random.normal(rng, (b, 1, mod.horizon, mod.action_dim))
    dt = -1.0 / n
    if use_cache:
      prefix_mask, cache = mod.apply({"params": params}, obs, method=FlowModule.prefix)

      def velocity(x_t, t):
        return mod.apply({"params": params}, x_t, t, prefix_mask, cache,
                         method=FlowModule.velocity)
    else:
      def velocity(x_t, t):
        return mod.apply({"params": params}, obs, x_t, t, method=FlowModule.velocity_uncached)

    def step(x_t, i):
      t = jnp.full((b, 1), 1.0 + i * dt, jnp.float32)
      return x_t + dt * velocity(x_t, t), None

    x, _ = jax.lax.scan(step, x, jnp.arange(n, dtype=jnp.float32))
    return {"actions": x[:, 0], "valid": jnp.ones((b,), bool), "nfe": jnp.asarray(n, jnp.int32)}
