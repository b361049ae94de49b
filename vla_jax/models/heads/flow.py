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

RL (two ways to get a policy ratio; ``vla_jax.rl``):

* Flow-Noise (ReinFlow, Zhang et al. 2025; the noise-injected flow of piRL): Gaussian noise of std
  ``noise_std`` (normalized action units, per Euler step) is added after every Euler step, so the
  chain ``x_0 ~ N(0, temperature^2) -> x_1 -> ... -> x_K = actions`` is a Markov chain of
  Gaussians ``x_{k+1} ~ N(x_k + dt v(x_k, t_k), noise_std^2)`` whose log-likelihood is exact
  (:meth:`FlowHead.sample_stochastic` records the chain, :meth:`FlowHead.log_prob` re-scores it
  with all K velocities in one folded pass, as level-2 copies). The std is scheduled (a config
  value), not learned: ReinFlow's learnable noise network is a possible extension.
* FPO (Flow Policy Optimization, McAllister et al. 2025): no likelihood; the ratio is
  ``exp(L_old - L_theta)`` from per-sample conditional flow-matching losses of the executed chunk
  at fixed (noise, time) pairs (:meth:`FlowHead.cfm_losses`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from vla_jax.models import gemma, vlm
from vla_jax.models.heads import common

Array = jax.Array


def expert_layers(backbone_config: vlm.VLMConfig, expert: gemma.GemmaConfig, state_dim: int,
                  action_dim: int) -> tuple[nn.Module, ...]:
  """For a ``setup()``: ``(backbone, action_in_proj, time_mlp_in, time_mlp_out,
  action_out_proj)`` of pi0's action expert, assigned to attributes of those names (the names
  :func:`expert_suffix` and :func:`expert_output` read, and the parameter names checkpoints
  hold)."""
  w = expert.width
  return (common.Backbone(backbone_config, (expert,), state_dim), nn.Dense(w), nn.Dense(w),
          nn.Dense(w), nn.Dense(action_dim))


def expert_suffix(mod, x_t: Array, t: Array, prefix_mask: Array):
  """The action expert's suffix for x_t [B, M, H, D] at times t [B, M] in [0, 1]: the M copies
  folded into the batch (row b * M + m): tokens [B*M, H, We], positions [B*M, H], mask
  [B*M, H, P+H], prefix_mask [B*M, P].

  ``mod`` is a bound module with pi0's action-expert layers (``expert``, ``action_in_proj``,
  ``time_mlp_in``, ``time_mlp_out``): :class:`FlowModule`, or the diffusion head's expert
  denoiser, which shares this architecture.
  """
  b, m, h, _ = x_t.shape
  a = mod.action_in_proj(x_t)  # [B, M, H, We]
  temb = common.sinusoidal_embedding(t, mod.expert.width)[:, :, None]  # [B, M, 1, We]
  x = jnp.concatenate([a, jnp.broadcast_to(temb, a.shape)], axis=-1)
  x = mod.time_mlp_out(nn.swish(mod.time_mlp_in(x))).reshape(b * m, h, -1)
  prefix_mask = jnp.repeat(prefix_mask, m, axis=0)
  positions = common.suffix_positions(prefix_mask, h)
  mask = common.suffix_mask(prefix_mask, jnp.zeros((h,), jnp.int32))
  return x, positions, mask, prefix_mask


def expert_output(mod, x_t: Array, t: Array, prefix_mask: Array, cache: dict) -> Array:
  """The action expert's output float32 [B, M, H, D] (``action_out_proj``) for x_t
  [B, M, H, D] at times t [B, M] over a prefix KV cache shared by the M copies of a row (see
  :func:`expert_suffix` for ``mod``; it also needs ``backbone`` and ``action_out_proj``)."""
  m = x_t.shape[1]
  x, positions, mask, prefix_mask = expert_suffix(mod, x_t, t, prefix_mask)
  if m > 1:
    cache = jax.tree.map(lambda c: jnp.repeat(c, m, axis=1), cache)
  out = mod.backbone.run_suffix([None, x], prefix_mask, positions, mask, cache)[1]
  return mod.action_out_proj(out).astype(jnp.float32).reshape(x_t.shape)


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
    (self.backbone, self.action_in_proj, self.time_mlp_in, self.time_mlp_out,
     self.action_out_proj) = expert_layers(self.backbone_config, self.expert, self.state_dim,
                                           self.action_dim)

  def _suffix(self, x_t: Array, t: Array, prefix_mask: Array):
    return expert_suffix(self, x_t, t, prefix_mask)

  def velocity(self, x_t: Array, t: Array, prefix_mask: Array, cache: dict) -> Array:
    """Velocity float32 [B, M, H, D] of x_t [B, M, H, D] at times t [B, M] over a prefix cache
    (``cache`` {"k", "v"} [depth, B, P, K, Hd], shared by the M copies of a row)."""
    return expert_output(self, x_t, t, prefix_mask, cache)

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

  def cfm_losses(self, obs: Mapping[str, Array], actions: Array, noise: Array, t: Array) -> Array:
    """Per-sample flow-matching losses float32 [B, M] of chunks ``actions`` [B, H, D] at given
    ``noise`` [B, M, H, D] and times ``t`` [B, M] (FPO): mean squared velocity error over H, D."""
    tb = t[..., None, None]
    x_t = tb * noise + (1.0 - tb) * actions[:, None].astype(jnp.float32)
    prefix_mask, cache = self.prefix(obs)
    v = self.velocity(x_t, t, prefix_mask, cache)
    return jnp.mean(jnp.square(v - (noise - actions[:, None])), axis=(-2, -1))


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

  def _check_stochastic(self, num_steps, noise_std, temperature):
    """``(K, noise_std, temperature)``; ``noise_std`` is a float or an array [D] (a learned std,
    possibly traced: then its positivity is the caller's, e.g. ``vla_jax.rl.noise_std``)."""
    n = int(num_steps or self.num_steps)
    temp = self.noise_temperature if temperature is None else float(temperature)
    if n < 1:
      raise ValueError(f"FlowHead: num_steps must be >= 1, got {n}")
    if isinstance(noise_std, (int, float)):
      if not noise_std > 0:
        raise ValueError(f"FlowHead: noise_std must be > 0 for an exact likelihood, got "
                         f"{noise_std}")
      noise_std = float(noise_std)
    elif jnp.shape(noise_std) not in ((), (self.module.action_dim,)):
      raise ValueError(f"FlowHead: noise_std must be a scalar or [D={self.module.action_dim}], "
                       f"got shape {jnp.shape(noise_std)}")
    if not temp > 0:
      raise ValueError(f"FlowHead: noise_temperature must be > 0 for an exact likelihood, got "
                       f"{temp}")
    return n, noise_std, temp

  def sample_stochastic(self, params, obs, rng, num_steps: int | None = None,
                        noise_std: float = 0.1, noise_temperature: float | None = None,
                        scored_actions: int | None = None) -> dict[str, Array]:
    """Flow-Noise sampling: Euler steps with Gaussian noise after each (module docstring).

    Args:
      num_steps: K Euler steps (static; default ``self.num_steps``).
      noise_std: std of the noise added after every step, normalized action units (> 0): a
        float, or float32 [D] per action dimension (a learned std, ``vla_jax.rl.noise_std``).
      noise_temperature: std of x_0 (> 0; default ``self.noise_temperature``).
      scored_actions: the returned ``log_prob`` sums the step terms of the chunk's first this
        many actions only (None = all H; see :meth:`log_prob`).

    Returns:
      ``{"actions" [B, H, D], "valid" [B] (all True), "log_prob" float32 [B], "nfe" int32 [],
      "sample": {"chain": float32 [B, K + 1, H, D]}}`` (x_0 ... x_K, x_K = actions).
    """
    n, std, temp = self._check_stochastic(num_steps, noise_std, noise_temperature)
    scored = self._check_scored(scored_actions)
    mod = self.module
    b = obs["obs_mask"].shape[0]
    shape = (b, 1, mod.horizon, mod.action_dim)
    init_key, step_key = jax.random.split(rng)
    x0 = temp * jax.random.normal(init_key, shape)
    prefix_mask, cache = mod.apply({"params": params}, obs, method=FlowModule.prefix)
    dt = -1.0 / n

    def step(x_t, inputs):
      i, key = inputs
      t = jnp.full((b, 1), 1.0 + i * dt, jnp.float32)
      v = mod.apply({"params": params}, x_t, t, prefix_mask, cache, method=FlowModule.velocity)
      eps = jax.random.normal(key, shape)
      x_next = x_t + dt * v + std * eps
      return x_next, (x_next, _std_normal_logpdf(eps[:, :, :scored], std))

    _, (xs, step_logp) = jax.lax.scan(step, x0, (jnp.arange(n, dtype=jnp.float32),
                                                 jax.random.split(step_key, n)))
    chain = jnp.concatenate([x0[:, 0][:, None], jnp.moveaxis(xs[:, :, 0], 0, 1)], axis=1)
    logp = _std_normal_logpdf(x0 / temp, temp) + jnp.sum(step_logp, axis=0)
    return {"actions": chain[:, -1], "valid": jnp.ones((b,), bool), "log_prob": logp,
            "nfe": jnp.asarray(n, jnp.int32), "sample": {"chain": chain}}

  def _chain_velocities(self, params, prefix_mask, cache, chain: Array, n: int) -> Array:
    """Velocities float32 [B, K, H, D] at every chain state but the last, in one folded pass."""
    b = chain.shape[0]
    t = jnp.broadcast_to(1.0 - jnp.arange(n, dtype=jnp.float32) / n, (b, n))
    return self.module.apply({"params": params}, chain[:, :n], t, prefix_mask, cache,
                             method=FlowModule.velocity)

  def _check_scored(self, scored_actions: int | None) -> int:
    h = self.module.horizon
    if scored_actions is None:
      return h
    if not 1 <= scored_actions <= h:
      raise ValueError(f"FlowHead: scored_actions={scored_actions} must be in [1, H={h}]")
    return int(scored_actions)

  @staticmethod
  def _chain_log_prob(chain: Array, velocities: Array, n: int, std, temp: float,
                      scored: int) -> Array:
    """Sum of the chain's Gaussian log-densities float32 [B] (x_0's and the step terms of the
    first ``scored`` actions)."""
    means = chain[:, :n] + (-1.0 / n) * velocities
    return (_std_normal_logpdf(chain[:, 0] / temp, temp)
            + _std_normal_logpdf((chain[:, 1:, :scored] - means[:, :, :scored]) / std, std))

  def log_prob(self, params, obs, sample: Mapping[str, Array], num_steps: int | None = None,
               noise_std: float = 0.1, noise_temperature: float | None = None,
               scored_actions: int | None = None) -> Array:
    """Log-likelihood float32 [B] of ``sample["chain"]`` [B, K + 1, H, D] under the Flow-Noise
    chain with these options (equal to :meth:`sample_stochastic`'s ``log_prob`` for the same
    params); differentiable in ``params``.

    ``scored_actions = k`` (RL with receding-horizon execution, ``k = replan_every``) keeps the
    step terms of the chunk's first k actions, the ones the env executes. The last step's noise
    of the other actions never reaches the env, so dropping its terms leaves the policy gradient
    unbiased; their earlier noise reaches the executed actions only through the expert's
    attention, which the dropped terms would have credited (a small bias, for H / k times
    fewer noise terms in the score).
    """
    n, std, temp = self._check_stochastic(num_steps, noise_std, noise_temperature)
    scored = self._check_scored(scored_actions)
    chain = sample["chain"]
    want = (obs["obs_mask"].shape[0], n + 1, self.module.horizon, self.module.action_dim)
    if chain.shape != want:
      raise ValueError(f"FlowHead.log_prob: sample['chain'] must be [B, K+1, H, D] = {want} "
                       f"(num_steps={n}), got {tuple(chain.shape)}")
    prefix_mask, cache = self.module.apply({"params": params}, obs, method=FlowModule.prefix)
    return self._chain_log_prob(chain, self._chain_velocities(params, prefix_mask, cache, chain,
                                                              n), n, std, temp, scored)

  def cfm_losses(self, params, obs, actions: Array, noise: Array, t: Array) -> Array:
    """FPO's per-sample losses float32 [B, M] (see :meth:`FlowModule.cfm_losses`)."""
    return self.module.apply({"params": params}, obs, actions, noise, t,
                             method=FlowModule.cfm_losses)


def _std_normal_logpdf(z: Array, std) -> Array:
  """log N(x; mean, std^2) summed over every axis but the first, from ``z = (x - mean) / std``;
  ``std`` a float or an array broadcasting against the last axis (D)."""
  per = -0.5 * jnp.square(z) - jnp.log(std) - 0.5 * math.log(2 * math.pi)
  return jnp.sum(per, axis=tuple(range(1, z.ndim)))
