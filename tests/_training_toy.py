"""The two models of the training tests and their deterministic synthetic data source.

* ``"policy"``: the real :mod:`vla_jax.models.policy` with the flow head at micro sizes (ViT
  1 x 16 over 16 x 16 images, Gemma 1 x 16, action expert width 8; 9,474 params): images,
  attention, the action expert and the prefix KV cache all run in every train step. The sharding
  and SIGKILL-resume tests use it: the failures they catch live in those paths. A 5-step run
  costs about 26 CPU-seconds, nearly all XLA compilation (init and train step).
* ``"mlp"``: :class:`ToyModel`, an MLP over the proprio history (about 6 CPU-seconds a run):
  the tests of the loop's own logic (schedules, NaN stop, SIGTERM, multi-host) and compile_check's
  memory ratios (which need a few big kernels) use it.

Shared by tests/test_training*.py, test_sharding.py, test_multihost.py, test_resume.py and the
subprocess worker ``_training_worker.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vla_jax.models import policy as policy_lib
from vla_jax.training import default_train_config

T, S, H, D, L, IMG = 2, 4, 3, 2, 5, 16  # history, state dim, horizon, action dim, text len, pixels.
TEXT_VOCAB = 20  # Text token ids are in [1, TEXT_VOCAB).
MODELS = ("policy", "mlp")


class _MLP(nn.Module):
  hidden: int

  @nn.compact
  def __call__(self, x):
    x = nn.gelu(nn.Dense(self.hidden)(x))
    x = nn.gelu(nn.Dense(self.hidden)(x))
    return nn.Dense(H * D)(x)


class ToyModel:
  """MLP from the flattened ``state`` history (+ mean text token) to the action chunk.

  ``loss`` is the action-masked MSE with input noise drawn from ``rng`` (so the per-step rng
  matters for exact resume). ``nan_at_step``: the loss becomes NaN once ``params`` reach that many
  updates, emulated through a batch flag (``batch['poison']``) to keep the model pure.
  """

  def __init__(self, hidden: int = 32, noise: float = 0.01):
    self.net = _MLP(hidden)
    self.noise = noise

  def _features(self, batch):
    state = batch["state"] * batch["obs_mask"][..., None]
    text = jnp.sum(batch["text_tokens"] * batch["text_mask"], -1, keepdims=True) / 10.0
    return jnp.concatenate([state.reshape(state.shape[0], -1), text.astype(jnp.float32)], -1)

  def init(self, rng, example_batch):
    return self.net.init(rng, self._features(example_batch))["params"]

  def loss(self, params, batch, rng):
    x = self._features(batch)
    x = x + self.noise * jax.random.normal(rng, x.shape)
    pred = self.net.apply({"params": params}, x).reshape(-1, H, D)
    err = jnp.mean((pred - batch["actions"]) ** 2, -1)
    mask = batch["action_mask"].astype(jnp.float32)
    loss = jnp.sum(err * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    if "poison" in batch:  # NaN injection for the bad-input test.
      loss = loss + jnp.where(jnp.any(batch["poison"]), jnp.nan, 0.0)
    return loss, {"mse": loss}


_W = np.random.default_rng(123).normal(size=(T * S, H * D)).astype(np.float32) / 3.0


def global_batch(step: int, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
  """The deterministic global batch of ``step`` (batch contract, tiny shapes)."""
  rng = np.random.default_rng((seed, step))
  state = rng.normal(size=(batch_size, T, S)).astype(np.float32)
  obs_mask = np.ones((batch_size, T), bool)
  obs_mask[: batch_size // 4, 0] = False  # Some episodes start inside the history window.
  state = state * obs_mask[..., None]
  actions = np.tanh(state.reshape(batch_size, -1) @ _W).reshape(batch_size, H, D)
  action_mask = np.ones((batch_size, H), bool)
  action_mask[: batch_size // 4, -1] = False
  tokens = rng.integers(1, TEXT_VOCAB, size=(batch_size, L)).astype(np.int32)
  return {
      "image/base": rng.integers(0, 255, size=(batch_size, T, IMG, IMG, 3), dtype=np.uint8),
      "obs_mask": obs_mask, "state": state,
      "text_tokens": tokens, "text_mask": np.ones((batch_size, L), bool),
      "actions": actions.astype(np.float32), "action_mask": action_mask,
  }


def make_data_iterator(seed: int = 0, poison_step: int | None = None, on_batch=None):
  """A ``make_data_iterator`` factory: each process slices its rows out of the global batch.

  ``poison_step``: the batch of that step gets ``poison=True`` (the toy loss turns NaN).
  ``on_batch(step)``: called before yielding the batch of ``step`` (tests send signals there).
  """
  def factory(*, start_step, local_batch_size, process_index, process_count):
    step = start_step
    while True:
      if on_batch is not None:
        on_batch(step)
      batch = global_batch(step, local_batch_size * process_count, seed)
      rows = slice(process_index * local_batch_size, (process_index + 1) * local_batch_size)
      batch = {k: v[rows] for k, v in batch.items()}
      batch["poison"] = np.full((local_batch_size,), step == poison_step)
      yield batch
      step += 1
  return factory


def tiny_policy_config() -> ml_collections.ConfigDict:
  """The flow policy at the smallest sizes that still run every path of the real one."""
  c = policy_lib.default_policy_config("flow")
  c.backbone.vit.update(width=16, depth=1, mlp_dim=32, num_heads=2, patch_size=8, image_size=IMG,
                        head_dim=16)  # head_dim: the ViT's output projection to the LM width.
  c.backbone.llm.update(width=16, depth=1, mlp_dim=32, num_heads=2, num_kv_heads=1, head_dim=8)
  c.flow.update(expert_width=8, expert_mlp_dim=16)
  return c


def make_model(name: str = "mlp"):
  """The model ``name`` (one of :data:`MODELS`) for :func:`global_batch`'s shapes."""
  if name == "mlp":
    return ToyModel()
  if name == "policy":
    return policy_lib.make_policy(tiny_policy_config(), action_dim=D, action_horizon=H,
                                  state_dim=S, text_vocab_size=TEXT_VOCAB)
  raise ValueError(f"_training_toy: unknown model '{name}'; known: {MODELS}")


