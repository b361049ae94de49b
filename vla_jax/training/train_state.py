"""The train state: params, optimizer state, optional EMA params, step and base rng."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


class TrainState(flax.struct.PyTreeNode):
  """Everything a resumed run needs (all leaves are arrays, so orbax saves it as one pytree).

  Attributes:
    step: int32 [], number of optimizer steps taken.
    params: the model params pytree.
    opt_state: optax state for ``params``.
    ema_params: EMA of ``params`` (same tree) or ``{}`` when EMA is off.
    rng: uint32 [2], the base key; step ``s`` uses ``jax.random.fold_in(rng, s)`` so a resumed
      run draws exactly the same randomness as an uninterrupted one.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any
  rng: jax.Array

  def inference_params(self) -> Any:
    """The params to act with: the EMA params when EMA is on, else the raw params."""
    return self.ema_params if self.ema_params else self.params


def create_train_state(model: Any, optimizer: optax.GradientTransformation, rng: jax.Array,
                       example_batch: dict, use_ema: bool) -> TrainState:
  """Initializes params with ``model.init`` and the optimizer state (jit-able, eval_shape-able)."""
  init_rng, step_rng = jax.random.split(rng)
  params = model.init(init_rng, example_batch)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params),
                    ema_params=jax.tree.map(jnp.copy, params) if use_ema else {},
                    rng=step_rng)
