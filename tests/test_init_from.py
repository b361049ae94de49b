"""``policy.init_from`` and ``train.trainable`` through the real trainer on a tiny flow policy.

The test writes a tiny Hugging Face PaliGemma checkpoint with ``transformers`` (as
test_weights_parity.py does) and a policy whose backbone has its shapes. Checked: the step-0
state holds the checkpoint's backbone in params and EMA params while the head keeps the seed's
random init; the first loss differs from the same run without ``init_from`` (negative control);
``policy.FREEZE_BACKBONE`` keeps the loaded backbone bit-identical through training steps while
the rest trains and holds no optimizer state for the frozen arrays; a resumed run keeps its
trained weights (no reload); wrong shapes, missing files and empty patterns fail by name.
"""

import os
import subprocess
import sys

import _training_toy as toy
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import safetensors.numpy

from vla_jax.models import policy as policy_lib
from vla_jax.models import weights
from vla_jax.models.heads import synthetic
from vla_jax.training import default_train_config, trainer, transfer
from vla_jax.training import mesh as mesh_lib

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

H, D, S, VOCAB = 4, 2, 3, 64


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
  """A tiny PaliGemma (SigLIP 16 px / 8 px patches, 1 layer; Gemma width 32, 1 layer) on disk."""
  torch.manual_seed(0)
  cfg = transformers.PaliGemmaConfig(
      vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 4, "image_size": 16, "patch_size": 8,
                     "vision_use_head": False},
      text_config={"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64,
                   "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
                   "head_dim": 16},
      image_token_index=VOCAB - 1, vocab_size=VOCAB, projection_dim=32, hidden_size=32)
  model = transformers.PaliGemmaForConditionalGeneration(cfg).eval()
  with torch.no_grad():  # No zero biases or unit scales that a random init could share.
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  path = tmp_path_factory.mktemp("paligemma")
  model.save_pretrained(str(path))
  return path


def _policy_config(init_from=""):
  c = policy_lib.default_policy_config("flow")
  c.backbone.vit.update(width=32, depth=1, mlp_dim=64, num_heads=4, patch_size=8, image_size=16)
  c.backbone.llm.update(width=32, depth=1, mlp_dim=64, num_heads=2, num_kv_heads=1, head_dim=16)
  c.vocab_size = VOCAB  # The checkpoint's LM vocabulary (the text ids are a subset).
  c.flow.update(expert_width=16, expert_mlp_dim=32)
  c.init_from = str(init_from)
  return c


def _policy(init_from=""):
  return policy_lib.make_policy(_policy_config(init_from), action_dim=D, action_horizon=H,
                                state_dim=S, text_vocab_size=8)


def _config(init_from="", **train):
  c = ml_collections.ConfigDict()
  c.policy = _policy_config(init_from)
  c.train = default_train_config()
  c.train.update(num_steps=2, batch_size=4, warmup_steps=1, learning_rate=1e-2, log_every=1,
                 checkpoint_every=1, ema_decay=0.9, mesh={"data": 1, "fsdp": 1})
  c.train.update(train)
  return c


BATCH = synthetic.multimodal_batch(horizon=H, action_dim=D, state_dim=S, modes=1)[0]


def _data(*, start_step, local_batch_size, process_index, process_count):
  del start_step, process_index, process_count
  while True:
    yield {k: v[:local_batch_size] for k, v in BATCH.items()}


def _collect(lines):
  return lambda *a, **k: lines.append(" ".join(map(str, a)))


@pytest.fixture(scope="module")
def expected(hf_checkpoint):
  """The checkpoint as the policy's arrays, read independently of the trainer."""
  pol = _policy()
  loaded = weights.import_hf(hf_checkpoint, "paligemma", pol.backbone_config)["params"]
  return {f"backbone/vlm/{k}": np.asarray(v) for k, v in weights.flatten(loaded).items()}


@pytest.fixture(scope="module")
def step0(hf_checkpoint):
  """Step-0 train states with and without ``init_from`` (same seed) and the printed lines."""
  mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 1})
  example = {k: v[:1] for k, v in BATCH.items()}
  lines = []
  # The optimizer of the freezing run below, so that its step function takes these states too.
  tc = _config(trainable=policy_lib.FREEZE_BACKBONE).train
  state = trainer.initial_train_state(_policy(hf_checkpoint), tc, example, mesh, _collect(lines))
  fresh = trainer.initial_train_state(_policy(), tc, example, mesh, _collect(lines))
  return state, fresh, lines


