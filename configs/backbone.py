"""VLM backbone (SigLIP ViT + Gemma, PaliGemma-style) and its benchmark settings.

``config.backbone`` variants: ``tiny`` (CPU: ViT 2 x 128 on 64x64 images with 8x8 patches = 64
tokens, Gemma 2 x 128 with 4 heads / 1 KV head, vocab 512) and ``paligemma_3b`` (SigLIP So400m/14
at 224 px + Gemma 2B, about 2.92B parameters, scan + remat). ``cameras`` is a ``+``-separated
list. Policy configs embed the same dict from Python:
``vla_jax.models.vlm.backbone_config("tiny")``.

Launch (prints forward and forward+backward speed against the same run's matmul peak):

  python benchmarks/backbone.py --config=configs/backbone.py:variant=tiny
  python benchmarks/backbone.py --config=configs/backbone.py:variant=tiny,batch_size=8 \
      --config.backbone.remat=True

Expected (tiny, batch 64, 2-core CPU): 0.5-0.8 s per forward+backward step, >= 30% of the matmul
peak; measured numbers are in benchmarks/backbone.py's docstring.
"""

import ml_collections

from vla_jax.config_args import parse_arg
from vla_jax.models.vlm import backbone_config


def get_config(arg=None):
  args = parse_arg(arg, variant="tiny", cameras="base", batch_size=64, text_len=16, iters=7)
  config = ml_collections.ConfigDict()
  config.backbone = backbone_config(args.variant, cameras=tuple(args.cameras.split("+")))
  config.batch_size = args.batch_size  # Examples per step.
  config.text_len = args.text_len  # Text tokens per example (after the image tokens).
  config.iters = args.iters  # Timed rounds (after one warm-up call), interleaved with the peak.
  config.lock()
  return config
