"""The world-model job: collect episodes in MJX, train the latent world model, write report_wm.md.

1. **Data** (:func:`collect_datasets`): one ``tabletop_demos`` RLDS dataset per expert noise
   scale in ``config.data.noise_scales``, recorded with the *executed* actions and keeping
   failures (a high noise scale makes the expert fail often: the model must see failures to
   predict them), and one per trained policy in ``config.data.policies`` (its own closed-loop
   rollouts through the one rollout, failures included: what a policy does is what the model
   must imagine when it evaluates or steers one). Datasets are cached under
   ``<data_dir>/expert_noise<scale>`` and ``<data_dir>/policy_<run>_<step>``.
2. **Training** through the one train loop (checkpoints, resume, SIGTERM, TensorBoard) on windows
   of ``world_model.window`` control steps (:mod:`vla_jax.world_model.data`).
3. **Report** (:func:`evaluate_open_loop`): on the validation episodes, the imagined rollout of the
   recorded actions from each episode's first observation against the truth, per horizon (image
   and proprio error, next to the no-change baseline), final-success agreement, and GIFs of
   imagined next to true rollouts.
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
from matplotlib.figure import Figure

from vla_jax.data import collect, tabletop_demos
from vla_jax.envs import tabletop, tasks
from vla_jax.eval import report as report_lib
from vla_jax.eval import videos
from vla_jax.training import assets as assets_lib
from vla_jax.training import checkpoints, trainer
from vla_jax.world_model import data as data_lib
from vla_jax.world_model.model import WorldModel

SOURCE_SEED_STRIDE = 1_000_000  # each noise scale's episodes start this many demo seeds later


DEFAULT_POLICIES = "workdirs/vla_tiny@2000+workdirs/vla_tiny@6000"


def default_data_config(noise: str = "0.1+0.5+1.0", policies: str = DEFAULT_POLICIES,
                        episodes: int = 400, data_dir: str = "") -> ml_collections.ConfigDict:
  """The ``data`` section of the world-model datasets (configs/wm_tiny.py, and the chunk value
  of configs/value_tiny.py, which shares them): ``noise`` and ``policies`` "+"-separated
  (``policies="none"``: experts only); ``data_dir`` "" = ``<workdir>/tfds``."""
  return ml_collections.ConfigDict({
      "noise_scales": noise,
      "policies": "" if policies == "none" else policies,
      "train_episodes": episodes,      # per source (noise scale or policy)
      "validation_episodes": 24,       # per source
      "batch_envs": 200,
      "steps_after_success": 10,
      "data_dir": data_dir,
  })


def noise_scales(text: str) -> list[float]:
  """The noise scales of ``data.noise_scales`` ("0.1,0.6" or "0.1+0.6")."""
  try:
    scales = [float(s) for s in tabletop.split_list(text)]
  except ValueError:
    scales = []
  if not scales or min(scales) < 0:
    raise ValueError(f"world-model config 'data.noise_scales': '{text}' must list noise scales "
                     ">= 0, e.g. '0.1+0.6'")
  return scales


def collect_config_for(config: ml_collections.ConfigDict, index: int, noise: float
                       ) -> ml_collections.ConfigDict:
  """The collection settings of source ``index`` (expert with action noise ``noise``)."""
  d = config.data
  cc = collect.default_collect_config()
  cc.env = ml_collections.ConfigDict(config.env)
  cc.num_train_episodes = d.train_episodes
  cc.num_validation_episodes = d.validation_episodes
  cc.seed = index * SOURCE_SEED_STRIDE
  cc.batch_envs = d.batch_envs
  cc.noise_scale = float(noise)
  cc.action_label = "executed"
  cc.steps_after_success = d.steps_after_success
  cc.keep_failures = True
  return cc


def policy_sources(text: str) -> list[tuple[str, int | None]]:
  """``(workdir, step or None = latest)`` of each ``data.policies`` entry ("" = none;
  "workdirs/vla_tiny@2000+workdirs/vla_tiny")."""
  out = []
  for entry in tabletop.split_list(text or ""):
    workdir, _, step = entry.partition("@")
    try:
      out.append((workdir, int(step) if step else None))
    except ValueError as e:
      raise ValueError(f"world-model config 'data.policies': '{entry}' must be WORKDIR or "
                       "WORKDIR@STEP") from e
  return out


def policy_rollout_fn(loaded: Any, env: tabletop.TabletopEnv, batch_envs: int) -> Callable:
  """``seeds int [batch_envs] -> traj``: a trained policy (a ``main_job.LoadedPolicy``) in
  ``env`` through the evaluator's adapter and the one rollout, its executed actions recorded as
  the labels (``collect.make_rollout_fn``'s contract). A chunk that does not decode is a NaN
  action: the env flags the error and the episode is dropped, as a failed expert's would be."""
  from vla_jax.envs import rollout as rollout_lib  # pylint: disable=g-import-not-at-top
  from vla_jax.jobs import main_job  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(loaded.config)
  adapter = main_job.make_evaluator(config, loaded.policy, loaded.norm_stats,
                                    loaded.text_tokenizer, env=env).adapter

  def labelled(obs, key, carry, params):
    action, carry, _ = adapter(obs, key, carry, params)
    return action, carry, {"label": action}

  run = rollout_lib.make_seeded_rollout(env, rollout_lib.make_rollout(env, labelled),
                                        per_env_keys=False)
  carry0 = adapter.initial_carry(batch_envs)
  return lambda seeds: run(jnp.asarray(seeds, jnp.int32), None, carry0, loaded.params)[1]


def collect_datasets(config: ml_collections.ConfigDict, data_dir: str) -> list[str]:
  """Builds (or finds cached) one dataset per noise scale and per policy; returns their version
  directories."""
  if config.data.train_episodes >= SOURCE_SEED_STRIDE:
    raise ValueError(f"world-model config 'data.train_episodes' must be < {SOURCE_SEED_STRIDE}")
  scales = noise_scales(config.data.noise_scales)
  paths = []
  for i, noise in enumerate(scales):
    paths.append(tabletop_demos.build_demo_dataset(
        collect_config_for(config, i, noise), os.path.join(data_dir, f"expert_noise{noise:g}")))
  for j, (workdir, step) in enumerate(policy_sources(config.data.get("policies", ""))):
    paths.append(_collect_policy(config, len(scales) + j, workdir, step, data_dir))
  return paths


def _collect_policy(config, index: int, workdir: str, step: int | None, data_dir: str) -> str:
  from vla_jax.jobs import main_job  # pylint: disable=g-import-not-at-top
  if checkpoints.latest_step(workdir) is None:
    raise FileNotFoundError(
        f"world-model config 'data.policies': no policy checkpoint in {workdir}; train one with: "
        f"python experiments/train.py --config=configs/vla_tiny.py --workdir={workdir}")
  loaded = main_job.load_checkpoint_policy(workdir, step)
  policy_env = ml_collections.ConfigDict(loaded.config).collect.env
  diffs = checkpoints.config_mismatches(policy_env.to_dict(), config.env.to_dict())
  if diffs:
    raise ValueError(f"world-model config 'data.policies': {workdir} acts in another env than "
                     f"config.env: " + "; ".join(diffs))
  cc = collect_config_for(config, index, 0.0)
  cc.policy = f"{os.path.normpath(workdir)}@{loaded.step}"  # names the source in the cache check
  env = tabletop.make_env(config.env)
  run = os.path.basename(os.path.normpath(workdir))
  return tabletop_demos.build_demo_dataset(
      cc, os.path.join(data_dir, f"policy_{run}_{loaded.step}"),
      rollout_fn=policy_rollout_fn(loaded, env, cc.batch_envs))


def make_model(config: ml_collections.ConfigDict) -> WorldModel:
  env_cfg = config.env
  return WorldModel(config.world_model, camera=config.camera, image_size=int(env_cfg.image_size),
                    state_dim=4, action_dim=4)


@dataclasses.dataclass
class LoadedWorldModel:
  model: WorldModel
  params: Any
  config: ml_collections.ConfigDict
  step: int


def load_world_model(workdir: str, step: int | None = None,
                     expect: ml_collections.ConfigDict | None = None) -> LoadedWorldModel:
  """Rebuilds a trained world model from its checkpoint alone.

  ``expect``: a world-model config the checkpoint must match (its ``world_model`` section,
  camera and image size); a checkpoint from another config raises ValueError naming the keys.
  Raises FileNotFoundError naming the directory when there is no checkpoint.
  """
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if checkpoints.latest_step(ckpt_dir) is None:
    raise FileNotFoundError(
        f"no world-model checkpoint in {ckpt_dir}; make one with: python "
        f"experiments/train_world_model.py --config=configs/wm_tiny.py --workdir={workdir}")
  restored = checkpoints.load_assets(ckpt_dir, step)
  if restored.config is None or "world_model" not in restored.config:
    raise ValueError(f"the checkpoint in {ckpt_dir} is not a world model's (its config has no "
                     "'world_model' section)")
  config = ml_collections.ConfigDict(restored.config)
  if expect is not None:
    want = {"world_model": expect.world_model.to_dict(), "camera": expect.camera,
            "image_size": expect.env.image_size}
    have = {"world_model": config.world_model.to_dict(), "camera": config.camera,
            "image_size": config.env.image_size}
    diffs = checkpoints.config_mismatches(have, want)
    if diffs:
      raise ValueError(f"world-model checkpoint {ckpt_dir} was trained with another config: "
                       + "; ".join(diffs))
  model = make_model(config)
  params = checkpoints.load_params(ckpt_dir, step)
  resolved = step if step is not None else checkpoints.latest_step(ckpt_dir)
  return LoadedWorldModel(model, jax.tree.map(jnp.asarray, params), config, int(resolved))


def evaluate_open_loop(model: WorldModel, params: Any, episodes: data_lib.Episodes,
                       horizon: int, batch: int = 64) -> dict[str, Any]:
  """Imagines each episode's recorded actions from its first observation.

  Returns per-horizon means over the episodes that last that long (``k`` = 1 ... ``horizon``
  actions): ``image_mse`` and ``copy_image_mse`` (the no-change baseline: the first frame),
  ``ee_error_cm`` and ``copy_ee_error_cm``, ``count``; and per episode ``final_true`` /
  ``final_imagined`` success after its last imagined step, plus ``frames`` (true, imagined
  uint8 [T, H, W, 3]) of every episode for videos.
  """
  key = model.image_key

  @jax.jit
  def run(image0, state0, actions, iid):
    z0 = model.encode(params, {key: image0, "state": state0})
    return model.imagine(params, z0, actions, iid, context=image0)

  n = episodes.num_episodes
  sums = {k: np.zeros(horizon) for k in ("image_mse", "copy_image_mse", "ee_error_cm",
                                         "copy_ee_error_cm", "count")}
  final_true, final_imagined, frames = [], [], []
  for lo in range(0, n, batch):
    idx = np.minimum(np.arange(lo, lo + batch), n - 1)
    eps = [episodes.episode(int(i)) for i in idx]
    steps = np.array([min(len(e["actions"]) - 1, horizon) for e in eps])  # obs exist for k<=len-1
    pad = lambda x, t: np.concatenate([x[:t], np.repeat(x[t - 1:t], horizon + 1 - t, 0)])
    imgs = np.stack([pad(e["image"], s + 1) for e, s in zip(eps, steps)])
    states = np.stack([pad(e["state"], s + 1) for e, s in zip(eps, steps)])
    acts = np.stack([pad(e["actions"], s) for e, s in zip(eps, steps)])
    out = jax.device_get(run(imgs[:, 0], states[:, 0], acts[:, :horizon],
                             episodes.instruction_id[idx]))
    true = imgs[:, 1:].astype(np.float32) / 255.0
    pred = out[key].astype(np.float32) / 255.0
    copy = imgs[:, :1].astype(np.float32) / 255.0
    mask = np.arange(horizon)[None] < steps[:, None]
    keep = np.arange(len(idx)) < min(batch, n - lo)
    mask &= keep[:, None]
    img_err = ((pred - true) ** 2).mean((2, 3, 4))
    copy_err = ((copy - true) ** 2).mean((2, 3, 4))
    ee_err = 100 * np.linalg.norm(out["state"][..., :3] - states[:, 1:, :3], axis=-1)
    copy_ee = 100 * np.linalg.norm(states[:, :1, :3] - states[:, 1:, :3], axis=-1)
    for name, v in (("image_mse", img_err), ("copy_image_mse", copy_err),
                    ("ee_error_cm", ee_err), ("copy_ee_error_cm", copy_ee)):
      sums[name] += (v * mask).sum(0)
    sums["count"] += mask.sum(0)
    for j in np.flatnonzero(keep):
      s = steps[j]
      final_true.append(bool(eps[j]["success"][s - 1]))
      final_imagined.append(bool(out["success"][j, s - 1]))
      frames.append((imgs[j, :s + 1], np.concatenate([imgs[j, :1], out[key][j, :s]])))
  count = np.maximum(sums["count"], 1)
  result = {k: sums[k] / count for k in sums if k != "count"}
  result["count"] = sums["count"]
  result["final_true"] = np.array(final_true)
  result["final_imagined"] = np.array(final_imagined)
  result["frames"] = frames
  return result


def plot_horizon(result: dict[str, Any], path: str) -> str:
  """Image MSE and end-effector error against the horizon, with the no-change baseline."""
  fig = Figure(figsize=(9, 3.5))
  k = np.arange(1, len(result["image_mse"]) + 1)
  for i, (name, label) in enumerate((("image_mse", "image MSE"),
                                     ("ee_error_cm", "end-effector error (cm)"))):
    ax = fig.add_subplot(1, 2, i + 1)
    ax.plot(k, result[name], label="world model")
    ax.plot(k, result[f"copy_{name}"], "--", label="no change (first frame)")
    ax.set_xlabel("horizon (control steps)")
    ax.set_ylabel(label)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path


def horizon_table(result: dict[str, Any], horizons=(1, 4, 8, 16, 32, 49)) -> str:
  rows = ["| horizon | episodes | image MSE | no-change MSE | ee error (cm) | no-change (cm) |",
          "|---|---|---|---|---|---|"]
  for h in horizons:
    if h > len(result["image_mse"]) or result["count"][h - 1] == 0:
      continue
    i = h - 1
    rows.append(f"| {h} | {int(result['count'][i])} | {result['image_mse'][i]:.4f} | "
                f"{result['copy_image_mse'][i]:.4f} | {result['ee_error_cm'][i]:.2f} | "
                f"{result['copy_ee_error_cm'][i]:.2f} |")
  return "\n".join(rows)


def success_agreement(result: dict[str, Any]) -> str:
  t, p = result["final_true"], result["final_imagined"]
  return (f"Final success, imagined vs true, over {len(t)} validation episodes: agreement "
          f"{np.mean(t == p):.1%}; true rate {t.mean():.1%}, imagined rate {p.mean():.1%} "
          f"(true-positive {int((t & p).sum())}, false-positive {int((~t & p).sum())}, "
          f"false-negative {int((t & ~p).sum())}).")


def run_wm_job(config: ml_collections.ConfigDict, workdir: str, *, command: str = "",
               print_fn: Callable = print) -> str:
  """Runs the whole job (module docstring); returns the path of ``report_wm.md`` ("" when
  preempted)."""
  t0 = time.time()
  data_dir = config.data.data_dir or os.path.join(workdir, "tfds")
  print_fn(f"[data] collecting into {data_dir}", flush=True)
  paths = collect_datasets(config, data_dir)
  t_data = time.time() - t0
  model = make_model(config)
  train = data_lib.concatenate([data_lib.load_episodes(p, "train", config.camera) for p in paths])
  val = data_lib.concatenate([data_lib.load_episodes(p, "validation", config.camera)
                              for p in paths])
  data_rows = ["| source | episodes | steps | success |", "|---|---|---|---|"]
  for name, eps in (("train", train), ("validation", val)):
    finals = eps.success[eps.start + eps.length - 1]
    data_rows.append(f"| {name} ({len(paths)} sources) | {eps.num_episodes} | {len(eps.reward)} "
                     f"| {finals.mean():.1%} |")
  print_fn(f"[data] {train.num_episodes} train / {val.num_episodes} validation episodes in "
           f"{t_data:.0f} s", flush=True)

  wm = config.world_model

  def make_data_iterator(*, start_step, local_batch_size, process_index, process_count):
    del process_count
    return data_lib.window_iterator(train, window=wm.window, batch_size=local_batch_size,
                                    seed=config.train.seed * 1000 + process_index,
                                    start_step=start_step, camera=config.camera)

  t1 = time.time()
  result = trainer.train(config, workdir, model=model, make_data_iterator=make_data_iterator,
                         assets=assets_lib.Assets(config=config), print_fn=print_fn)
  t_train = time.time() - t1
  if result.preempted:
    return ""
  params = jax.tree.map(jnp.asarray, jax.device_get(result.state.params))
  if jax.process_index() != 0:
    return ""

  horizon = int(config.report.horizon)
  t2 = time.time()
  res = evaluate_open_loop(model, params, val, horizon)
  vdir = os.path.join(workdir, "videos")
  gifs = []
  shown: set[int] = set()
  for i in range(val.num_episodes):
    task = int(val.task_id[i])
    if task in shown or len(gifs) >= config.report.videos:
      continue
    shown.add(task)
    true, imagined = res["frames"][i]
    gap = np.full(true.shape[:2] + (2, 3), 255, np.uint8)
    path = os.path.join(vdir, f"wm_{tasks.TASK_NAMES[task]}_ep{i}.gif")
    gifs.append(videos.write_gif(np.concatenate([true, gap, imagined], 2), path))
  plot = plot_horizon(res, os.path.join(workdir, "prediction_error.png"))
  curve = report_lib.plot_training_curve(result.history, [],
                                         os.path.join(workdir, "training_curve.png"))
  last = result.history[-1] if result.history else {}
  metrics = ", ".join(f"{k} {last[k]:.4f}" for k in ("loss", "image_mse", "state_mse",
                                                     "reward_mse", "success_bce",
                                                     "success_accuracy", "latent_mse")
                      if k in last)
  sections = [
      ("Data", "\n".join(data_rows) + f"\n\nCollected / found in {t_data:.0f} s: "
       + ", ".join(paths)),
      ("Training", f"{result.step} steps in {t_train / 60:.1f} min. Last logged: {metrics}.\n\n"
       f"![training curve]({os.path.basename(curve)})"),
      ("Prediction error against horizon (validation, open loop)",
       "The world model imagines each validation episode's recorded actions from its first "
       "observation; the no-change baseline predicts the first frame for every step.\n\n"
       + horizon_table(res) + f"\n\n![prediction error]({os.path.basename(plot)})\n\n"
       + success_agreement(res)),
      ("Imagined next to true rollouts", "Left: MJX; right: imagined from the same start "
       "state and actions.\n\n" + "\n".join(f"- {os.path.relpath(g, workdir)}" for g in gifs)),
      ("Time", f"data {t_data / 60:.1f} min, training {t_train / 60:.1f} min, report "
       f"{(time.time() - t2) / 60:.1f} min, total {(time.time() - t0) / 60:.1f} min"),
  ]
  path = report_lib.write_report(os.path.join(workdir, "report_wm.md"),
                                 title="World model (wm_tiny)", command=command, config=config,
                                 sections=sections)
  print_fn(horizon_table(res), flush=True)
  print_fn(success_agreement(res), flush=True)
  return path
