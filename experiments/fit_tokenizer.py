"""Fits the FAST action tokenizer on action chunks and saves it to --workdir.

  python experiments/fit_tokenizer.py --config=configs/fast_tokenizer.py \
      --workdir=workdirs/fast_tokenizer

See configs/fast_tokenizer.py for the options (own data, vocabulary size, scale).
"""

import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

from vla_jax import console
from vla_jax.tokenizers import fitting, synthetic

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/fast_tokenizer.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory the fitted tokenizer is written to.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  console.configure()  # library INFO lines and progress bars only at --verbosity=1
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config, workdir = _CONFIG.value, _WORKDIR.value
  if config.data.path:
    logging.info("[1/4] Reading action chunks from %s", config.data.path)
    chunks = fitting.load_chunks(config.data.path, config.data.npz_key)
  else:
    s = config.synthetic
    logging.info("[1/4] No data path: generating %d smooth %d-D chunks of %d steps at %g Hz",
                 s.num_chunks, s.action_dim, s.horizon, s.control_hz)
    chunks = synthetic.smooth_chunks(s.num_chunks, s.horizon, s.action_dim, s.control_hz, s.seed)
  fit_chunks, holdout = fitting.split_holdout(chunks, config.data.holdout_fraction, config.seed)
  logging.info("      chunks %s: %d to fit, %d held out", chunks.shape, len(fit_chunks),
               len(holdout))

  logging.info("[2/4] Fitting FAST (scale %g, vocab_size %d)", config.fast.scale,
               config.fast.vocab_size)
  tok, seconds = fitting.fit_fast(fit_chunks, config.fast.scale, config.fast.vocab_size,
                                  config.fast.action_range)
  logging.info("      %s in %.2f s (integer alphabet %d symbols)", tok, seconds,
               tok.alphabet_size)

  report = {"fit_seconds": seconds, "vocab_size": tok.vocab_size,
            "alphabet_size": tok.alphabet_size, "num_fit_chunks": len(fit_chunks)}
  if len(holdout):
    logging.info("[3/4] Round-tripping %d held-out chunks", len(holdout))
    report.update(fitting.evaluate_fast(tok, holdout))
    logging.info("      tokens/chunk %.1f (max %d) vs %d for binning: %.1fx fewer; abs error mean "
                 "%.4f max %.4f; valid %.3f", report["tokens_mean"], report["tokens_max"],
                 report["binning_tokens"], report["compression"], report["err_mean"],
                 report["err_max"], report["valid_fraction"])
  else:
    logging.info("[3/4] No held-out chunks (data.holdout_fraction=0): skipping evaluation")

  logging.info("[4/4] Saving to %s", workdir)
  path = tok.save(workdir)
  with open(os.path.join(workdir, "fit_report.json"), "w") as f:
    json.dump(report, f, indent=1)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json(indent=1))
  logging.info("      wrote %s (load with FastTokenizer.load(%r))", path, workdir)
  print(f"FAST tokenizer saved to {path}")


if __name__ == "__main__":
  app.run(main)
