"""AdamW with linear warmup + cosine decay and global-norm gradient clipping (optax).

``train.trainable`` (a regex over parameter paths, see :mod:`vla_jax.training.transfer`) splits
the params with ``optax.multi_transform``: the matching ones train with the chain above (clipped
by the global norm of THEIR gradients), the others get zero updates and hold no optimizer state.
"""

from __future__ import annotations

import jax
import ml_collections
import optax

from vla_jax.training import transfer


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear 0 -> ``learning_rate`` over ``warmup_steps``, cosine to ``end_lr_fraction`` x peak."""
  if config.num_steps <= config.warmup_steps:
    raise ValueError(f"train.num_steps={config.num_steps} must exceed "
                     f"train.warmup_steps={config.warmup_steps}")
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate, warmup_steps=config.warmup_steps,
      decay_steps=config.num_steps, end_value=config.learning_rate * config.end_lr_fraction)


def _decay_mask(params):
  # Norm scales and biases (ndim < 2) are not decayed: decaying them only hurts (AdamW paper
  # practice, also big_vision's default).
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The optimizer every head trains with; ``config`` is the ``train`` section."""
  adamw = optax.adamw(learning_rate_schedule(config), b1=config.b1, b2=config.b2, eps=config.eps,
                      weight_decay=config.weight_decay, mask=_decay_mask)
  if config.grad_clip > 0:
    adamw = optax.chain(optax.clip_by_global_norm(config.grad_clip), adamw)
  pattern = config.get("trainable", transfer.DEFAULT_TRAINABLE)
  if pattern == transfer.DEFAULT_TRAINABLE:
    return adamw  # Everything trains: the plain chain (and its state layout).

  def labels(params):
    return jax.tree.map(lambda t: "trainable" if t else "frozen",
                        transfer.trainable_mask(params, pattern))
  return optax.multi_transform({"trainable": adamw, "frozen": optax.set_to_zero()}, labels)
