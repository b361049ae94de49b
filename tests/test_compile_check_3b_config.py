"""configs/vla_paligemma_3b.py: every head builds at PaliGemma-3B shapes (no compilation).

Parameters come from ``jax.eval_shape`` (tracing only, nothing allocated): the backbone must be
PaliGemma-3B's size and the ``head`` arg must switch the head. The compile itself (about a minute)
is run by ``experiments/compile_check.py``, not here.
"""

import importlib.util
import pathlib

import jax
import pytest

from vla_jax.models import policy as policy_lib
from vla_jax.training import compile_check

# Loaded by path, as --config=configs/vla_paligemma_3b.py does (configs/ is not a package).
_SPEC = importlib.util.spec_from_file_location(
    "vla_paligemma_3b", pathlib.Path(__file__).parents[1] / "configs" / "vla_paligemma_3b.py")
vla_paligemma_3b = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(vla_paligemma_3b)

# PaliGemma-3B (SigLIP So400m/14 at 224 px + Gemma 2B, vocab 257152): 2.92B parameters
# (PaliGemma report, Beyer et al. 2024).
PALIGEMMA_3B_PARAMS = 2.92e9
# Extra Gemma experts' weights in the LM ("mlp_1", "q_einsum_1"; the ViT's "Dense_0" are not).


def _abstract_params(head: str):
  config = vla_paligemma_3b.get_config(f"head={head}")
  dims = config.compile_check
  policy = policy_lib.make_policy(
      config.policy, action_dim=dims.action_dim, action_horizon=config.data.horizon,
      state_dim=dims.state_dim, text_vocab_size=config.text_vocab_size)
  batch = compile_check.batch_spec(
      config.train.batch_size, image_size=config.data.image_size,
      cameras=tuple(config.data.cameras), history=config.data.window,
      state_dim=dims.state_dim, text_len=config.data.max_text_len, horizon=config.data.horizon,
      action_dim=dims.action_dim)
  return policy, jax.eval_shape(policy.init, jax.random.key(0), batch)


@pytest.fixture(scope="module")
def built():
  return {head: _abstract_params(head) for head in policy_lib.HEADS}


def test_head_arg_switches_the_head(built):
  kinds = {head: type(policy.head).__name__ for head, (policy, _) in built.items()}
  assert kinds == {"flow": "FlowHead", "diffusion": "DiffusionHead", "ar": "ARHead",
                   "discrete_diffusion": "DiscreteDiffusionHead", "hybrid": "HybridHead"}
  config = vla_paligemma_3b.get_config("head=ar,batch_size=16,data=2,fsdp=4")
  assert config.policy.head == "ar" and config.train.batch_size == 16
  assert dict(config.train.mesh) == {"data": 2, "fsdp": 4}


def test_backbone_is_paligemma_3b_sized(built):
  for head, (_, params) in built.items():
    backbone, rest = policy_lib.param_split(params)
    assert abs(backbone - PALIGEMMA_3B_PARAMS) / PALIGEMMA_3B_PARAMS < 0.01, (head, backbone)
    # Embedding rows: PaliGemma's 257152 text ids (+ the token heads' special and action ids).
    rows, width = params["backbone"]["vlm"]["llm"]["embedder"]["embedding"].shape
    assert width == 2048
    if head in ("flow", "diffusion"):
      assert rows == 257_152
    else:  # 256 action bins (+ 1 or 2 special ids) after the text ids
      assert 257_152 + 256 < rows <= 257_152 + 258, rows
    if head in ("flow", "hybrid"):  # pi0's Gemma-300M action expert rides along (about 0.3B)
      assert 0.25e9 < rest < 0.35e9, rest


def test_unknown_head_and_key_fail_loudly():
  with pytest.raises(ValueError, match="head='mlp'"):
    vla_paligemma_3b.get_config("head=mlp")
  with pytest.raises(KeyError, match="Did you mean: fsdp"):
    vla_paligemma_3b.get_config("fsdb=4")