def test_step0_state_holds_the_checkpoint(hf_checkpoint, expected, step0):
  state, fresh, lines = step0
  params, ema = transfer.named_leaves(state.params), transfer.named_leaves(state.ema_params)
  rand = transfer.named_leaves(fresh.params)
  assert len(expected) == 32  # ViT (21) + projection (2) + LM (9), all under backbone/vlm.
  for k, v in expected.items():
    np.testing.assert_array_equal(params[k], v, err_msg=k)
    np.testing.assert_array_equal(ema[k], v, err_msg=k)
    assert not np.array_equal(rand[k], v), k  # Negative control: random init differs.
  # Everything the checkpoint does not cover keeps the seed's random init.
  others = [k for k in params if k not in expected]
  assert "action_out_proj/kernel" in others and "backbone/vlm/llm/final_norm_1/scale" in others
  for k in others:
    np.testing.assert_array_equal(params[k], rand[k], err_msg=k)
  for k in params:
    assert params[k].sharding == rand[k].sharding, k
  assert len(lines) == 1 and lines[0].startswith(
      f"Initialized 32 arrays ({sum(v.size for v in expected.values()) / 1e6:.3f}M params) "
      f"from hf paligemma checkpoint {hf_checkpoint} (policy.init_from); random init kept for "
      f"{len(others)} arrays"), lines
  assert "backbone/state_proj" in lines[0] and "layers_*/mlp_1" in lines[0], lines[0]


def test_init_from_first_loss_and_freezing(hf_checkpoint, expected, step0, tmp_path):
  lines = []
  work = str(tmp_path / "frozen")
  config = _config(hf_checkpoint, trainable=policy_lib.FREEZE_BACKBONE)
  res = trainer.train(config, work, model=_policy(hf_checkpoint), make_data_iterator=_data,
                      print_fn=_collect(lines))
  out = "\n".join(lines)
  assert "Initialized 32 arrays" in out
  n_frozen = sum(v.size for v in expected.values())
  assert f"{n_frozen / 1e6:.3f}M frozen (32 arrays)" in out, out
  params = transfer.named_leaves(res.state.params)
  ema = transfer.named_leaves(res.state.ema_params)
  for k, v in expected.items():  # Frozen: bit-identical after 2 steps, EMA included.
    np.testing.assert_array_equal(params[k], v, err_msg=k)
    np.testing.assert_array_equal(ema[k], v, err_msg=k)
  # Frozen arrays hold no AdamW moments: the optimizer state covers the trainable params only.
  n_train = sum(v.size for k, v in params.items() if k not in expected)
  n_opt = sum(x.size for x in jax.tree.leaves(res.state.opt_state))
  assert 2 * n_train <= n_opt < 2 * n_train + 16, (n_opt, n_train)

  # The same step function from a random init (same seed, same batch): another first loss.
  fresh = jax.tree.map(jnp.copy, step0[1])  # The step donates its input.
  random_params = {k: np.asarray(v) for k, v in transfer.named_leaves(fresh.params).items()}
  _, metrics = res.train_step(fresh, BATCH)
  loaded_loss, random_loss = res.history[0]["loss"], float(metrics["loss"])
  print(f"first-step loss: init_from {loaded_loss:.6f}, random init {random_loss:.6f}")
  assert abs(loaded_loss - random_loss) > 1e-3
  for k in params:  # Everything outside the frozen backbone trained.
    if k not in expected:
      assert not np.array_equal(params[k], random_params[k]), k


# Runs with 4 simulated CPU devices (set before jax starts), so in a subprocess.
_SHARDED = r"""
import os, shutil, sys
import jax, numpy as np
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
import _training_toy as toy
from vla_jax.training import trainer, transfer

class Pretrained(toy.ToyModel):
  def pretrained_params(self, abstract):
    shape = abstract["Dense_0"]["kernel"].shape
    return {"Dense_0/kernel": np.arange(np.prod(shape), dtype=np.float32).reshape(shape)}, "test"

work, lines = sys.argv[2], []
config = toy.make_config(num_steps=2, log_every=1, checkpoint_every=1, ema_decay=0.9,
                         trainable="Dense_[12]/.*", mesh={"data": 2, "fsdp": 2})
def run():
  lines.clear()
  return trainer.train(config, work, model=Pretrained(), make_data_iterator=toy.make_data_iterator(),
                       print_fn=lambda *a, **k: lines.append(" ".join(map(str, a))))
res = run()
assert "Initialized 1 arrays" in lines[0], lines
assert "frozen (2 arrays)" in "\\n".join(lines), lines
kernel = res.state.params["Dense_0"]["kernel"]
assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp"), kernel.sharding
want = np.arange(kernel.size, dtype=np.float32).reshape(kernel.shape)
np.testing.assert_array_equal(kernel, want)  # Frozen through 2 steps.
np.testing.assert_array_equal(res.state.ema_params["Dense_0"]["kernel"], want)
final = jax.device_get(res.state.params)
shutil.rmtree(os.path.join(work, "checkpoints", "2"))
again = run()
out = "\n".join(lines)
assert "Resumed" in out and "Initialized" not in out, out
jax.tree.map(np.testing.assert_array_equal, jax.device_get(again.state.params), final)
print("OK")
"""