def make_config(model: str = "mlp", **train_overrides) -> ml_collections.ConfigDict:
  """A full experiment config for ``model`` with a tiny ``train`` section."""
  train = default_train_config()
  train.update(num_steps=6, batch_size=8, learning_rate=1e-2, warmup_steps=1, log_every=2,
               checkpoint_every=2, keep_checkpoints=2, sharding_min_size=64)
  mesh = train_overrides.pop("mesh", None)
  train.update(**train_overrides)
  if mesh is not None:
    train.mesh.update(**mesh)
  config = ml_collections.ConfigDict()
  if model == "policy":
    config.model = ml_collections.ConfigDict({"name": "policy"})
    config.policy = tiny_policy_config()
  else:
    config.model = ml_collections.ConfigDict({"name": "toy", "hidden": 32})
  config.train = train
  return config


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO_ROOT, "tests", "_training_worker.py")


def xla_flags(num_devices: int) -> str:
  """XLA_FLAGS for a subprocess with ``num_devices`` simulated CPU devices and this process's
  other flags (conftest.py's compiler settings: a run meant to equal one in this process
  bit for bit must compile with the same ones)."""
  return (f"{os.environ.get('XLA_FLAGS', '')} "
          f"--xla_force_host_platform_device_count={num_devices}").strip()


def start_worker(spec: dict, num_devices: int = 1) -> subprocess.Popen:
  """Starts ``_training_worker.py`` with ``num_devices`` simulated CPU devices (set before jax)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="2",
             XLA_FLAGS=xla_flags(num_devices))
  return subprocess.Popen([sys.executable, WORKER, json.dumps(spec)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish_worker(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
  """Waits for a worker; returns ``(returncode, combined output)``."""
  out, _ = proc.communicate(timeout=timeout)
  return proc.returncode, out


def reference_run(workdir: str, model: str = "mlp", **train_overrides):
  """The same run of ``model`` on ONE device in this process (the baseline every layout must
  match, and the resume of an interrupted worker run)."""
  from vla_jax.training import mesh as mesh_lib
  from vla_jax.training import trainer
  config = make_config(model, **train_overrides)
  one = mesh_lib.make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1])
  return trainer.train(config, workdir, model=make_model(model),
                       make_data_iterator=make_data_iterator(), mesh=one,
                       print_fn=lambda *a, **k: None)
