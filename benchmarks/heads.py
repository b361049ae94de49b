"""Action heads on the tiny backbone: train-step time, level-2 minibatching, inference latency.

  PYTHONPATH=. python benchmarks/heads.py [--config=configs/policy_heads.py:backbone=tiny]

Backbone ``tiny`` (ViT 4 x 128 over one 64x64 camera frame = 64 tokens, Gemma 4 x 128; the flow
expert 64 wide), 16 text tokens, proprio S = 8, chunks H = 10 x D = 7. Every timing is the fastest
of ``--reps`` calls after one compile + warm-up call, on this machine, in this run:

1. Training step (loss + gradient + Adam update, batch ``--batch_size``) per head.
2. Level-2 minibatching (flow and diffusion): step time at M = 1, 4, 8, 16 noised samples per
   conditioning and the cost per noised sample relative to M = 1 (target at M = 8: <= 0.3x).
3. Inference latency per action chunk (batch 1) and network evaluations (nfe) per chunk: AR with
   and without the KV cache, flow with 1 / 5 / 10 Euler steps with and without prefix caching,
   diffusion DDPM (20 steps) vs DDIM (10), discrete diffusion 12 and 4 rounds; each also as a
   multiple of one backbone forward pass (the prefix: ViT + LM) measured in the same run.
   "no cache" recomputes the LM prefix at every step; XLA may still hoist loop-invariant work
   (the image encoder) out of the sampling loop, so it is a lower bound on full recomputation.

Takes 1.5 to 6 minutes on 2 CPU cores (almost all of it XLA compilation; 23 programs).

Measured on an idle machine (2 CPU cores; single figures move by up to 2x with other load):

  devices: [CpuDevice(id=0)]; tiny backbone, train batch 8, chunk H=10 D=7, fastest of 10 calls

  1) training step (loss + grad + Adam)
    flow                     12.8 ms/step
    diffusion                17.2 ms/step
    ar                       37.2 ms/step
    discrete_diffusion       37.8 ms/step

  2) level-2 minibatching: M noised samples per conditioning (shared prefix)
    flow       M=1       12.8 ms/step     1.60 ms/noised sample   1.00x of M=1
    flow       M=4       20.8 ms/step     0.65 ms/noised sample   0.41x of M=1
    flow       M=8       27.8 ms/step     0.43 ms/noised sample   0.27x of M=1  (target <= 0.30x)
    flow       M=16      37.4 ms/step     0.29 ms/noised sample   0.18x of M=1
    diffusion  M=1       17.2 ms/step     2.14 ms/noised sample   1.00x of M=1
    diffusion  M=4       14.7 ms/step     0.46 ms/noised sample   0.21x of M=1
    diffusion  M=8       15.4 ms/step     0.24 ms/noised sample   0.11x of M=1  (target <= 0.30x)
    diffusion  M=16      17.5 ms/step     0.14 ms/noised sample   0.06x of M=1

  3) inference per action chunk (batch 1)
    backbone forward (prefix: ViT + LM)          0.61 ms   (1.00x)
    AR binning, KV cache                         4.42 ms   ( 7.30x)  nfe 71
    AR binning, no cache                        58.77 ms   (96.97x)  nfe 71
    flow  1 steps, prefix cache                  0.72 ms   ( 1.18x)  nfe 1
    flow  1 steps, no cache                      0.84 ms   ( 1.38x)  nfe 1
    flow  5 steps, prefix cache                  0.92 ms   ( 1.51x)  nfe 5
    flow  5 steps, no cache                      1.87 ms   ( 3.08x)  nfe 5
    flow 10 steps, prefix cache                  1.22 ms   ( 2.02x)  nfe 10
    flow 10 steps, no cache                      3.50 ms   ( 5.78x)  nfe 10
    diffusion DDPM 20 steps                      2.09 ms   ( 3.44x)  nfe 20
    diffusion DDIM 10 steps                      1.43 ms   ( 2.37x)  nfe 10
    discrete diffusion 12 rounds                 7.40 ms   (12.20x)  nfe 12
    discrete diffusion 4 rounds                  2.93 ms   ( 4.84x)  nfe 4

  total 91 s

Why flow level-2 gains less than diffusion: every noised copy is a full pass of the action expert
through all LM layers (H = 10 tokens attending to the 81-token prefix cache and to themselves),
while diffusion's denoiser is an MLP on [B, M, H * D], nearly free next to the prefix. Flow folds
the M copies into the batch (see ``heads/flow.py``): an earlier layout that packed them into one
M * H-token suffix with a block-diagonal mask paid attention quadratic in M and measured 0.32x at
M = 8 on the same machine.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from ml_collections import config_flags

from vla_jax.models import policy as policy_lib

_CONFIG = config_flags.DEFINE_config_file("config", "configs/policy_heads.py",
                                          "Policy config (sizes of every head).")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Training batch size.")
_REPS = flags.DEFINE_integer("reps", 10, "Timed calls per measurement (fastest is kept).")
H, D, S, L, TEXT_VOCAB, IMAGE = 10, 7, 8, 16, 384, 64


def _batch(b: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return {
      "image/base": jnp.asarray(rng.integers(0, 256, (b, 1, IMAGE, IMAGE, 3), np.uint8)),
      "obs_mask": jnp.ones((b, 1), bool),
      "state": jnp.asarray(rng.normal(size=(b, 1, S)).astype(np.float32)),
      "text_tokens": jnp.asarray(rng.integers(1, TEXT_VOCAB, (b, L)).astype(np.int32)),
      "text_mask": jnp.ones((b, L), bool),
      "actions": jnp.asarray(rng.uniform(-1, 1, (b, H, D)).astype(np.float32)),
      "action_mask": jnp.ones((b, H), bool),
  }


def _seconds(fn, *args) -> float:
  """Fastest of ``--reps`` blocked calls after one warm-up/compile call (on a shared machine the
  minimum is the least disturbed by other processes; the median drifts with their load)."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(_REPS.value):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return min(times)


