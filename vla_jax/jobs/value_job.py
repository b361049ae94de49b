"""The chunk-value job: the steering scorer learned over a policy's backbone features (V-GPS).

1. **Data**: the world model's RLDS datasets (``config.data``, the same keys as
   ``configs/wm_tiny.py``, cached and shared with it: experts at several noise scales and the
   policy's own rollouts, failures included; ``wm_job.collect_datasets``).
2. **Features**: the starting policy's (``config.init_workdir``) backbone features of every
   step's observation, computed once (the backbone stays frozen), next to the next H executed
   actions (normalized as the policy's) and their return over ``value.lookahead`` steps
   (``vla_jax.world_model.value``).
3. **Training** of the MLP through the one train loop.
4. **Report** ``report_value.md``: validation error next to predicting the mean, and the rank
   correlation of predicted and true returns.

``experiments/steer.py --scorers=value --value=<workdir>`` steers the same checkpoint with it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import scipy.stats

from vla_jax.data import normalization
from vla_jax.envs import tabletop
from vla_jax.eval import report as report_lib
from vla_jax.jobs import main_job, rl_job, wm_job
from vla_jax.training import assets as assets_lib
from vla_jax.training import checkpoints, trainer
from vla_jax.world_model import data as data_lib
from vla_jax.world_model import value as value_lib


def example_arrays(loaded: Any, adapter: Any, episodes: data_lib.Episodes, lookahead: int,
                   batch: int = 256) -> dict[str, np.ndarray]:
  """``{"features" [M, W], "chunk" [M, H, D] (normalized), "target" [M]}`` of every step of
  ``episodes`` with a full chunk after it."""
  ex = value_lib.value_examples(episodes, loaded.policy.action_horizon, lookahead)
  iid = episodes.instruction_id[ex["episode"]]
  feats = jax.jit(lambda p, img, st, i: loaded.policy.features(
      p, value_lib.frame_observation(adapter, img, st, i)))
  out, m = [], len(ex["row"])
  for lo in range(0, m, batch):
    idx = np.minimum(np.arange(lo, lo + batch), m - 1)   # one static shape
    rows = ex["row"][idx]
    f = feats(loaded.params, episodes.image[rows], episodes.state[rows], iid[idx])
    out.append(np.asarray(jax.device_get(f))[:min(batch, m - lo)])
  chunk = normalization.normalize(ex["chunk"], adapter.action_stats, adapter.norm_mode)
  return {"features": np.concatenate(out).astype(np.float32),
          "chunk": np.asarray(chunk, np.float32), "target": ex["target"]}


def check_policy_env(loaded: Any, config: ml_collections.ConfigDict, what: str) -> None:
  """Raises ValueError when the policy's env differs from ``config.env`` (the data's)."""
  diffs = checkpoints.config_mismatches(
      ml_collections.ConfigDict(loaded.config).collect.env.to_dict(), config.env.to_dict())
  if diffs:
    raise ValueError(f"{what}: the policy acts in another env than config.env: "
                     + "; ".join(diffs))


@dataclasses.dataclass
class LoadedValue:
  model: value_lib.ValueModel
  params: Any
  config: ml_collections.ConfigDict
  step: int


def load_value(workdir: str) -> LoadedValue:
  """Rebuilds a trained chunk value from its checkpoint (FileNotFoundError names the command
  that makes one)."""
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if checkpoints.latest_step(ckpt_dir) is None:
    raise FileNotFoundError(f"no chunk-value checkpoint in {ckpt_dir}; make one with: python "
                            f"experiments/train_value.py --config=configs/value_tiny.py "
                            f"--workdir={workdir}")
  config = ml_collections.ConfigDict(checkpoints.load_assets(ckpt_dir).config)
  if "value" not in config:
    raise ValueError(f"the checkpoint in {ckpt_dir} is not a chunk value's (no 'value' section)")
  params = jax.tree.map(jnp.asarray, checkpoints.load_params(ckpt_dir))
  return LoadedValue(value_lib.ValueModel(config.value.hidden), params, config,
                     int(checkpoints.latest_step(ckpt_dir)))


def make_scorer(value: LoadedValue, loaded: Any, adapter: Any, workdir: str
                ) -> value_lib.ValueScorer:
  """The value scorer for steering ``loaded`` (a ``LoadedPolicy`` from ``workdir``); the value
  must have been trained on this checkpoint's features (else ValueError naming both)."""
  want = (os.path.abspath(value.config.init_workdir), int(value.config.policy_step))
  have = (os.path.abspath(workdir), int(loaded.step))
  if want != have:
    raise ValueError(f"the chunk value was trained on the features of {want[0]} step {want[1]}, "
                     f"not of the steered checkpoint {have[0]} step {have[1]}")
  return value_lib.ValueScorer(adapter, loaded.params, value.model, value.params)


