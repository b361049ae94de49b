"""The training library in one process: sharding rule, schedule, learning, checkpoints, errors."""

import glob
import os
import struct

import _training_toy as toy
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vla_jax.training import (
  checkpoints,
  global_batch,
  mesh,
  optimizer,
  sharding,
  trainer,
)
from vla_jax.training.assets import Assets


def test_partition_spec_rule():
  spec = sharding.partition_spec
  assert spec((4, 4), fsdp_size=2, min_size=64) == jax.sharding.PartitionSpec()  # Too small.
  assert spec((64, 256), 2, 64) == jax.sharding.PartitionSpec(None, "fsdp")  # Largest axis.
  assert spec((256, 6), 4, 64) == jax.sharding.PartitionSpec("fsdp", None)
  assert spec((30, 7), 4, 64) == jax.sharding.PartitionSpec()  # Nothing divisible: replicate.
  assert spec((24, 30), 4, 64) == jax.sharding.PartitionSpec("fsdp", None)  # 30 % 4 != 0.
  assert spec((256, 256), 1, 64) == jax.sharding.PartitionSpec()  # No fsdp axis.


def test_mesh_shape_resolution_and_errors():
  assert mesh.mesh_shape({"data": -1, "fsdp": 2}, 8) == (4, 2)
  assert mesh.mesh_shape({"data": 2, "fsdp": -1}, 8) == (2, 4)
  with pytest.raises(ValueError, match="needs 6 devices"):
    mesh.mesh_shape({"data": 3, "fsdp": 2}, 8)
  with pytest.raises(ValueError, match="at most one axis"):
    mesh.mesh_shape({"data": -1, "fsdp": -1}, 8)
  with pytest.raises(ValueError, match="not divisible by 3"):
    mesh.mesh_shape({"data": -1, "fsdp": 3}, 8)


def test_warmup_cosine_schedule():
  config = toy.make_config(num_steps=100, warmup_steps=10, learning_rate=1.0,
                           end_lr_fraction=0.1).train
  lr = optimizer.learning_rate_schedule(config)
  np.testing.assert_allclose([lr(0), lr(5), lr(10), lr(55), lr(100)],
                             [0.0, 0.5, 1.0, 0.55, 0.1], atol=1e-6)
  with pytest.raises(ValueError, match="num_steps"):
    optimizer.learning_rate_schedule(toy.make_config(num_steps=5, warmup_steps=5).train)


class _FakeTokenizer:
  """Stands in for TextTokenizer: only ``save(dir)`` matters to the checkpoint."""

  def save(self, directory):
    with open(os.path.join(directory, "vocab.txt"), "w") as f:
      f.write("a b c")


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory):
  """40 steps with EMA, keep-last-2 checkpoints, assets; returns (workdir, result, lines)."""
  workdir = str(tmp_path_factory.mktemp("learn"))
  config = toy.make_config(num_steps=40, log_every=10, checkpoint_every=10, keep_checkpoints=2,
                           ema_decay=0.9, learning_rate=1e-2, async_checkpoints=True)
  lines, calls = [], []
  result = trainer.train(
      config, workdir, model=toy.ToyModel(), make_data_iterator=toy.make_data_iterator(),
      assets=Assets(norm_stats={"action": {"mean": [0.0, 1.0]}}, tokenizers={"text":
                                                                               _FakeTokenizer()}),
      print_fn=lambda line, **_: lines.append(line),
      callback=lambda step, state: calls.append((step, int(state.step))), callback_every=15)
  assert calls == [(15, 15), (30, 30)]  # Each call sees the state after `step` updates.
  return workdir, result, lines


def test_model_learns_and_progress_is_reported(learned_run):
  _, result, lines = learned_run
  losses = [h["loss"] for h in result.history]
  assert result.step == 40 and not result.preempted and len(losses) == 4
  assert losses[-1] < 0.4 * losses[0], losses
  assert all(np.isfinite(h["grad_norm"]) and h["examples_per_s"] > 0 for h in result.history)
  assert result.train_step._cache_size() == 1  # 40 steps (and 4 checkpoints), one compilation.
  assert lines[0].startswith("Training 0.002M params on mesh {'data': ")
  assert lines[-1].startswith("step 40/40 loss ")
  for word in ("steps/s", "examples/s", "ETA"):
    assert word in lines[-1]


def _tensorboard_scalars(path: str, tag: str) -> dict[int, float]:
  """Reads one tag from an event file (TFRecord framing: u64 length, u32 crc, data, u32 crc)."""
  from tensorboardX.proto import event_pb2
  with open(path, "rb") as f:
    data = f.read()
  out, i = {}, 0
  while i < len(data):
    (length,) = struct.unpack("<Q", data[i:i + 8])
    event = event_pb2.Event.FromString(data[i + 12:i + 12 + length])
    i += 12 + length + 4
    for value in event.summary.value:
      if value.tag == tag:
        out[event.step] = value.simple_value
  return out


def test_checkpoints_keep_last_n_and_tensorboard(learned_run):
  workdir, result, _ = learned_run
  steps = sorted(int(os.path.basename(p)) for p in glob.glob(f"{workdir}/checkpoints/*"))
  assert steps == [30, 40]
  (events,) = glob.glob(f"{workdir}/tensorboard/events.out.tfevents.*")
  logged = _tensorboard_scalars(events, "train/loss")
  np.testing.assert_allclose([logged[s] for s in (10, 20, 30, 40)],
                             [h["loss"] for h in result.history], rtol=1e-6)
  assert set(_tensorboard_scalars(events, "train/learning_rate")) == {10, 20, 30, 40}


