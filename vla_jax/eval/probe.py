"""Does a checkpoint's head use the image and the instruction? An offline action probe.

On the validation split of a run's dataset, :func:`probe` samples one chunk per observation (the
head's evaluation sampler) and measures, per action dimension, the mean absolute error of the
chunk's first action (normalized units) over the steps whose first action is real
(``action_mask[:, 0]``), against predicting the mean of those first actions. It does so on the real
observations, with the images shuffled across the batch, and with the instructions shuffled. A
head that uses the image loses accuracy when the images are shuffled; one whose error barely moves
ignores them (issue 17's diagnosis of the AR and diffusion heads, docs/experiments/heads.md). An
invalid (NaN) chunk counts as the mean action's error and is reported.

The eval split is read in order, so a batch holds consecutive steps of few episodes: use several
batches (8 x 64 steps are ~10 episodes) for the shuffles to mix episodes.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from vla_jax.data import pipeline, tabletop_demos

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


def probe(loaded, num_batches: int, batch_size: int, seed: int = 0,
          sample_options: dict | None = None) -> dict[str, dict]:
  """Probes ``loaded`` (a ``vla_jax.jobs.main_job.LoadedPolicy``) on ``num_batches`` batches;
  ``sample_options`` are the head's static sampling options (e.g. ``{"rounds": 1}`` for
  discrete diffusion, ``{"mode": "ar"}`` for the hybrid; default: the evaluation's).

  Returns:
    ``{variant: {"mae": float [D], "invalid": int, "n": int}}`` for the variants of
    :data:`VARIANTS` and ``"mean action"`` (the baseline).
  """
  config = ml_collections.ConfigDict(loaded.config)
  it, _ = pipeline.make_eval_iterator(
      config.data, text_tokenizer=loaded.text_tokenizer, batch_size=batch_size,
      norm_stats={tabletop_demos.DATASET_NAME: loaded.norm_stats})
  options = dict(sample_options or {})
  sample = jax.jit(lambda p, o, k: loaded.policy.sample(p, o, k, **options)["actions"])
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
