"""An action-conditioned latent world model of the tabletop suite.

Model (all deterministic; one latent vector per control step):

- **Encoder** ``z_t = enc(image_t, state_t)``: a strided conv net over the camera image
  (uint8 [H, W, 3], scaled to [-0.5, 0.5]) and an MLP over the proprio state, merged into
  ``latent_dim`` floats.
- **Dynamics** ``z_{t+1} = dyn(z_t, a_t)``: an MLP over ``[z_t, a_t]`` feeding a GRU cell whose
  carry is the latent, so repeated application stays bounded over a 50-step episode. It models
  physics only: it does not see the instruction. An action chunk is ``lax.scan`` of it over the
  chunk (:meth:`WorldModel.imagine`).
- **Decoders** of ``z_t``: the image (transposed convs, for videos and for a policy acting in
  imagination) as a change painted over a *context frame*, the observation the imagination
  started from (the table, zones and resting objects stay pixel-exact; run A of
  docs/experiments/world_model.md painted whole frames and was blurrier than repeating the first
  frame), the proprio state; and, with the instruction's factors (task, object colour,
  shape, zone key; ``instruction_factors``), the reward of the step that led to ``z_t`` and the
  logit of the success predicate holding at ``z_t``. Success is latched as in the env: once the
  predicted probability passes 0.5 it stays true.

Training (:meth:`WorldModel.loss`, through the one train loop) is open-loop over windows of
``K`` control steps: encode the first observation, apply the dynamics to the K executed actions,
and compare every decoded step with the truth (image and state MSE, reward MSE, success BCE),
plus a latent-consistency term ``|z_k - stop_grad(enc(o_k))|^2`` that keeps imagined latents
where the decoders were trained. Windows come from RLDS episodes
(:mod:`vla_jax.world_model.data`).

The batch (host numpy, leading axis B):
  ``image/<camera>`` uint8 [B, K + 1, H, W, 3] (observations before each action and after the
  last), ``context/image/<camera>`` uint8 [B, H, W, 3] (a frame of the same episode at or
  before the window's first: the context the images are painted over), ``state`` float32
  [B, K + 1, S], ``actions`` float32 [B, K, D] (executed env actions in [-1, 1]), ``reward``
  float32 [B, K] and ``success`` bool [B, K] (after each action), ``instruction_id`` int32 [B].
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vla_jax.envs import tasks

# Proprio errors are measured in these units (m, m, m, gripper range): 10 cm and half the
# gripper's travel weigh as much as a unit of reward.
STATE_SCALE = (0.1, 0.1, 0.1, 0.5)


def default_model_config() -> ml_collections.ConfigDict:
  """The ``world_model`` section of a world-model config (every key the model reads)."""
  return ml_collections.ConfigDict({
      "latent_dim": 256,
      "hidden_dim": 256,           # dynamics / decoder MLP width
      "cond_dim": 32,              # per-factor embedding of the instruction
      "channels": "16,32,64",      # encoder conv channels; the decoder mirrors them
      "strides": "4,2,2",          # encoder conv strides (their product divides the image size)
      "window": 8,                 # K: control steps per training window (open loop)
      "image_weight": 1.0,         # loss weights
      "state_weight": 1.0,
      "reward_weight": 1.0,
      "success_weight": 1.0,
      "latent_weight": 1.0,
  })


def instruction_factors() -> np.ndarray:
  """int32 [num_instructions, 4]: (task, object colour, shape, zone key) of each instruction id
  (``vla_jax.envs.tasks.instruction_table``; paraphrases share factors; the zone key of reach
  and lift, which name no zone, is 0)."""
  instructions, ids = tasks.instruction_table()
  out = np.zeros((len(instructions), 4), np.int32)
  seen = np.zeros(len(instructions), bool)
  for index in np.ndindex(*ids.shape):
    i = ids[index]
    if not seen[i]:
      task, color, shape, zone, _ = index
      names_zone = tasks.TASK_NAMES[task] in ("push", "pick_place")
      out[i] = (task, color, shape, zone if names_zone else 0)
      seen[i] = True
  return out


def _ints(config, key: str) -> tuple[int, ...]:
  text = config[key]
  try:
    values = tuple(int(c) for c in str(text).replace("+", ",").split(",") if c.strip())
  except ValueError:
    values = ()
  if not values or min(values) < 1:
    raise ValueError(f"world_model config '{key}': '{text}' must list positive ints, e.g. "
                     "'16,32,64'")
  return values


def _conv_layers(config) -> tuple[tuple[int, ...], tuple[int, ...]]:
  chans, strides = _ints(config, "channels"), _ints(config, "strides")
  if len(chans) != len(strides):
    raise ValueError(f"world_model config: 'channels' ({config.channels}) and 'strides' "
                     f"({config.strides}) must have the same length")
  return chans, strides


class Encoder(nn.Module):
  """(image uint8 [B, H, W, 3], state f32 [B, S]) -> latent f32 [B, Z]."""
  channels: tuple[int, ...]
  strides: tuple[int, ...]
  latent_dim: int
  hidden_dim: int

  @nn.compact
  def __call__(self, image, state):
    x = image.astype(jnp.float32) / 255.0 - 0.5
    for c, st in zip(self.channels, self.strides):
      x = nn.relu(nn.Conv(c, (max(st, 3), max(st, 3)), strides=st, padding="SAME")(x))
    x = x.reshape(x.shape[0], -1)
    s = nn.relu(nn.Dense(self.hidden_dim)(state / jnp.asarray(STATE_SCALE)))
    h = nn.relu(nn.Dense(self.hidden_dim)(jnp.concatenate([x, s], -1)))
    return jnp.tanh(nn.Dense(self.latent_dim)(h))


class ImageDecoder(nn.Module):
  """latent [B, Z] -> change to the context frame, in image units [0, 1] (float32
  [B, H, W, 3])."""
  channels: tuple[int, ...]
  strides: tuple[int, ...]
  image_size: int

  @nn.compact
  def __call__(self, z):
    base = self.image_size // int(np.prod(self.strides))
    x = nn.Dense(base * base * self.channels[-1])(z)
    x = nn.relu(x).reshape(z.shape[0], base, base, self.channels[-1])
    outs = list(reversed(self.channels[:-1])) + [3]
    for i, (c, st) in enumerate(zip(outs, reversed(self.strides))):
      x = nn.ConvTranspose(c, (max(st, 3), max(st, 3)), strides=(st, st), padding="SAME")(x)
      if i + 1 < len(outs):
        x = nn.relu(x)
    return x


class Net(nn.Module):
  """The world model's modules; the methods below are its entry points (``apply(method=)``)."""
  config: Any
  image_size: int
  state_dim: int
  num_factor_values: tuple[int, ...]

  def setup(self):
    c = self.config
    chans, strides = _conv_layers(c)
    self.encoder = Encoder(chans, strides, c.latent_dim, c.hidden_dim)
    self.image_decoder = ImageDecoder(chans, strides, self.image_size)
    self.dyn_in = nn.Sequential([nn.Dense(c.hidden_dim), nn.relu, nn.Dense(c.hidden_dim),
                                 nn.relu])
    self.cell = nn.GRUCell(features=c.latent_dim)
    self.state_head = nn.Sequential([nn.Dense(c.hidden_dim), nn.relu, nn.Dense(self.state_dim)])
    self.embeds = [nn.Embed(n, c.cond_dim) for n in self.num_factor_values]
    self.outcome_head = nn.Sequential([nn.Dense(c.hidden_dim), nn.relu, nn.Dense(c.hidden_dim),
                                       nn.relu, nn.Dense(2)])

  def encode(self, image, state):
    return self.encoder(image, state)

  def advance(self, z, action):
    z, _ = self.cell(z, self.dyn_in(jnp.concatenate([z, action], -1)))
    return z

  def decode_image(self, z, context):
    """Image in [0, 1] (unclipped) of latents [B, Z] over context frames uint8 [B, H, W, 3]."""
    return context.astype(jnp.float32) / 255.0 + self.image_decoder(z)

  def decode_state(self, z):
    return self.state_head(z) * jnp.asarray(STATE_SCALE)

  def outcome(self, z, factors):
    """(reward f32 [B], success logit f32 [B]) at latents [B, Z] for factors int32 [B, 4]."""
    cond = jnp.concatenate([e(factors[:, i]) for i, e in enumerate(self.embeds)], -1)
    out = self.outcome_head(jnp.concatenate([z, cond], -1))
    return out[:, 0], out[:, 1]

  def __call__(self, image, state, action, factors):
    """Touches every module once (for init)."""
    z = self.encode(image, state)
    z1 = self.advance(z, action)
    return self.decode_image(z1, image), self.decode_state(z1), self.outcome(z1, factors)