def _policy(head: str, **section):
  config = _CONFIG.value.copy_and_resolve_references()
  config.head = head
  config[head].update(section)
  return policy_lib.make_policy(config, action_dim=D, action_horizon=H, state_dim=S,
                                text_vocab_size=TEXT_VOCAB)


def _train_step_seconds(policy, batch) -> float:
  params = jax.jit(policy.init)(jax.random.key(0), batch)
  opt = optax.adam(1e-4)
  opt_state = opt.init(params)

  @jax.jit
  def step(params, opt_state, rng):
    (loss, _), grads = jax.value_and_grad(policy.loss, has_aux=True)(params, batch, rng)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return _seconds(step, params, opt_state, jax.random.key(1))


def main(argv):
  del argv
  t0 = time.perf_counter()
  batch = _batch(_BATCH.value)
  print(f"devices: {jax.devices()}; tiny backbone, train batch {_BATCH.value}, chunk H={H} "
        f"D={D}, fastest of {_REPS.value} calls", flush=True)

  print("\n1) training step (loss + grad + Adam)")
  train_m1 = {}
  for head in policy_lib.HEADS:
    s = _train_step_seconds(_policy(head), batch)
    if head in ("flow", "diffusion"):
      train_m1[head] = s
    print(f"  {head:<20s} {1e3 * s:8.1f} ms/step", flush=True)

  print("\n2) level-2 minibatching: M noised samples per conditioning (shared prefix)")
  for head in ("flow", "diffusion"):
    base = train_m1[head]
    for m in (1, 4, 8, 16):
      s = base if m == 1 else _train_step_seconds(_policy(head, num_noise_samples=m), batch)
      per = s / (m * _BATCH.value)
      rel = s / m / base
      print(f"  {head:<10s} M={m:<3d} {1e3 * s:8.1f} ms/step  {1e3 * per:7.2f} ms/noised "
            f"sample  {rel:5.2f}x of M=1{'  (target <= 0.30x)' if m == 8 else ''}", flush=True)

  print("\n3) inference per action chunk (batch 1)")
  obs = {k: v for k, v in _batch(1, seed=1).items() if not k.startswith("action")}
  flow = _policy("flow")
  params = {"flow": jax.jit(flow.init)(jax.random.key(0), _batch(1))}
  mod = flow.head.module
  forward = jax.jit(lambda p, o: mod.apply({"params": p}, o, method=type(mod).prefix))
  base = _seconds(forward, params["flow"], obs)
  print(f"  backbone forward (prefix: ViT + LM)      {1e3 * base:8.2f} ms   (1.00x)", flush=True)
  rows = []
  ar = _policy("ar")
  rows += [("ar", ar, {"use_cache": True}, "AR binning, KV cache"),
           ("ar", ar, {"use_cache": False}, "AR binning, no cache")]
  for n in (1, 5, 10):
    for cache in (True, False):
      rows.append(("flow", flow, {"num_steps": n, "use_cache": cache},
                   f"flow {n:>2d} steps, {'prefix cache' if cache else 'no cache'}"))
  diff = _policy("diffusion")
  rows += [("diffusion", diff, {"sampler": "ddpm", "num_steps": 20}, "diffusion DDPM 20 steps"),
           ("diffusion", diff, {"sampler": "ddim", "num_steps": 10}, "diffusion DDIM 10 steps")]
  dd = _policy("discrete_diffusion")
  rows += [("discrete_diffusion", dd, {"rounds": 12}, "discrete diffusion 12 rounds"),
           ("discrete_diffusion", dd, {"rounds": 4}, "discrete diffusion 4 rounds")]
  for head, pol, options, label in rows:
    if head not in params:
      params[head] = jax.jit(pol.init)(jax.random.key(0), _batch(1))
    fn = jax.jit(lambda p, o, r, pol=pol, options=options: pol.sample(p, o, r, **options))
    s = _seconds(fn, params[head], obs, jax.random.key(2))
    nfe = int(fn(params[head], obs, jax.random.key(2))["nfe"])
    print(f"  {label:<40s} {1e3 * s:8.2f} ms   ({s / base:5.2f}x)  nfe {nfe}", flush=True)
  print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
  app.run(main)
