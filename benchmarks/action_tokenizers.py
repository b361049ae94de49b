"""Action tokenizers: tokens per chunk, round-trip error and speed of binning vs FAST.

  PYTHONPATH=. python benchmarks/action_tokenizers.py

For 1-second chunks of smooth 7-D trajectories (vla_jax.tokenizers.synthetic) at 10 Hz and 50 Hz:
mean tokens per chunk of per-dimension binning (256 uniform bins) and of FAST (scale 10, BPE
vocabulary 1024, fitted on separate chunks), their ratio, the max and mean absolute round-trip
error, and encode+decode throughput in chunks/s for batches of 256 (binning: jit-compiled JAX on
the default device; FAST: host numpy + Rust BPE). Pertsch et al. 2025 report 2-13x fewer tokens
for FAST than for binning, growing with the control rate. Runs in well under 2 minutes on CPU.
"""

import time

import jax
from absl import app, flags

from vla_jax.tokenizers import fitting
from vla_jax.tokenizers.binning import BinningTokenizer
from vla_jax.tokenizers.synthetic import smooth_chunks

_RATES = flags.DEFINE_list("rates_hz", ["10", "50"], "Control rates; chunks are 1 second long.")
_FIT = flags.DEFINE_integer("fit_chunks", 4000, "Chunks FAST is fitted on.")
_BATCHES = flags.DEFINE_integer("batches", 4, "Held-out batches of 256 chunks to measure.")
_SCALE = flags.DEFINE_float("scale", 10.0, "FAST scale.")
_VOCAB = flags.DEFINE_integer("vocab_size", 1024, "FAST BPE vocabulary size.")
BATCH, DIM = 256, 7


def _throughput(fn, batches, repeats):
  """Chunks/s of ``fn(batch)`` over ``batches`` [K, 256, H, D], after one warm-up call."""
  fn(batches[0])
  start = time.perf_counter()
  for _ in range(repeats):
    for batch in batches:
      fn(batch)
  return repeats * batches.shape[0] * batches.shape[1] / (time.perf_counter() - start)


def _bench_rate(rate):
  """Prints the binning and FAST rows for 1-second chunks at ``rate`` Hz; returns the ratio."""
  horizon = rate  # One second.
  fit_chunks = smooth_chunks(_FIT.value, horizon, DIM, control_hz=rate, seed=0)
  test = smooth_chunks(_BATCHES.value * BATCH, horizon, DIM, control_hz=rate, seed=1)
  batches = test.reshape(_BATCHES.value, BATCH, horizon, DIM)

  binning = BinningTokenizer.uniform(DIM, num_bins=256)
  b = fitting.evaluate_binning(binning, test)
  b_speed = _throughput(lambda x: binning.decode(binning.encode(x)).block_until_ready(),
                        batches, repeats=20)
  fast, fit_s = fitting.fit_fast(fit_chunks, _SCALE.value, _VOCAB.value)
  f = fitting.evaluate_fast(fast, test)
  f_speed = _throughput(lambda x: fast.decode(*fast.encode(x)), batches, repeats=2)
  ratio = b["tokens_mean"] / f["tokens_mean"]

  print(f"{rate:>4}Hz {'binning':>9} {b['tokens_mean']:>12.1f} {b['err_mean']:>9.5f} "
        f"{b['err_max']:>8.5f} {b_speed:>16,.0f}")
  print(f"{rate:>4}Hz {'FAST':>9} {f['tokens_mean']:>12.1f} {f['err_mean']:>9.5f} "
        f"{f['err_max']:>8.5f} {f_speed:>16,.0f}")
  print(f"{rate:>4}Hz binning/FAST token ratio {ratio:.1f}x (FAST fit on {_FIT.value} chunks in "
        f"{fit_s:.1f} s, vocab {fast.vocab_size}, valid {f['valid_fraction']:.3f})")
  return ratio


def main(argv):
  del argv
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; 1-s chunks of {DIM}-D smooth "
        f"trajectories; FAST scale {_SCALE.value:g}, vocab {_VOCAB.value}; binning 256 uniform "
        f"bins; batches of {BATCH}")
  header = (f"{'rate':>6} {'tokenizer':>9} {'tokens/chunk':>12} {'err mean':>9} {'err max':>8} "
            f"{'enc+dec chunks/s':>16}")
  print(header)
  print("-" * len(header))
  ratios = [_bench_rate(int(rate)) for rate in _RATES.value]
  print(f"FAST uses {' / '.join(f'{r:.1f}x' for r in ratios)} fewer tokens than binning at "
        f"{' / '.join(f'{r} Hz' for r in _RATES.value)} (paper: 2-13x, growing with rate).")


if __name__ == "__main__":
  app.run(main)