def test_sharded_placement_frozen_and_resume(tmp_path):
  """Trainer level, on the toy model over a 2 x 2 (data x fsdp) mesh: loaded arrays land with
  the fsdp sharding in params and EMA, stay frozen, and a resumed run (optimizer state without
  moments for frozen arrays) neither reloads them nor loses its trained weights."""
  script = tmp_path / "sharded.py"
  script.write_text(_SHARDED)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=toy.REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="2",
             XLA_FLAGS=toy.xla_flags(4))
  proc = subprocess.run([sys.executable, str(script), toy.REPO_ROOT, str(tmp_path / "w")],
                        env=env, check=False, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr


def test_bad_checkpoints_and_patterns_are_named(hf_checkpoint, tmp_path):
  tensors = weights.load_safetensors(hf_checkpoint)
  key = next(k for k in tensors if k.endswith("multi_modal_projector.linear.weight"))
  tensors[key] = tensors[key][:, :24]
  bad = tmp_path / "wrong.safetensors"
  safetensors.numpy.save_file(tensors, str(bad))
  with pytest.raises(weights.CheckpointMismatchError,
                     match=r"policy.init_from: .*img/head/kernel: checkpoint \(24, 32\) vs "
                     r"model \(32, 32\)"):
    trainer.train(_config(bad), str(tmp_path / "w"), model=_policy(bad),
                  make_data_iterator=_data, print_fn=lambda *a, **k: None)
  # A policy vocabulary that differs from the checkpoint's: the embedding is named.
  c = _policy_config(hf_checkpoint)
  c.vocab_size = VOCAB + 1
  pol = policy_lib.make_policy(c, action_dim=D, action_horizon=H, state_dim=S, text_vocab_size=8)
  shapes = jax.eval_shape(pol.init, jax.random.key(0), BATCH)
  # A tensor that is reshaped into heads: named before the reshape could fail.
  tensors = weights.load_safetensors(hf_checkpoint)
  key = next(k for k in tensors if k.endswith("layers.0.self_attn.q_proj.weight"))
  tensors[key] = tensors[key][:31]
  safetensors.numpy.save_file(tensors, str(bad))
  with pytest.raises(weights.CheckpointMismatchError,
                     match=r"q_proj.weight' -> llm/layers_0/attn/q_einsum/w: checkpoint "
                     r"\(31, 32\) vs model \(32, 32\)"):
    _policy(bad).pretrained_params(shapes)
  with pytest.raises(weights.CheckpointMismatchError,
                     match=r"llm/embedder/embedding: checkpoint \(64, 32\) vs model \(65, 32\)"):
    pol.pretrained_params(shapes)
  # A missing file fails when the run starts, not when the policy is built: a trained
  # checkpoint's config still names it, and evaluation rebuilds the policy from that config.
  missing = _policy(tmp_path / "nothing.safetensors")
  with pytest.raises(FileNotFoundError, match=r"policy.init_from=.*nothing.safetensors"):
    missing.pretrained_params(shapes)
  with pytest.raises(ValueError, match=r"train.trainable='backbone/vit/.\*' matches no param"):
    trainer.abstract_train_state(_policy(), _config(trainable="backbone/vit/.*").train,
                                 BATCH, mesh_lib.make_mesh({"data": 1, "fsdp": 1}))


def test_format_and_kind_inference(hf_checkpoint, expected, tmp_path):
  """big_vision .npz of the same weights loads the same arrays; names decide the kind."""
  flat = {k.removeprefix("backbone/vlm/"): v for k, v in expected.items()}
  flat = {k.replace("embedder/embedding", "embedder/input_embedding")
          .replace("mlp/gating_einsum/w", "mlp/gating_einsum")
          .replace("mlp/linear/w", "mlp/linear"): v for k, v in flat.items()}
  npz = tmp_path / "pg.npz"
  np.savez(npz, **flat)
  pol = _policy(npz)
  shapes = jax.eval_shape(pol.init, jax.random.key(0), BATCH)
  arrays, source = pol.pretrained_params(shapes)
  assert source.startswith(f"big_vision paligemma checkpoint {npz}")
  assert sorted(arrays) == sorted(expected)
  for k, v in arrays.items():
    np.testing.assert_array_equal(v, expected[k], err_msg=k)
  assert weights.checkpoint_kind({"llm/layers/attn/q_einsum/w": 0}, "big_vision") == "gemma"
  assert weights.checkpoint_kind({"img/embedding/kernel": 0}, "big_vision") == "siglip"
  assert weights.checkpoint_kind(["model.embed_tokens.weight"], "hf") == "gemma"
  assert weights.checkpoint_kind(["vision_model.embeddings.patch_embedding.weight"],
                                 "hf") == "siglip"
  with pytest.raises(ValueError, match="cannot tell the format"):
    weights.checkpoint_format(__file__)
