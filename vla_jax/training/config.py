"""The ``train`` section of an experiment config: optimizer, schedule, loop, checkpoints, mesh."""

from __future__ import annotations

import ml_collections


def default_train_config() -> ml_collections.ConfigDict:
  """Returns the default ``train`` ConfigDict (every key the training library reads).

  Keys (units in brackets):
    num_steps: optimizer steps to run in total (a resumed run stops at the same step).
    batch_size: GLOBAL batch size [examples]; split over all processes and devices.
    learning_rate: peak AdamW learning rate, reached after ``warmup_steps``.
    warmup_steps: linear warmup length [steps] from 0 to ``learning_rate``.
    end_lr_fraction: cosine decay ends at ``learning_rate * end_lr_fraction`` at ``num_steps``.
    weight_decay: decoupled AdamW weight decay (applied to arrays with ndim >= 2 only).
    b1, b2, eps: AdamW moments.
    grad_clip: clip gradients to this global norm (0 = no clipping).
    ema_decay: exponential moving average of the params (0 = off; e.g. 0.999); the decay of
      step n is ``min(ema_decay, (1 + n) / (10 + n))`` so early averages forget the init.
    log_every: progress line + TensorBoard scalars every this many steps.
    checkpoint_every: save a checkpoint every this many steps (0 = only at the end).
    keep_checkpoints: keep only the last N checkpoints.
    async_checkpoints: write checkpoints in a background thread (orbax async) while training
      continues; the SIGTERM path and the end of training wait for the write to finish.
    seed: seed of the init rng and of the per-step rngs (``fold_in(base, step)``).
    mesh.data / mesh.fsdp: mesh axis sizes; -1 = all remaining devices (at most one -1).
    cpu_devices: split the host CPU into this many single-threaded XLA devices before JAX starts
      (0 = XLA's default single device; -1 = one per core); see ``mesh.configure_cpu_devices``.
      Applied by the main job (``vla_jax.jobs.main_job.run_main_job``) before its first JAX
      computation.
    sharding_min_size: arrays with fewer elements than this are replicated, not FSDP-split.
    trainable: regex that a parameter's ``/``-joined path (e.g.
      ``backbone/vlm/llm/layers_0/attn/q_einsum/w``) must match IN FULL for it to train; the
      others are frozen: no update, no optimizer state, no weight decay (their EMA stays at
      their value up to rounding). ".*" = everything trains. A pattern that matches nothing is
      an error; the trainer prints the trainable / frozen counts. E.g.
      ``vla_jax.models.policy.FREEZE_BACKBONE`` freezes the VLM of ``policy.init_from``.
  """
  config = ml_collections.ConfigDict()
  config.num_steps = 1000
  config.batch_size = 32
  config.learning_rate = 3e-4
  config.warmup_steps = 100
  config.end_lr_fraction = 0.0
  config.weight_decay = 1e-4
  config.b1 = 0.9
  config.b2 = 0.999
  config.eps = 1e-8
  config.grad_clip = 1.0
  config.ema_decay = 0.0
  config.log_every = 50
  config.checkpoint_every = 500
  config.keep_checkpoints = 3
  config.async_checkpoints = False
  config.seed = 0
  config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
  config.cpu_devices = 0
  config.sharding_min_size = 2**14
  config.trainable = ".*"
  return config
