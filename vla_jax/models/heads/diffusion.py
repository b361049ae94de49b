"""Continuous diffusion head (Octo, Team et al. 2024; Diffusion Policy, Chi et al. 2023).

Model. ``num_readouts`` learned readout tokens are appended after the prefix in the LM stream as
their own block: they attend to every valid prefix token and to each other, and the prefix never
attends to them (Octo's readouts), so the backbone's own outputs are unchanged by the head. The
mean of their final hidden states conditions an MLP-ResNet denoiser (Octo's diffusion head: input
projection, ``num_blocks`` residual blocks of LayerNorm -> Dense(4w) -> swish -> Dense(w), output
projection) that reads the noisy flattened chunk [H * D] and sine-cosine features of the step and
predicts the noise epsilon.

Training: DDPM with the cosine schedule (:mod:`.ddpm`), ``num_train_steps`` levels (Octo uses 20),
t uniform, epsilon prediction, MSE over D averaged over valid chunk steps (``action_mask``).
Level-2 minibatching: M = ``num_noise_samples`` noised copies per chunk share one prefix pass and
one readout; the denoiser handles each copy independently (no leakage by construction).

Sampling in ``lax.scan``: ``sampler="ddpm"`` (eta = 1) or ``"ddim"`` (eta = 0) over
``num_steps`` evenly spaced levels; the prefix and readouts run once per chunk, the denoiser once
per step (nfe = num_steps). The predicted x0 is clipped to ``[-clip_sample, clip_sample]``
(default 1.0, the quantile-normalized range, as Diffusion Policy's ``clip_sample``; Octo clips
z-scored actions to 5.0; 0 disables): early high-noise x0 estimates are otherwise far off).

RL (DPPO, Ren et al. 2024). ``sample_stochastic`` runs the DDPM ancestral chain x_K -> ... -> x_0
over the same K evenly spaced levels, each step x_{k-1} ~ N(mu_theta(x_k, k), std_k^2 I) with the
posterior mean (x0 clipped inside it as above: a deterministic function of x_k, so the step stays
an exact Gaussian) and ``std_k = max(sigma_k, min_std)``: DPPO clips the std from below (0.1 in its
released configs, ``min_sampling_denoising_std`` = ``min_logprob_denoising_std``) to keep
exploring and, since sigma = 0 on the last step, to keep the likelihood finite. The sampled x_{k-1}
is never clipped (that would break the density): the last step's mean is the clipped x0, so
actions leave [-1, 1] only by the Gaussian tail of min_std; clip them for the env outside the
likelihood, as DPPO does with its final action. It records the chain [B, K+1, H, D] and its
log-likelihood, the sum of the K step log-densities (or of the last ``last_k`` steps: DPPO
fine-tunes only those, the earlier ones count as environment); log N(x_K; 0, I) is left out (it
does not depend on params). ``log_prob`` re-scores a recorded chain in one denoiser call over the
scored steps (prefix and readouts once), with gradients w.r.t. params.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vla_jax.models import gemma, vlm
from vla_jax.models.heads import common, ddpm, flow

Array = jax.Array
SAMPLERS = {"ddpm": 1.0, "ddim": 0.0}
DENOISERS = ("mlp", "expert")
PREDICTIONS = ("epsilon", "v")
MIN_STD = 0.1  # DPPO's min_sampling_denoising_std / min_logprob_denoising_std (see docstring).


class Denoiser(nn.Module):
  """MLP-ResNet epsilon predictor: (noisy chunk [..., H*D], step features, cond) -> eps [..., H*D]."""

  hidden: int
  num_blocks: int
  out_dim: int

  @nn.compact
  def __call__(self, x: Array, time_features: Array, cond: Array) -> Array:
    h = nn.Dense(self.hidden)(jnp.concatenate([x, time_features, cond], axis=-1))
    for _ in range(self.num_blocks):
      y = nn.LayerNorm()(h)
      y = nn.Dense(self.hidden)(nn.swish(nn.Dense(4 * self.hidden)(y)))
      h = h + y
    return nn.Dense(self.out_dim)(nn.swish(h))


class DiffusionModule(nn.Module):
  """Backbone + denoiser; one-shot methods (the sampling loop is in the head).

  ``denoiser_type``: "mlp" (Octo: readout tokens and the MLP-ResNet :class:`Denoiser`) or "expert"
  (pi0's action expert, ``expert`` its Gemma shape: a transformer over the H noisy action tokens
  that attends to the prefix in every layer, the flow head's architecture predicting epsilon at
  time ``t / num_train_steps``; :func:`vla_jax.models.heads.flow.expert_output`).
  ``prediction``: the denoiser's target, "epsilon" (Octo, DDPM) or "v" = sqrt(ab) eps -
  sqrt(1 - ab) x0 (Salimans & Ho 2022): at high noise an epsilon target is nearly x_t itself and
  says little about the action, v stays informative at every level.
  """

  backbone_config: vlm.VLMConfig
  state_dim: int
  action_dim: int
  horizon: int
  num_readouts: int = 1
  hidden: int = 256
  num_blocks: int = 3
  num_train_steps: int = 20
  time_dim: int = 32
  denoiser_type: str = "mlp"
  expert: gemma.GemmaConfig | None = None
  prediction: str = "epsilon"

  def setup(self):
    if self.prediction not in PREDICTIONS:
      raise ValueError(f"DiffusionModule: prediction='{self.prediction}' not in {PREDICTIONS}")
    if self.denoiser_type not in DENOISERS:
      raise ValueError(f"DiffusionModule: denoiser_type='{self.denoiser_type}' not in "
                       f"{DENOISERS}")
    if self.denoiser_type == "expert":
      if self.expert is None:
        raise ValueError("DiffusionModule: denoiser_type='expert' needs the expert's Gemma shape")
      # The same layers and names as FlowModule's: flow.expert_output runs them.
      (self.backbone, self.action_in_proj, self.time_mlp_in, self.time_mlp_out,
       self.action_out_proj) = flow.expert_layers(self.backbone_config, self.expert,
                                                  self.state_dim, self.action_dim)
      return
    self.backbone = common.Backbone(self.backbone_config, (), self.state_dim)
    w = self.backbone_config.llm.width
    self.readouts = self.param("readouts", nn.initializers.normal(1.0 / w**0.5),
                               (self.num_readouts, w))
    self.denoiser = Denoiser(self.hidden, self.num_blocks, self.horizon * self.action_dim)

  def condition(self, obs: Mapping[str, Array]):
    """Observation -> what the denoiser reads: "mlp": the readout embedding float32 [B, W]
    (prefix pass + readout pass); "expert": ``(prefix_mask [B, P], KV cache)``."""
    if self.denoiser_type == "expert":
      _, prefix_mask, cache = self.backbone.run_prefix(obs)
      return prefix_mask, cache
    _, prefix_mask, cache = self.backbone.run_prefix(obs)
    b, r = prefix_mask.shape[0], self.num_readouts
    tokens = jnp.broadcast_to(self.readouts[None], (b, r, self.readouts.shape[-1]))
    positions = common.suffix_positions(prefix_mask, r)
    mask = common.suffix_mask(prefix_mask, jnp.zeros((r,), jnp.int32))
    out = self.backbone.run_suffix([tokens], prefix_mask, positions, mask, cache)[0]
    return jnp.mean(out.astype(jnp.float32), axis=1)

  def predict(self, x_t: Array, t: Array, cond) -> Array:
    """The denoiser's raw output [B, M, H, D] (epsilon or v, per ``prediction``) for x_t
    [B, M, H, D] at integer steps t [B, M]; ``cond`` from :meth:`condition`."""
    if self.denoiser_type == "expert":
      prefix_mask, cache = cond
      frac = t.astype(jnp.float32) / self.num_train_steps
      return flow.expert_output(self, x_t, frac, prefix_mask, cache)
    b, m = x_t.shape[:2]
    feats = common.sinusoidal_embedding(t.astype(jnp.float32) / self.num_train_steps,
                                        self.time_dim)
    c = jnp.broadcast_to(cond[:, None], (b, m, cond.shape[-1]))
    out = self.denoiser(x_t.reshape(b, m, -1), feats, c)
    return out.reshape(x_t.shape)

  def _alpha_bar(self, t: Array) -> Array:
    """alpha_bar float32 [B, M, 1, 1] at integer steps t [B, M]."""
    return jnp.asarray(ddpm.cosine_alpha_bars(self.num_train_steps))[t][..., None, None]

  def eps(self, x_t: Array, t: Array, cond) -> Array:
    """Predicted noise [B, M, H, D] for x_t [B, M, H, D] at integer steps t [B, M]: the
    denoiser's output, or from v-prediction ``eps = sqrt(1 - ab) x_t + sqrt(ab) v``."""
    out = self.predict(x_t, t, cond)
    if self.prediction == "v":
      ab = self._alpha_bar(t)
      return jnp.sqrt(1.0 - ab) * x_t + jnp.sqrt(ab) * out
    return out

  def init_all(self, obs: Mapping[str, Array]) -> Array:
    b = obs["obs_mask"].shape[0]
    x = jnp.zeros((b, 1, self.horizon, self.action_dim))
    return self.eps(x, jnp.zeros((b, 1), jnp.int32), self.condition(obs))

  def loss(self, batch: Mapping[str, Array], rng: Array, num_noise_samples: int):
    """Epsilon- or v-prediction MSE with M = ``num_noise_samples`` noised copies per chunk."""
    common.check_actions(batch, self.horizon, self.action_dim, "DiffusionHead.loss")
    b, m = batch["actions"].shape[0], num_noise_samples
    noise_rng, t_rng = jax.random.split(rng)
    x0 = batch["actions"].astype(jnp.float32)[:, None]
    noise = jax.random.normal(noise_rng, (b, m) + x0.shape[2:])
    t = jax.random.randint(t_rng, (b, m), 0, self.num_train_steps)
    ab = self._alpha_bar(t)
    x_t = jnp.sqrt(ab) * x0 + jnp.sqrt(1.0 - ab) * noise
    target = noise if self.prediction == "epsilon" else (
        jnp.sqrt(ab) * noise - jnp.sqrt(1.0 - ab) * x0)  # v (Salimans & Ho 2022)
    err = jnp.mean(jnp.square(self.predict(x_t, t, self.condition(batch)) - target), axis=-1)
    loss = common.masked_chunk_mean(err, batch["action_mask"])
    return loss, {"eps_mse" if self.prediction == "epsilon" else "v_mse": loss}