class WorldModel:
  """The world model's functional interface (see the module docstring).

  Args:
    config: :func:`default_model_config`-like ConfigDict.
    camera: the camera it models (``image/<camera>`` in the batch), e.g. "base".
    image_size: H = W of that camera's images (px).
    state_dim, action_dim: proprio state and action sizes.
  """

  def __init__(self, config: ml_collections.ConfigDict, *, camera: str, image_size: int,
               state_dim: int, action_dim: int):
    _, strides = _conv_layers(config)
    if image_size % int(np.prod(strides)):
      raise ValueError(f"world_model: image_size {image_size} must be divisible by the product "
                       f"of the conv strides {int(np.prod(strides))} ('{config.strides}')")
    if int(config.window) < 1:
      raise ValueError(f"world_model config 'window': {config.window} must be >= 1")
    self.config, self.camera = config, camera
    self.image_key = f"image/{camera}"
    self.context_key = f"context/{self.image_key}"
    self.image_size, self.state_dim, self.action_dim = int(image_size), state_dim, action_dim
    self.factors = jnp.asarray(instruction_factors())
    num_values = tuple(int(v) + 1 for v in np.asarray(self.factors).max(0))
    self.net = Net(config, int(image_size), state_dim, num_values)

  # ------------------------------------------------------------------- the trainer's Model

  def check_batch(self, batch: dict) -> None:
    """Raises ValueError naming a key whose shape does not fit this model."""
    hw = (self.image_size, self.image_size, 3)
    if self.image_key not in batch:
      raise ValueError(f"world model batch: no '{self.image_key}' (has {sorted(batch)})")
    img = batch[self.image_key]
    if tuple(img.shape[2:]) != hw:
      raise ValueError(f"world model batch '{self.image_key}': image shape {tuple(img.shape[2:])}"
                       f" != {hw} (the model's image_size)")
    if self.context_key not in batch:
      raise ValueError(f"world model batch: no '{self.context_key}' (the context frames; has "
                       f"{sorted(batch)})")
    if batch["actions"].shape[-1] != self.action_dim:
      raise ValueError(f"world model batch 'actions': dimension {batch['actions'].shape[-1]} != "
                       f"the model's action_dim {self.action_dim}")
    if batch["state"].shape[-1] != self.state_dim:
      raise ValueError(f"world model batch 'state': dimension {batch['state'].shape[-1]} != "
                       f"the model's state_dim {self.state_dim}")

  def init(self, rng: jax.Array, example_batch: dict) -> Any:
    self.check_batch(example_batch)
    image = jnp.asarray(example_batch[self.image_key][:1, 0])
    state = jnp.asarray(example_batch["state"][:1, 0], jnp.float32)
    action = jnp.zeros((1, self.action_dim), jnp.float32)
    return self.net.init(rng, image, state, action, self.factors[:1])["params"]

  def loss(self, params: Any, batch: dict, rng: jax.Array) -> tuple[jax.Array, dict]:
    """Open-loop window loss (module docstring); metrics are per-term means."""
    del rng  # deterministic
    c = self.config
    images = jnp.asarray(batch[self.image_key])           # [B, K+1, H, W, 3]
    states = jnp.asarray(batch["state"], jnp.float32)      # [B, K+1, S]
    b, k1 = states.shape[:2]
    flat = lambda x: x.reshape((b * k1,) + x.shape[2:])
    k = k1 - 1
    # Targets of the latent-consistency term; under stop_gradient XLA computes no backward pass
    # for these K encodings.
    later = lambda x: x[:, 1:].reshape((b * k,) + x.shape[2:])
    targets = self.encode(params, {self.image_key: later(images), "state": later(states)})
    targets = jax.lax.stop_gradient(targets.reshape(b, k, -1))
    z0 = self.encode(params, {self.image_key: images[:, 0], "state": states[:, 0]})
    latents = self.rollout_latents(params, z0, jnp.asarray(batch["actions"], jnp.float32))
    zs = jnp.concatenate([z0[:, None], latents], 1)        # [B, K+1, Z]
    zflat = flat(zs)
    context = jnp.repeat(jnp.asarray(batch[self.context_key]), k1, axis=0)
    pred_img = self.apply(params, zflat, context, method="decode_image").reshape(images.shape)
    true_img = images.astype(jnp.float32) / 255.0
    image_mse = jnp.mean((pred_img - true_img) ** 2)
    pred_state = self.apply(params, zflat, method="decode_state").reshape(states.shape)
    state_mse = jnp.mean(((pred_state - states) / jnp.asarray(STATE_SCALE)) ** 2)
    factors = self.factors[jnp.asarray(batch["instruction_id"])]
    reward, logit = self.apply(params, latents.reshape(b * k, -1),
                               jnp.repeat(factors, k, axis=0), method="outcome")
    reward, logit = reward.reshape(b, k), logit.reshape(b, k)
    reward_mse = jnp.mean((reward - jnp.asarray(batch["reward"], jnp.float32)) ** 2)
    success = jnp.asarray(batch["success"], jnp.float32)
    success_bce = jnp.mean(jnp.logaddexp(0.0, logit) - success * logit)
    latent_mse = jnp.mean((latents - targets) ** 2)
    loss = (c.image_weight * image_mse + c.state_weight * state_mse + c.reward_weight * reward_mse
            + c.success_weight * success_bce + c.latent_weight * latent_mse)
    accuracy = jnp.mean((logit > 0) == (success > 0.5))
    return loss, {"image_mse": image_mse, "state_mse": state_mse, "reward_mse": reward_mse,
                  "success_bce": success_bce, "success_accuracy": accuracy,
                  "latent_mse": latent_mse}

  # ---------------------------------------------------------------------- functional pieces

  def apply(self, params, *args, method: str):
    return self.net.apply({"params": params}, *args, method=method)

  def encode(self, params: Any, obs: dict[str, jax.Array]) -> jax.Array:
    """Latents f32 [B, Z] of observations {``image/<camera>`` uint8 [B, H, W, 3], ``state``
    f32 [B, S]}."""
    return self.apply(params, jnp.asarray(obs[self.image_key]),
                      jnp.asarray(obs["state"], jnp.float32), method="encode")

  def advance(self, params: Any, z: jax.Array, action: jax.Array) -> jax.Array:
    """One control step: latents [B, Z], actions [B, D] (clipped to [-1, 1]) -> [B, Z]."""
    return self.apply(params, z, jnp.clip(action, -1.0, 1.0), method="advance")

  def rollout_latents(self, params: Any, z0: jax.Array, actions: jax.Array) -> jax.Array:
    """Latents after each action, f32 [B, T, Z], of z0 [B, Z] and actions [B, T, D]
    (``lax.scan`` of :meth:`advance` over time)."""
    def step(z, a):
      z = self.advance(params, z, a)
      return z, z
    _, zs = jax.lax.scan(step, z0, jnp.swapaxes(actions, 0, 1))
    return jnp.swapaxes(zs, 0, 1)

  def decode(self, params: Any, z: jax.Array, context: jax.Array) -> dict[str, jax.Array]:
    """Observation {``image/<camera>`` uint8 [B, H, W, 3], ``state`` f32 [B, S]} of latents
    [B, Z], painted over context frames uint8 [B, H, W, 3] (where the imagination started)."""
    img = self.apply(params, z, jnp.asarray(context), method="decode_image")
    img = jnp.round(jnp.clip(img, 0.0, 1.0) * 255.0).astype(jnp.uint8)
    return {self.image_key: img, "state": self.apply(params, z, method="decode_state")}

  def outcome(self, params: Any, z: jax.Array, instruction_id: jax.Array
              ) -> tuple[jax.Array, jax.Array]:
    """(reward f32 [B], success probability f32 [B]) at latents [B, Z] for the episodes'
    instruction ids int32 [B]."""
    reward, logit = self.apply(params, z, self.factors[instruction_id], method="outcome")
    return reward, jax.nn.sigmoid(logit)

  def imagine(self, params: Any, z0: jax.Array, actions: jax.Array, instruction_id: jax.Array,
              success0: jax.Array | None = None, context: jax.Array | None = None
              ) -> dict[str, jax.Array]:
    """An imagined rollout of actions [B, T, D] from latents z0 [B, Z].

    Returns ``latent`` f32 [B, T, Z], ``reward`` f32 [B, T], ``success`` bool [B, T] (latched
    from ``success0`` bool [B], default False) after each action, and, given the ``context``
    frames uint8 [B, H, W, 3] (the observation z0 encodes), the decoded observations after each
    action (``image/<camera>`` uint8 [B, T, H, W, 3], ``state`` f32 [B, T, S]).
    """
    zs = self.rollout_latents(params, z0, actions)
    b, t = zs.shape[:2]
    flat = zs.reshape(b * t, -1)
    reward, prob = self.outcome(params, flat, jnp.repeat(instruction_id, t, axis=0))
    hit = (prob > 0.5).reshape(b, t)
    if success0 is not None:
      hit = hit.at[:, 0].set(hit[:, 0] | success0)
    out = {"latent": zs, "reward": reward.reshape(b, t),
           "success": jax.lax.cummax(hit.astype(jnp.int32), axis=1).astype(bool)}
    if context is not None:
      obs = self.decode(params, flat, jnp.repeat(context, t, axis=0))
      out.update({k: v.reshape((b, t) + v.shape[1:]) for k, v in obs.items()})
    return out