def run_value_job(config: ml_collections.ConfigDict, workdir: str, *, command: str = "",
                  print_fn: Callable = print) -> str:
  """Runs the whole job (module docstring); returns the path of ``report_value.md``."""
  t0 = time.time()
  rl_job.require_init_checkpoint(config.init_workdir)
  loaded = main_job.load_checkpoint_policy(config.init_workdir, config.init_step or None)
  check_policy_env(loaded, config, "value config")
  base = ml_collections.ConfigDict(loaded.config)
  adapter = main_job.make_evaluator(base, loaded.policy, loaded.norm_stats,
                                    loaded.text_tokenizer,
                                    env=tabletop.make_env(base.collect.env)).adapter
  data_dir = config.data.data_dir or os.path.join(workdir, "tfds")
  paths = wm_job.collect_datasets(config, data_dir)
  split = {s: data_lib.concatenate([data_lib.load_episodes(p, s, config.camera) for p in paths])
           for s in ("train", "validation")}
  lookahead = config.value.lookahead
  arrays = {s: example_arrays(loaded, adapter, e, lookahead) for s, e in split.items()}
  train, val = arrays["train"], arrays["validation"]
  print_fn(f"[value] {len(train['target'])} train / {len(val['target'])} validation examples "
           f"(features {train['features'].shape[1]}) in {time.time() - t0:.0f} s", flush=True)

  def make_data_iterator(*, start_step, local_batch_size, process_index, process_count):
    del process_count

    def gen():
      step = start_step
      while True:
        rng = np.random.default_rng([config.train.seed, process_index, step])
        idx = rng.integers(0, len(train["target"]), local_batch_size)
        yield {k: v[idx] for k, v in train.items()}
        step += 1

    return gen()

  run_config = ml_collections.ConfigDict(config.to_dict())  # unlocked: it gains a key
  run_config.policy_step = loaded.step   # the features' checkpoint, checked when steering
  model = value_lib.ValueModel(config.value.hidden)
  result = trainer.train(run_config, workdir, model=model, make_data_iterator=make_data_iterator,
                         assets=assets_lib.Assets(config=run_config), print_fn=print_fn)
  if result.preempted:
    return ""
  params = jax.device_get(result.state.params)
  pred = np.asarray(jax.jit(model.apply)(params, val["features"], val["chunk"]))
  mse = float(np.mean((pred - val["target"]) ** 2))
  base_mse = float(np.mean((train["target"].mean() - val["target"]) ** 2))
  rho = float(scipy.stats.spearmanr(pred, val["target"]).statistic)
  line = (f"[value] validation MSE {mse:.4f} (predicting the mean: {base_mse:.4f}; R^2 "
          f"{1 - mse / base_mse:.3f}), Spearman rho {rho:.3f} over {len(pred)} examples")
  print_fn(line, flush=True)
  sections = [("Data", f"{len(paths)} datasets: " + ", ".join(paths) + f"\n\n{len(train['target'])}"
               f" train / {len(val['target'])} validation examples; target: reward summed over "
               f"{lookahead} steps (mean {train['target'].mean():.3f}, std "
               f"{train['target'].std():.3f})."),
              ("Validation", line[len("[value] "):]),
              ("Time", f"{(time.time() - t0) / 60:.1f} min")]
  path = report_lib.write_report(os.path.join(workdir, "report_value.md"),
                                 title="Chunk value over the policy's features (V-GPS style)",
                                 command=command, config=run_config, sections=sections)
  print_fn(f"[report] {path}", flush=True)
  return path
