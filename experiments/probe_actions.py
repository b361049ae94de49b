"""Does a checkpoint's head use the image and the instruction? Offline action probe.

  python experiments/probe_actions.py --workdir=workdirs/vla_tiny --batches=8

On the validation split of the run's dataset, samples one chunk per observation (the head's
evaluation sampler) and prints, per action dimension, the error of the chunk's first action
relative to predicting the dataset's mean action (``1.0x`` = no better than the mean; lower is
better). It does so three times: on the real observations, with the images shuffled across the
batch, and with the instructions shuffled. A head that uses the image loses accuracy when the
images are shuffled; one whose ratio barely moves ignores them (issue 17's diagnosis of the AR and
diffusion heads, docs/experiments/vla_tiny.md).

Errors are mean absolute errors in normalized action units over the validation steps whose first
action is real (``action_mask[:, 0]``); an invalid (NaN) chunk counts as the mean action's error
and is reported.
"""

import jax
import ml_collections
import numpy as np
from absl import app, flags

from vla_jax import console
from vla_jax.data import pipeline
from vla_jax.jobs import main_job

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (holds checkpoints/).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_BATCHES = flags.DEFINE_integer("batches", 8, "Validation batches to probe.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Observations per batch.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling and shuffling seed.")
flags.mark_flags_as_required(["workdir"])

VARIANTS = ("real", "images shuffled", "instructions shuffled")


def _shuffled(batch: dict, variant: str, rng: np.random.Generator) -> dict:
  """The batch with its images or its instructions permuted across rows (others unchanged)."""
  out = dict(batch)
  perm = rng.permutation(len(batch["state"]))
  if variant == "images shuffled":
    for k in batch:
      if k.startswith("image/"):
        out[k] = batch[k][perm]
  elif variant == "instructions shuffled":
    for k in ("text_tokens", "text_mask"):
      out[k] = batch[k][perm]
  return out


def probe(loaded: main_job.LoadedPolicy, num_batches: int, batch_size: int, seed: int
          ) -> dict[str, dict]:
  """Returns ``{variant: {"mae" [D], "invalid" int, "n" int}}`` plus ``"mean action"``."""
  config = ml_collections.ConfigDict(loaded.config)
  it, _ = pipeline.make_eval_iterator(
      config.data, text_tokenizer=loaded.text_tokenizer, batch_size=batch_size,
      norm_stats={main_job.DATASET: loaded.norm_stats})
  sample = jax.jit(loaded.policy.sample_actions)
  rng = np.random.default_rng(seed)
  firsts, preds = [], {v: [] for v in VARIANTS}
  for i, batch in enumerate(it):
    if i >= num_batches:
      break
    keep = np.asarray(batch["action_mask"])[:, 0]
    firsts.append(np.asarray(batch["actions"])[keep, 0])
    for v in VARIANTS:
      obs = _shuffled(batch, v, rng)
      actions = np.asarray(sample(loaded.params, obs, jax.random.PRNGKey(seed + i)))
      preds[v].append(actions[keep, 0])
  if not firsts:
    raise ValueError(f"probe: the validation split of {config.data.datasets} gave no batch")
  truth = np.concatenate(firsts)
  mean = truth.mean(0)
  out = {"mean action": {"mae": np.abs(truth - mean).mean(0), "invalid": 0, "n": len(truth)}}
  for v in VARIANTS:
    pred = np.concatenate(preds[v])
    bad = ~np.isfinite(pred).all(-1)
    pred = np.where(bad[:, None], mean, pred)
    out[v] = {"mae": np.abs(truth - pred).mean(0), "invalid": int(bad.sum()), "n": len(truth)}
  return out


def format_probe(result: dict[str, dict]) -> str:
  """One line per variant: first-action MAE per dimension as a ratio to the mean action's."""
  base = result["mean action"]["mae"]
  lines = [(f"first action, mean |error| per dimension (normalized units), n = "
            f"{result['mean action']['n']} validation steps; ratio to predicting the mean "
            "action:"),
           f"  {'mean action':22s} " + "  ".join(f"{e:.3f}" for e in base)]
  for v in VARIANTS:
    r = result[v]
    ratios = "  ".join(f"{e / max(b, 1e-9):.2f}x" for e, b in zip(r["mae"], base))
    lines.append(f"  {v:22s} {ratios}   (invalid chunks: {r['invalid']})")
  return "\n".join(lines)


def main(argv):
  console.configure()
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  loaded = main_job.load_checkpoint_policy(_WORKDIR.value, _STEP.value)
  head = loaded.config["policy"]["head"]
  print(f"checkpoint {_WORKDIR.value} step {loaded.step} ({head} head)")
  print(format_probe(probe(loaded, _BATCHES.value, _BATCH_SIZE.value, _SEED.value)))


if __name__ == "__main__":
  app.run(main)
