"""Backbone speed: forward and forward+backward of the VLM against the machine's matmul peak.

For ``--config=configs/backbone.py:variant=...`` it builds the backbone, a batch of uint8 images
and text tokens, and times (after one compile + warm-up call, median of ``iters`` calls):

* forward: image + text prefix through ViT and Gemma, next-token cross-entropy on the text;
* forward+backward: the same loss and its gradient w.r.t. all parameters (a train step minus the
  optimizer update, which is elementwise and negligible here).

FLOPs per example come from XLA's ``cost_analysis()`` of the compiled programs. The peak is a
float32 ``jnp.dot`` of two square matrices measured in the same run, so the ratio is comparable
across machines.

Run: ``python benchmarks/backbone.py --config=configs/backbone.py:variant=tiny``

Measured (tiny, batch 64, 2 shared CPU cores at load average ~6, so absolute times vary by 2x
from run to run; the interleaved ratio is steadier):

  matmul peak (2048^3 jnp.dot, float32): 69.1 GFLOP/s
          forward:    153.7 ms/step    0.098 GFLOP/example     40.8 GFLOP/s  =  59.1% of peak
   forward+backward:  836.2 ms/step    0.291 GFLOP/example     22.3 GFLOP/s  =  32.3% of peak
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from ml_collections import config_flags

from vla_jax.models import gemma, vlm

_CONFIG = config_flags.DEFINE_config_file("config", "configs/backbone.py:variant=tiny",
                                          "Backbone benchmark config.")


def _call_seconds(fn, *args) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def _interleaved_medians(calls: dict, iters: int) -> dict[str, float]:
  """Median wall seconds per named ``(fn, args)``, timed round-robin after one warm-up each.

  Round-robin so that every program sees the same machine load (CPUs here are shared): the
  peak / model ratio stays meaningful even when the absolute numbers move.
  """
  for fn, args in calls.values():
    jax.block_until_ready(fn(*args))
  times = {name: [] for name in calls}
  for _ in range(iters):
    for name, (fn, args) in calls.items():
      times[name].append(_call_seconds(fn, *args))
  return {name: statistics.median(t) for name, t in times.items()}


def _flops(jitted, *args) -> float:
  """FLOPs of one call, from XLA's cost analysis of the compiled program."""
  cost = jitted.lower(*args).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older jax returns one dict per device program.
    cost = cost[0]
  return float(cost["flops"])


def matmul_operands(n: int = 2048):
  """The peak probe: a float32 [n, n] x [n, n] ``jnp.dot`` (2 n^3 FLOPs)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  return jax.jit(jnp.dot), (a, b), 2.0 * n**3


def make_loss(model: vlm.VLM):
  """Next-token cross-entropy on the text after a bidirectional image prefix."""

  def loss_fn(params, images, tokens, text_mask):
    def fwd(m):
      img = m.embed_images(images)
      txt = m.embed_text(tokens)
      b, n, l = img.shape[0], img.shape[1], tokens.shape[1]
      mask = jnp.concatenate([jnp.ones((b, n), bool), text_mask], axis=1)
      ar = jnp.concatenate([jnp.zeros((b, n), jnp.int32), jnp.ones((b, l), jnp.int32)], axis=1)
      positions = jnp.cumsum(mask, axis=1) - 1
      (h,), _ = m([jnp.concatenate([img, txt], axis=1)], positions,
                  gemma.make_attn_mask(mask, ar))
      return m.logits(h[:, n:-1])

    logits = model.apply(params, method=fwd)
    targets = tokens[:, 1:]
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    weight = text_mask[:, 1:]
    return jnp.sum(nll * weight) / jnp.maximum(jnp.sum(weight), 1)

  return loss_fn


def main(_):
  config = _CONFIG.value
  cfg = vlm.VLMConfig.from_config(config.backbone)
  model = vlm.VLM(cfg)
  b, size = config.batch_size, cfg.vit.image_size
  rng = np.random.default_rng(0)
  images = {f"image/{cam}": jnp.asarray(rng.integers(0, 256, (b, size, size, 3), np.uint8))
            for cam in cfg.cameras}
  tokens = jnp.asarray(rng.integers(0, cfg.llm.vocab_size, (b, config.text_len), np.int32))
  text_mask = jnp.ones((b, config.text_len), bool)
  print(f"backend {jax.default_backend()}, {jax.device_count()} device(s); variant "
        f"{config.backbone.variant}, batch {b}, {len(cfg.cameras)} camera(s) x "
        f"{cfg.tokens_per_image} image tokens + {config.text_len} text tokens", flush=True)

  params = jax.jit(lambda k: model.init(k, images, tokens, text_mask,
                                        method=vlm.VLM.run_prefix))(jax.random.key(0))
  count = sum(x.size for x in jax.tree.leaves(params))
  print(f"  parameters: {count / 1e6:.2f}M", flush=True)
  loss_fn = make_loss(model)
  fwd = jax.jit(loss_fn)
  fwd_bwd = jax.jit(jax.value_and_grad(loss_fn))
  args = (params, images, tokens, text_mask)
  print("compiling ...", flush=True)
  f_flops, fb_flops = _flops(fwd, *args), _flops(fwd_bwd, *args)
  dot, dot_args, dot_flops = matmul_operands()
  print(f"timing ({config.iters} interleaved rounds) ...", flush=True)
  t = _interleaved_medians({"dot": (dot, dot_args), "fwd": (fwd, args),
                            "fwd_bwd": (fwd_bwd, args)}, config.iters)
  peak = dot_flops / t["dot"]
  print(f"  matmul peak (2048^3 jnp.dot, float32): {peak / 1e9:.1f} GFLOP/s", flush=True)
  t_f, t_fb = t["fwd"], t["fwd_bwd"]
  for name, t, flops in (("forward", t_f, f_flops), ("forward+backward", t_fb, fb_flops)):
    rate = flops / t
    print(f"{name:>17}: {t * 1e3:8.1f} ms/step  {flops / b / 1e9:7.3f} GFLOP/example  "
          f"{rate / 1e9:7.1f} GFLOP/s  = {100 * rate / peak:5.1f}% of matmul peak", flush=True)
  print(f"train-step target (>= 30% of peak): "
        f"{'MET' if fb_flops / t_fb >= 0.3 * peak else 'NOT MET'}")


if __name__ == "__main__":
  app.run(main)