@dataclasses.dataclass(frozen=True, eq=False)  # Hashed by identity (jit of bound methods).
class DiffusionHead:
  """Octo-style diffusion behind the policy interface (see the module docstring).

  Attributes:
    module: the :class:`DiffusionModule`.
    sampler: "ddpm" or "ddim" (default sampler); num_steps: default sampling steps.
    num_noise_samples: M for level-2 minibatching; clip_sample: x0 clip (0 = off).
  """

  module: DiffusionModule
  sampler: str = "ddim"
  num_steps: int = 10
  num_noise_samples: int = 1
  clip_sample: float = 1.0

  def __post_init__(self):
    if self.sampler not in SAMPLERS:
      raise ValueError(f"DiffusionHead: sampler='{self.sampler}' not in {sorted(SAMPLERS)}")
    ddpm.sampling_timesteps(self.module.num_train_steps, self.num_steps)  # Validates.

  def init(self, rng: Array, batch: Mapping[str, Array]):
    return self.module.init(common.init_key(rng), batch,
                            method=DiffusionModule.init_all)["params"]

  def loss(self, params, batch, rng):
    return self.module.apply({"params": params}, batch, rng, self.num_noise_samples,
                             method=DiffusionModule.loss)

  def sample(self, params, obs, rng, sampler: str | None = None,
             num_steps: int | None = None) -> dict[str, Array]:
    """Reverse diffusion from pure noise.

    Args:
      sampler: "ddpm" or "ddim" (static; default ``self.sampler``).
      num_steps: denoising steps (static; default ``self.num_steps``; at most num_train_steps).

    Returns:
      ``{"actions": float32 [B, H, D], "valid": bool [B] (all True), "nfe": int32 []}``.
    """
    sampler = sampler or self.sampler
    if sampler not in SAMPLERS:
      raise ValueError(f"DiffusionHead.sample: sampler='{sampler}' not in {sorted(SAMPLERS)}")
    mod = self.module
    steps = ddpm.sampling_timesteps(mod.num_train_steps, int(num_steps or self.num_steps))
    ab = ddpm.cosine_alpha_bars(mod.num_train_steps)
    ab_t = jnp.asarray(ab[steps])
    ab_prev = jnp.asarray([*ab[steps[1:]], 1.0], jnp.float32)
    b = obs["obs_mask"].shape[0]
    cond = mod.apply({"params": params}, obs, method=DiffusionModule.condition)
    init_rng, loop_rng = jax.random.split(rng)
    x = jax.random.normal(init_rng, (b, 1, mod.horizon, mod.action_dim))

    def step(x_t, inputs):
      t, a_t, a_prev, key = inputs
      eps = mod.apply({"params": params}, x_t, jnp.full((b, 1), t), cond,
                      method=DiffusionModule.eps)
      noise = jax.random.normal(key, x_t.shape)
      return ddpm.ddim_step(x_t, eps, a_t, a_prev, SAMPLERS[sampler], noise,
                            self.clip_sample), None

    keys = jax.random.split(loop_rng, len(steps))
    x, _ = jax.lax.scan(step, x, (jnp.asarray(steps), ab_t, ab_prev, keys))
    return {"actions": x[:, 0], "valid": jnp.ones((b,), bool),
            "nfe": jnp.asarray(len(steps), jnp.int32)}

  def _rl_schedule(self, where: str, num_steps: int | None, min_std: float,
                   last_k: int | None):
    """Validated options -> (steps int32 [K], ab_t [K], ab_prev [K] on host, first scored step)."""
    if not min_std > 0:  # Also rejects NaN.
      raise ValueError(f"DiffusionHead.{where}: min_std={min_std} must be > 0 (the last DDPM "
                       "step has sigma 0, so its density needs a floor; DPPO uses 0.1)")
    steps = ddpm.sampling_timesteps(self.module.num_train_steps,
                                    int(num_steps or self.num_steps))
    k = len(steps)
    if last_k is not None and not 1 <= last_k <= k:
      raise ValueError(f"DiffusionHead.{where}: last_k={last_k} must lie in [1, num_steps={k}] "
                       "(or None for all steps)")
    ab = ddpm.cosine_alpha_bars(self.module.num_train_steps)
    ab_prev = np.asarray([*ab[steps[1:]], 1.0], np.float32)
    return steps, ab[steps], ab_prev, k - (k if last_k is None else last_k)

  def _transition(self, params, x_t, t, cond, ab_t, ab_prev, min_std):
    """DDPM step mean and floored std for x_t [B, M, H, D] at levels t [B, M] (ab_*: [M])."""
    eps = self.module.apply({"params": params}, x_t, t, cond, method=DiffusionModule.eps)
    ab_t, ab_prev = ab_t[:, None, None], ab_prev[:, None, None]  # [M, 1, 1] against [B, M, H, D].
    mean, sigma = ddpm.ddim_mean_std(x_t, eps, ab_t, ab_prev, 1.0, self.clip_sample)
    return mean, jnp.maximum(sigma, min_std)

  def sample_stochastic(self, params, obs, rng, num_steps: int | None = None,
                        min_std: float = MIN_STD, last_k: int | None = None) -> dict[str, Array]:
    """DDPM ancestral sampling with a floored std, recording the chain and its log-likelihood.

    Args:
      num_steps: K denoising steps (static; default ``self.num_steps``; at most num_train_steps).
      min_std: floor of each step's std (static, > 0; default 0.1 as DPPO).
      last_k: score only the last ``last_k`` steps (static, in [1, K]; None = all K).

    Returns:
      ``{"actions": float32 [B, H, D] (= x_0, not clipped), "valid": bool [B] (all True),
      "log_prob": float32 [B], "sample": {"chain": float32 [B, K+1, H, D]} (x_K first, x_0
      last), "nfe": int32 [] (K)}``.
    """
    steps, ab_t, ab_prev, first = self._rl_schedule("sample_stochastic", num_steps, min_std,
                                                    last_k)
    mod, k = self.module, len(steps)
    b = obs["obs_mask"].shape[0]
    cond = mod.apply({"params": params}, obs, method=DiffusionModule.condition)  # Once per call.
    init_rng, loop_rng = jax.random.split(rng)
    x_k = jax.random.normal(init_rng, (b, 1, mod.horizon, mod.action_dim))

    def step(x_t, inputs):
      t, a_t, a_prev, key = inputs
      mean, std = self._transition(params, x_t, jnp.full((b, 1), t), cond, a_t[None],
                                   a_prev[None], min_std)
      x_prev = mean + std * jax.random.normal(key, x_t.shape)
      return x_prev, (x_prev[:, 0], ddpm.gaussian_log_prob(x_prev, mean, std, 2)[:, 0])

    keys = jax.random.split(loop_rng, k)
    x, (xs, lps) = jax.lax.scan(step, x_k, (jnp.asarray(steps), jnp.asarray(ab_t),
                                          jnp.asarray(ab_prev), keys))
    chain = jnp.concatenate([x_k, jnp.moveaxis(xs, 0, 1)], axis=1)  # [B, K+1, H, D]
    return {"actions": x[:, 0], "valid": jnp.ones((b,), bool),
            "log_prob": jnp.sum(lps[first:], axis=0),
            "sample": {"chain": chain}, "nfe": jnp.asarray(k, jnp.int32)}

  def log_prob(self, params, obs, sample: Mapping[str, Array], num_steps: int | None = None,
               min_std: float = MIN_STD, last_k: int | None = None) -> Array:
    """Re-scores ``sample["chain"]`` [B, K+1, H, D] (from :meth:`sample_stochastic` with the same
    options): the scored steps' x_k go through the denoiser in one call (M = scored steps).

    Returns:
      float32 [B]: the same sum of step log-densities, differentiable w.r.t. params.
    """
    steps, ab_t, ab_prev, first = self._rl_schedule("log_prob", num_steps, min_std, last_k)
    chain = sample["chain"].astype(jnp.float32)
    mod, k = self.module, len(steps)
    b = chain.shape[0]
    want = (b, k + 1, mod.horizon, mod.action_dim)
    if chain.shape != want:
      raise ValueError(f"DiffusionHead.log_prob: chain shape {chain.shape} != {want} "
                       f"(num_steps={k} must match the sampling call)")
    cond = mod.apply({"params": params}, obs, method=DiffusionModule.condition)
    x_t = chain[:, first:k]  # Unscored earlier steps are not evaluated at all.
    t = jnp.broadcast_to(jnp.asarray(steps[first:]), (b, k - first))
    mean, std = self._transition(params, x_t, t, cond, jnp.asarray(ab_t[first:]),
                                 jnp.asarray(ab_prev[first:]), min_std)
    return jnp.sum(ddpm.gaussian_log_prob(chain[:, first + 1:], mean, std, 2), axis=1)
