"""The ONE jitted train step (every head trains through it), with shardings and donated state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from vla_jax.training import sharding as sharding_lib
from vla_jax.training import transfer
from vla_jax.training.train_state import TrainState


def train_step(state: TrainState, batch: dict, *, model: Any,
               optimizer: optax.GradientTransformation, schedule: optax.Schedule,
               ema_decay: float, trainable: str = transfer.DEFAULT_TRAINABLE,
               ) -> tuple[TrainState, dict]:
  """One optimizer step on ``model.loss``; returns the new state and float32 scalar metrics.

  ``trainable``: ``train.trainable``; the gradients of the other (frozen) params are dropped
  here, so XLA does not compute them, and their EMA stays equal to them.

  Metrics: the model's own metrics plus ``loss``, ``grad_norm`` (of the trainable params, before
  clipping), ``param_norm`` and ``learning_rate`` (of this step).
  """
  rng = jax.random.fold_in(state.rng, state.step)
  (loss, metrics), grads = jax.value_and_grad(model.loss, has_aux=True)(state.params, batch, rng)
  params, opt_state, grads, train_mask = apply_gradients(state.params, state.opt_state, grads,
                                                         optimizer, trainable)
  ema_params = state.ema_params
  if ema_decay > 0:
    # Warm the decay up, (1 + n) / (10 + n) capped at ema_decay (the num_updates rule of TF's
    # ExponentialMovingAverage): a fixed 0.999 would still hold 0.999^2000 = 13.5% of the random
    # init after 2000 steps.
    step = state.step.astype(jnp.float32)
    decay = jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))
    ema_params = jax.tree.map(lambda e, p, t: decay * e + (1.0 - decay) * p if t else e,
                              state.ema_params, params, train_mask)
  metrics = dict(metrics)
  metrics.update(loss=loss, grad_norm=optax.tree.norm(grads), param_norm=optax.tree.norm(params),
                 learning_rate=schedule(state.step))
  metrics = jax.tree.map(lambda m: jnp.asarray(m, jnp.float32), metrics)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            ema_params=ema_params)
  return new_state, metrics


def apply_gradients(params: Any, opt_state: Any, grads: Any,
                    optimizer: optax.GradientTransformation,
                    trainable: str = transfer.DEFAULT_TRAINABLE) -> tuple[Any, Any, Any, Any]:
  """One optimizer update: ``(params, opt_state, grads, train_mask)``, the gradients of frozen
  params (``trainable``, see :mod:`transfer`) zeroed first so XLA does not compute them.

  Shared by every step function (supervised here, RL in ``vla_jax.rl.step``).
  """
  train_mask = jax.tree.map(lambda _: True, params)
  if trainable != transfer.DEFAULT_TRAINABLE:
    train_mask = transfer.trainable_mask(params, trainable)
    grads = jax.tree.map(lambda g, t: g if t else jnp.zeros_like(g), grads, train_mask)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, grads, train_mask


def make_train_step(model: Any, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                    ema_decay: float, mesh: Mesh, state_shardings: Any,
                    trainable: str = transfer.DEFAULT_TRAINABLE) -> Callable:
  """``jit(train_step)``: state in/out with ``state_shardings`` (donated), batch over data axes.

  Returns ``step(state, batch) -> (state, metrics)``; metrics come back replicated.
  """
  def step(state, batch):
    return train_step(state, batch, model=model, optimizer=optimizer, schedule=schedule,
                      ema_decay=ema_decay, trainable=trainable)

  return jax.jit(step,
                 in_shardings=(state_shardings, sharding_lib.batch_sharding(mesh)),
                 out_shardings=(state_shardings, sharding_lib.replicated(mesh)),
                 donate_argnums=(0,))
