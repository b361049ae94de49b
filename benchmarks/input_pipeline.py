"""Input pipeline speed: frames/s and batches/s at the tiny training config's batch size (64).

  PYTHONPATH=. python benchmarks/input_pipeline.py                 # synthetic 64x64 demos
  PYTHONPATH=. python benchmarks/input_pipeline.py --data_path=workdirs/tfds/tabletop_demos/1.0.0

Measures, on the same data in the same run (after warm-up batches, which include the one-time
statistics pass and tf.data tracing):

* ``read+decode``: the training pipeline with augmentation off (read, standardize, normalize,
  chunk, shuffle, decode, batch, text tokens) - the baseline;
* ``full train``: training pipeline (read, standardize, normalize, history window + action chunks,
  episode and step shuffles, decode, random resized crop + colour jitter, batch, text tokens).

A "frame" is one example's image stack (window x cameras images); frames/s = batches/s x 64 x
window x cameras. Without ``--data_path`` it writes a synthetic tabletop-structured dataset of
64x64 images (``--episodes`` x ``--episode_len``) to a temporary directory first.
"""

import os
import shutil
import tempfile
import time

from absl import app, flags, logging

from vla_jax.data import config as data_config_lib
from vla_jax.data import pipeline, synthetic

_PATH = flags.DEFINE_string("data_path", "", "TFDS dataset dir (default: synthetic demos).")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Host batch size (tiny training config: 64).")
_BATCHES = flags.DEFINE_integer("batches", 100, "Timed batches per measurement.")
_WARMUP = flags.DEFINE_integer("warmup", 10, "Untimed batches first.")
_EPISODES = flags.DEFINE_integer("episodes", 60, "Synthetic episodes.")
_LEN = flags.DEFINE_integer("episode_len", 40, "Synthetic steps per episode.")
_WINDOW = flags.DEFINE_integer("window", 1, "Observation history frames.")


class _Tokenizer:
  """Stand-in with the TextTokenizer.encode_batch contract (whitespace words -> ids)."""

  def __init__(self):
    self.vocab = {}

  def encode_batch(self, texts, max_len):
    import numpy as np  # pylint: disable=g-import-not-at-top
    ids = np.zeros((len(texts), max_len), np.int32)
    for i, t in enumerate(texts):
      w = [self.vocab.setdefault(x, len(self.vocab) + 3) for x in t.split()][:max_len]
      ids[i, :len(w)] = w
    return ids, ids > 0


def _measure(it, batches, warmup):
  for _ in range(warmup):
    next(it)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches / (time.perf_counter() - start)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # TFDS logs every dataset construction at INFO.
  tmp = tempfile.mkdtemp(prefix="bench_pipe_")
  path = _PATH.value
  if not path:
    t0 = time.perf_counter()
    path = synthetic.write_dataset(
        tmp, "tabletop_demos",
        {"train": [_LEN.value] * _EPISODES.value, "validation": [_LEN.value] * 8},
        image_size=(64, 64))
    print(f"wrote synthetic demos ({_EPISODES.value} x {_LEN.value} steps, 64x64) in "
          f"{time.perf_counter() - t0:.1f} s")
  c = data_config_lib.default_data_config()
  c.datasets = {"tabletop_demos": data_config_lib.dataset_entry(path, eval_split="train")}
  c.window = _WINDOW.value
  c.stats_cache_dir = os.path.join(tmp, "stats")
  bs = _BATCH.value
  frames = bs * c.window * len(c.cameras)
  print(f"batch {bs}, window {c.window}, horizon {c.horizon}, image {c.image_size}px, "
        f"{os.cpu_count()} CPUs, num_parallel_calls {c.num_parallel_calls}")
  t0 = time.perf_counter()
  stats = pipeline.load_norm_stats(c)
  print(f"statistics pass: {time.perf_counter() - t0:.2f} s "
        f"({stats['tabletop_demos']['num_transitions']} transitions)")
  c_eval = c.copy_and_resolve_references()
  c_eval.augment.enabled = False
  it, _ = pipeline.make_train_iterator(c_eval, text_tokenizer=_Tokenizer(), batch_size=bs,
                                       norm_stats=stats)
  base = _measure(it, _BATCHES.value, _WARMUP.value)
  print(f"read+decode (no augmentation): {base:7.1f} batches/s  {base * frames:9.0f} frames/s")
  it, _ = pipeline.make_train_iterator(c, text_tokenizer=_Tokenizer(), batch_size=bs,
                                       norm_stats=stats)
  full = _measure(it, _BATCHES.value, _WARMUP.value)
  print(f"full train pipeline:           {full:7.1f} batches/s  {full * frames:9.0f} frames/s")
  shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