def test_params_only_checkpoint_holds_ema_params_and_assets(learned_run):
  workdir, result, _ = learned_run
  params = checkpoints.load_params(workdir)
  ema = jax.device_get(result.state.ema_params)
  jax.tree.map(np.testing.assert_array_equal, params, ema)
  raw = jax.device_get(result.state.params)
  assert not np.array_equal(params["Dense_0"]["kernel"], raw["Dense_0"]["kernel"])
  assets = checkpoints.load_assets(workdir, step=30)
  assert assets.config["train"]["num_steps"] == 40 and assets.config["model"]["name"] == "toy"
  assert assets.norm_stats == {"action": {"mean": [0.0, 1.0]}}
  with open(os.path.join(assets.tokenizer_dirs["text"], "vocab.txt")) as f:
    assert f.read() == "a b c"
  assert assets.example_batch["state"].shape == (1, toy.T, toy.S)
  assert assets.example_batch["image/base"].dtype == np.uint8
  assert checkpoints.latest_step(workdir) == 40
  assert checkpoints.latest_step(os.path.join(workdir, "checkpoints")) == 40
  assert checkpoints.latest_step(os.path.join(workdir, "nothing_here")) is None
  with pytest.raises(FileNotFoundError, match="no checkpoint at step 7"):
    checkpoints.load_params(workdir, step=7)


def test_incompatible_checkpoint_in_workdir_is_named(learned_run, tmp_path):
  workdir, _, _ = learned_run
  config = toy.make_config(num_steps=40, log_every=10, checkpoint_every=10, keep_checkpoints=2,
                           ema_decay=0.9, learning_rate=1e-2, async_checkpoints=True)
  config.model.hidden = 16
  with pytest.raises(checkpoints.IncompatibleCheckpointError) as err:
    trainer.train(config, workdir, model=toy.ToyModel(hidden=16),
                  make_data_iterator=toy.make_data_iterator())
  msg = str(err.value)
  assert "step 40" in msg and "model.hidden: checkpoint 32 != current 16" in msg
  assert "params/Dense_0/kernel: checkpoint shape (9, 32) != model shape (9, 16)" in msg


def test_nan_loss_stops_with_diagnostic_and_keeps_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path)
  config = toy.make_config(num_steps=10, log_every=5, checkpoint_every=2)
  # The batch of step index 5 is poisoned, so the update producing step 6 has a NaN loss.
  with pytest.raises(trainer.NonFiniteLossError) as err:
    trainer.train(config, workdir, model=toy.ToyModel(),
                  make_data_iterator=toy.make_data_iterator(poison_step=5), print_fn=lambda *a,
                  **k: None)
  msg = str(err.value)
  assert "at step 6" in msg and "loss=nan" in msg and "grad_norm=" in msg
  assert "last good checkpoint (step 4)" in msg
  steps = sorted(int(os.path.basename(p)) for p in glob.glob(f"{workdir}/checkpoints/*"))
  assert steps == [2, 4]
  params = checkpoints.load_params(workdir)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_host_batch_with_wrong_leading_axis_is_named():
  m = mesh.make_mesh({"data": -1, "fsdp": 1})
  batch = toy.global_batch(0, 8)
  batch["state"] = batch["state"][:3]
  with pytest.raises(ValueError, match=r"batch\['state'\] has shape \(3, 2, 4\)"):
    global_batch.to_global(batch, m, 8)


def test_config_without_train_section_is_rejected(tmp_path):
  config = toy.make_config()
  del config["train"]
  with pytest.raises(KeyError, match="no 'train' section"):
    trainer.train(config, str(tmp_path), model=toy.ToyModel(),
                  make_data_iterator=toy.make_data_iterator())


def test_batch_size_not_divisible_by_devices_is_named():
  m = mesh.make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1])
  assert global_batch.local_batch_size(8, m) == 8
  fake = type("FakeMesh", (), {"devices": np.zeros((3, 1)), "shape": {"data": 3, "fsdp": 1}})()
  with pytest.raises(ValueError, match="train.batch_size=8 is not divisible by the 3 devices"):
    global_batch.local_batch_size(8, fake)


def test_exhausted_data_iterator_is_named(tmp_path):
  def empty(**_):
    return iter([])
  with pytest.raises(RuntimeError, match="data iterator ended before step 0"):
    trainer.train(toy.make_config(), str(tmp_path), model=toy.ToyModel(), make_data_iterator=empty)


def test_ema_decay_warms_up_from_the_init():
  """EMA of step n uses decay min(ema_decay, (1 + n) / (10 + n)): the init is forgotten fast."""
  from vla_jax.training import train_state, train_step  # pylint: disable=g-import-not-at-top

  class Drift:  # Loss -w with SGD(1): w grows by exactly 1 per step, starting from 0.
    def loss(self, params, batch, rng):
      del batch, rng
      return -params["w"], {}

  opt = optax.sgd(1.0)
  state = train_state.TrainState(step=jnp.zeros((), jnp.int32), params={"w": jnp.zeros(())},
                                 opt_state=opt.init({"w": jnp.zeros(())}),
                                 ema_params={"w": jnp.zeros(())}, rng=jax.random.PRNGKey(0))
  step = jax.jit(lambda s: train_step.train_step(s, {}, model=Drift(), optimizer=opt,
                                                 schedule=lambda n: 1.0, ema_decay=0.99))
  want = 0.0
  for n in range(300):
    state, _ = step(state)
    decay = min(0.99, (1 + n) / (10 + n))
    want = decay * want + (1 - decay) * (n + 1)
  assert float(state.params["w"]) == 300.0
  np.testing.assert_allclose(float(state.ema_params["w"]), want, rtol=1e-5)
  assert 300 - float(state.ema_params["w"]) < 110  # Lags ~1/(1 - 0.99) steps, not the init.
