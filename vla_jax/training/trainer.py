"""The one train loop: build mesh and state, resume, step, log, checkpoint, stop on NaN/SIGTERM.

``experiments/train.py`` is a thin absl wrapper around :func:`train`, e.g.::

  def make_data_iterator(*, start_step, local_batch_size, process_index, process_count):
    it, _ = pipeline.make_train_iterator(
        config.data, text_tokenizer=tok, batch_size=local_batch_size, seed=config.train.seed,
        process_index=process_index, process_count=process_count, start_step=start_step)
    return it

  trainer.train(config, workdir, model=policy, make_data_iterator=make_data_iterator,
                assets=Assets(norm_stats=stats, tokenizers={"text": tok}))

Multi-host: call :func:`vla_jax.training.distributed.initialize` first, in every process.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from vla_jax.training import assets as assets_lib
from vla_jax.training import checkpoints as ckpt_lib
from vla_jax.training import global_batch, preemption, transfer
from vla_jax.training import mesh as mesh_lib
from vla_jax.training import metrics as metrics_lib
from vla_jax.training import optimizer as optimizer_lib
from vla_jax.training import sharding as sharding_lib
from vla_jax.training import train_state as state_lib
from vla_jax.training import train_step as step_lib


class Model(Protocol):
  """The policy interface the trainer needs (see ``vla_jax.models.policy``).

  Optionally also ``pretrained_params(abstract_params) -> (arrays, description) | None``:
  initial values for some params (``{"a/b/c": host array}``, paths as
  :func:`transfer.named_leaves`) that replace their random init when a run starts from step 0
  (the policy's ``policy.init_from`` backbone).
  """

  def init(self, rng: jax.Array, example_batch: dict) -> Any:
    ...

  def loss(self, params: Any, batch: dict, rng: jax.Array) -> tuple[jax.Array, dict]:
    ...


# make_data_iterator(start_step=, local_batch_size=, process_index=, process_count=) -> iterator of
# host numpy batches (batch contract) of leading size local_batch_size; the batch it yields first
# must be the one of step `start_step` so a resumed run sees the same data order.
DataIteratorFactory = Callable[..., Iterator[dict[str, np.ndarray]]]


class NonFiniteLossError(FloatingPointError):
  """The loss, the gradient norm or an RL rollout metric (``metrics.CHECKED_IF_PRESENT``) became
  NaN/inf; raised without saving the bad state."""


@dataclasses.dataclass
class TrainResult:
  """What :func:`train` returns.

  Attributes:
    state: the final :class:`TrainState` (sharded global arrays).
    step: the step reached (== ``num_steps`` unless preempted).
    preempted: True when SIGTERM stopped the run (a checkpoint at ``step`` was saved).
    history: the logged metric dicts (interval means, with ``step``, ``steps_per_s``...).
    train_step: the jitted step function ``(state, batch) -> (state, metrics)`` that ran.
  """
  state: state_lib.TrainState
  step: int
  preempted: bool
  history: list[dict[str, float]]
  train_step: Callable | None = None


def abstract_train_state(model: Model, train_config: ml_collections.ConfigDict,
                         example_batch: dict, mesh: Mesh) -> tuple[Any, Any]:
  """``(abstract_state, state_shardings)`` without allocating: ShapeDtypeStructs with shardings."""
  optimizer = optimizer_lib.make_optimizer(train_config)
  create = functools.partial(state_lib.create_train_state, model, optimizer,
                             use_ema=train_config.ema_decay > 0)
  shapes = jax.eval_shape(create, jax.random.key_data(jax.random.key(0)), example_batch)
  shardings = sharding_lib.tree_shardings(shapes, mesh, train_config.sharding_min_size)
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          shapes, shardings)
  return abstract, shardings


def initial_train_state(model: Model, train_config: ml_collections.ConfigDict,
                        example_batch: dict, mesh: Mesh, print_fn: Callable[..., None] = print,
                        abstract: tuple[Any, Any] | None = None) -> state_lib.TrainState:
  """The step-0 train state of a new run (sharded global arrays): random init from
  ``train.seed``, then ``model.pretrained_params`` (if the model has it and it returns arrays)
  in place of the params it names, in ``params`` and in the EMA copy.

  Prints one line (process 0) saying what was loaded from where and what kept its random init.
  ``abstract``: :func:`abstract_train_state`'s result when the caller has it already.
  """
  abstract_state, shardings = abstract or abstract_train_state(model, train_config,
                                                               example_batch, mesh)
  # Read (and shape-check) a pretrained checkpoint before compiling anything.
  pretrained = getattr(model, "pretrained_params", None)
  initial = pretrained(abstract_state.params) if pretrained is not None else None
  create = functools.partial(state_lib.create_train_state, model,
                             optimizer_lib.make_optimizer(train_config),
                             use_ema=train_config.ema_decay > 0)
  base_rng = jax.random.key_data(jax.random.key(train_config.seed))
  state = jax.jit(create, out_shardings=shardings)(base_rng, example_batch)
  if initial is None:
    return state
  arrays, source = initial
  # AdamW's state (zero moments) does not depend on the param values: only the params and the
  # EMA params change.
  state = transfer.place_initial_params(state, arrays, shardings)
  if jax.process_index() == 0:
    print_fn(transfer.initial_params_summary(arrays, abstract_state.params, source), flush=True)
  return state


def train(config: ml_collections.ConfigDict, workdir: str, *, model: Model,
          make_data_iterator: DataIteratorFactory, assets: assets_lib.Assets | None = None,
          mesh: Mesh | None = None, print_fn: Callable[..., None] = print,
          callback: Callable[[int, state_lib.TrainState], None] | None = None,
          callback_every: int = 0, make_step: Callable[..., Callable] | None = None
          ) -> TrainResult:
  """Trains ``model`` on the batches of ``make_data_iterator``; resumes from ``workdir``.

  Args:
    config: the full experiment config; ``config.train`` is the section of
      :func:`vla_jax.training.default_train_config`. It is saved with every checkpoint, and a
      resumed run must match it (except :data:`checkpoints.RESUMABLE_KEYS`).
    workdir: holds ``checkpoints/`` and ``tensorboard/``; an existing checkpoint there is resumed
      (and ``model.pretrained_params`` is not called: a resumed run keeps its trained weights).
    model: object with ``init(rng, example_batch)`` and ``loss(params, batch, rng)`` (and
      optionally ``pretrained_params``, see :class:`Model`).
    make_data_iterator: called once with keyword args ``start_step``, ``local_batch_size``,
      ``process_index`` and ``process_count``; yields this process's share of each global batch.
    assets: norm stats / tokenizers / example batch to save with checkpoints (``config`` is filled
      in from ``config`` and ``example_batch`` from the first batch when left as None).
    mesh: defaults to ``make_mesh(config.train.mesh)`` over all devices.
    print_fn: receives the progress lines (process 0 only).
    callback: ``callback(step, state)`` runs (in every process) after each step that is a
      multiple of ``callback_every`` (e.g. a closed-loop evaluation of
      ``state.inference_params()``); it must not keep ``state``, whose buffers the next step
      donates. Called after that step's checkpoint, so a slow callback never delays a save.
    callback_every: steps between callbacks (0 = never).
    make_step: builds the step function ``(state, batch) -> (state, metrics)`` from the
      arguments of :func:`train_step.make_train_step` (default: that function, the supervised
      step on ``model.loss``). RL passes ``vla_jax.rl.step.RLStepBuilder`` (the batch is then
      the iteration's start states, and the step collects rollouts and updates); everything
      else (state, resume, checkpoints, logging, NaN stop, SIGTERM) is this same loop.

  Returns:
    A :class:`TrainResult`.

  Raises:
    NonFiniteLossError: a NaN/inf loss or gradient norm (names the step and its metrics).
    checkpoints.IncompatibleCheckpointError: the workdir's checkpoint does not fit this run.
  """
  if "train" not in config:
    raise KeyError("config has no 'train' section (see vla_jax.training.default_train_config)")
  tc = config.train
  mesh = mesh if mesh is not None else mesh_lib.make_mesh(tc.mesh)
  local_bs = global_batch.local_batch_size(tc.batch_size, mesh)
  assets = dataclasses.replace(assets) if assets is not None else assets_lib.Assets()
  if assets.config is None:
    assets.config = config
  config_dict = assets_lib.config_to_dict(config)

  optimizer = optimizer_lib.make_optimizer(tc)
  schedule = optimizer_lib.learning_rate_schedule(tc)
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), tc.keep_checkpoints,
                                       use_async=tc.async_checkpoints)
  try:
    start_step = checkpointer.latest_step() or 0
    data = make_data_iterator(start_step=start_step, local_batch_size=local_bs,
                              process_index=jax.process_index(), process_count=jax.process_count())
    batch = _next_batch(data, start_step)
    if assets.example_batch is None:
      assets.example_batch = {k: np.asarray(v[:1]) for k, v in batch.items()}
    # One row is enough to trace init (param shapes never depend on the batch size).
    example = {k: np.asarray(v[:1]) for k, v in batch.items()}
    if jax.process_count() > 1:
      # Every process must trace init with identical inputs; each only holds its own rows.
      example = multihost_utils.broadcast_one_to_all(example)
    abstract_state, state_shardings = abstract_train_state(model, tc, example, mesh)

    if start_step:
      checkpointer.check_compatible(start_step, abstract_state, config_dict)
      state = checkpointer.restore_state(start_step, abstract_state)
      if jax.process_index() == 0:
        print_fn(f"Resumed from {checkpointer.directory} at step {start_step}", flush=True)
    else:
      state = initial_train_state(model, tc, example, mesh, print_fn,
                                  abstract=(abstract_state, state_shardings))

    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_state.params))
    if jax.process_index() == 0:
      print_fn(f"Training {num_params / 1e6:.3f}M params on mesh {dict(mesh.shape)} "
               f"({jax.process_count()} processes), global batch {tc.batch_size} "
               f"({local_bs} per process), steps {start_step} -> {tc.num_steps}", flush=True)
      if tc.get("trainable", transfer.DEFAULT_TRAINABLE) != transfer.DEFAULT_TRAINABLE:
        print_fn(transfer.trainable_summary(abstract_state.params, tc.trainable), flush=True)
    step_fn = (make_step or step_lib.make_train_step)(
        model, optimizer, schedule, tc.ema_decay, mesh, state_shardings,
        tc.get("trainable", transfer.DEFAULT_TRAINABLE))
    every = callback_every if callback is not None else 0
    return _loop(tc, state, batch, data, start_step, step_fn, mesh, checkpointer, assets, workdir,
                 print_fn, callback, every)
  finally:
    checkpointer.close()


def _next_batch(data: Iterator[dict], step: int) -> dict:
  try:
    return next(data)
  except StopIteration:
    raise RuntimeError(f"the data iterator ended before step {step}; it must yield at least "
                       "train.num_steps batches") from None


def _loop(tc, state, batch, data, start_step, step_fn, mesh, checkpointer, assets, workdir,
          print_fn, callback, callback_every) -> TrainResult:
  logger = metrics_lib.MetricsLogger(workdir, tc.num_steps, tc.batch_size, print_fn)
  pending: list[tuple[int, dict]] = []  # Device metrics not yet fetched (keeps dispatch async).
  interval: list[dict] = []  # Host metrics since the last progress line.
  history: list[dict] = []
  last_saved = start_step
  step = start_step
  preempted = False
  logger.start(step)
  try:
    with preemption.PreemptionGuard() as guard:
      while step < tc.num_steps:
        state, metrics = step_fn(state, global_batch.to_global(batch, mesh, tc.batch_size))
        step += 1
        pending.append((step, metrics))
        is_last = step == tc.num_steps
        save = is_last or bool(tc.checkpoint_every and step % tc.checkpoint_every == 0)
        preempted = guard.should_stop(step)
        log = is_last or step % tc.log_every == 0
        if log or save or preempted:
          # Fetch and check before any checkpoint: a NaN state is never saved.
          interval += _fetch_and_check(pending, last_saved, checkpointer.directory)
          pending.clear()
        if log:
          history.append(dict(logger.log(step, metrics_lib.mean_metrics(interval)), step=step))
          interval.clear()
        if save or preempted:
          last_saved = checkpointer.save(state, assets)
        if callback_every and step % callback_every == 0 and not preempted:
          t0 = time.perf_counter()
          callback(step, state)
          logger.exclude(time.perf_counter() - t0)
        if preempted:
          checkpointer.wait()
          print_fn(f"SIGTERM: saved checkpoint at step {step} and stopped", flush=True)
          break
        if not is_last:
          batch = _next_batch(data, step)
  finally:
    logger.close()
  return TrainResult(state=state, step=step, preempted=preempted, history=history,
                     train_step=step_fn)


def _fetch_and_check(pending: list[tuple[int, dict]], last_saved: int, ckpt_dir: str) -> list[dict]:
  host = [jax.device_get(m) for _, m in pending]
  bad = metrics_lib.first_nonfinite(host)
  if bad is not None:
    step = pending[bad][0]
    shown = ", ".join(f"{k}={float(v):.6g}" for k, v in sorted(host[bad].items()))
    kept = (f"the last good checkpoint (step {last_saved}) is kept in {ckpt_dir}" if last_saved
            else "no checkpoint was saved yet")
    raise NonFiniteLossError(f"non-finite loss/gradient at step {step} (metrics: {shown}); "
                             f"training stopped, {kept}.")
  return host
