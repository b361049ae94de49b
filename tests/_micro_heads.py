"""The micro policies and data shapes of the head tests (tests/test_heads.py, test_rl_log_prob_*).

Kept free of TensorFlow (the data pipeline imports it), so the RL likelihood tests that only
need these shapes do not pay its import.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from vla_jax.models import policy as policy_lib
from vla_jax.models.heads import synthetic
from vla_jax.tokenizers import fast

H, D, S, TEXT_VOCAB = 4, 2, 3, 8  # Chunk length, action dim, state dim, text vocabulary.


@functools.cache
def fast_tokenizer():
  """FAST fitted on the synthetic target chunks plus smooth random ones (vocabulary 64)."""
  _, _, targets = synthetic.multimodal_batch(horizon=H, action_dim=D, state_dim=S, modes=1)
  rng = np.random.default_rng(0)
  extra = np.cumsum(rng.normal(0, 0.2, (200, H, D)), axis=1).clip(-1, 1)
  chunks = np.concatenate([targets[:, 0], extra]).astype(np.float32)
  return fast.FastTokenizer(H, D, scale=10.0, vocab_size=64).fit(chunks)


def micro_config(head: str, llm_depth: int = 2):
  """Micro backbone: ViT 1 x 32 over 16 x 16 images (4 tokens), Gemma ``llm_depth`` x 32, action
  expert width 16; ``head`` may be "ar_fast" (the AR head with FAST tokens), "ar_expert" /
  "discrete_diffusion_expert" (the token head in its own action expert) or "diffusion_expert"
  (the diffusion head with pi0's action expert as its denoiser, predicting v)."""
  base = {"ar_fast": "ar", "ar_expert": "ar", "diffusion_expert": "diffusion",
          "discrete_diffusion_expert": "discrete_diffusion"}.get(head, head)
  c = policy_lib.default_policy_config(base)
  c.backbone.vit.update(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=8, image_size=16,
                        head_dim=32)
  c.backbone.llm.update(width=32, depth=llm_depth, mlp_dim=64, num_heads=2, num_kv_heads=1,
                        head_dim=16)
  c.flow.update(expert_width=16, expert_mlp_dim=32, num_noise_samples=8)
  c.diffusion.update(hidden=64, num_blocks=2, num_noise_samples=8)
  if head == "diffusion_expert":
    c.diffusion.update(denoiser="expert", prediction="v")
  c.ar.num_bins = 64
  c.ar.expert = head == "ar_expert"
  if head == "ar_fast":
    c.ar.update(tokenizer="fast", max_fast_tokens=H * D)
  c.discrete_diffusion.num_bins = 64
  c.discrete_diffusion.expert = head == "discrete_diffusion_expert"
  return c


def micro_batch():
  """``(batch, observation, cond, targets)``: the synthetic batch of these shapes as jax arrays,
  and its observation (the batch without ``actions`` / ``action_mask``)."""
  batch, cond, targets = synthetic.multimodal_batch(horizon=H, action_dim=D, state_dim=S, modes=1)
  batch = jax.tree.map(jnp.asarray, batch)
  return batch, {k: v for k, v in batch.items() if not k.startswith("action")}, cond, targets
