"""The main job of ``experiments/train.py``: data, tokenizers, policy, train, eval, report.

Every step is a library call so a notebook can run the same job piece by piece:

1. :func:`prepare_dataset` builds the MJX demonstration dataset once (cached under
   ``config.data_root``) and points ``config.data`` at it.
2. :func:`prepare_tokenizers` fits the text tokenizer on the instruction corpus (and FAST on the
   training action chunks for ``ar.tokenizer = "fast"``), or reloads them from the workdir when
   the run resumes, so a resumed run sees identical token ids.
3. :func:`build_policy` makes the policy of ``config.policy`` with the data's dimensions.
4. ``trainer.train`` runs the one train loop; a callback evaluates closed-loop every
   ``config.eval.every`` steps (one compiled :class:`~vla_jax.eval.closed_loop.Evaluator`).
5. The final evaluation (``config.eval.num_episodes_per_task`` per task on the ``test`` seed
   block; periodic ones use ``dev``, see ``vla_jax.eval.seeds``), rollout GIFs per task and
   ``report.md`` (every success rate with its episode count and 95% Wilson interval).

:func:`vla_jax.jobs.checks.check_config` runs first: data, policy and env must agree on cameras,
image size and history window before anything is built.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from vla_jax import atomic_files
from vla_jax.data import pipeline, tabletop_demos
from vla_jax.envs import tabletop
from vla_jax.eval import closed_loop, intervals, report, videos
from vla_jax.jobs import checks
from vla_jax.models import policy as policy_lib
from vla_jax.tokenizers import fast, text
from vla_jax.training import assets as assets_lib
from vla_jax.training import distributed, trainer
from vla_jax.training import mesh as mesh_lib

DATASET = tabletop_demos.DATASET_NAME
TOKENIZER_DIR = "tokenizers"  # <workdir>/tokenizers/{text,action}: fitted once, reused on resume
# How long the other processes of a multi-process run wait for what process 0 does alone
# (collect the demos: 130-151 s for the default ones on 2 CPU cores; fit the tokenizers; evaluate;
# write the report) [s]. If process 0 dies meanwhile, they stop sooner (heartbeat timeout).
WAIT_TIMEOUT_S = 4 * 3600


def prepare_dataset(config: ml_collections.ConfigDict, print_fn: Callable = print) -> str:
  """Builds the demo dataset if absent; sets and returns ``config.data.datasets.<name>.path``."""
  entry = config.data.datasets[DATASET]
  if entry.path:
    print_fn(f"[data] using {entry.path}", flush=True)
    return entry.path
  print_fn(f"[data] demonstrations in {config.data_root} (built on first use)", flush=True)
  entry.path = tabletop_demos.build_demo_dataset(config.collect, config.data_root)
  return entry.path


def _fit_fast(config, text_tokenizer, norm_stats, num_batches: int = 40) -> fast.FastTokenizer:
  """FAST fitted on normalized training action chunks ([N, H, D], no augmentation needed)."""
  it, _ = pipeline.make_train_iterator(config.data, text_tokenizer=text_tokenizer,
                                       batch_size=config.train.batch_size, seed=config.train.seed,
                                       norm_stats=norm_stats)
  chunks = np.concatenate([next(it)["actions"] for _ in range(num_batches)])
  tok = fast.FastTokenizer(config.data.horizon, chunks.shape[-1], scale=config.fast.scale,
                           vocab_size=config.fast.vocab_size)
  return tok.fit(chunks)


def prepare_tokenizers(config: ml_collections.ConfigDict, workdir: str, norm_stats: dict,
                       print_fn: Callable = print) -> tuple[text.TextTokenizer, Any]:
  """``(text_tokenizer, action_tokenizer or None)``; fitted on first run, reloaded after."""
  root = os.path.join(workdir, TOKENIZER_DIR)
  text_dir, action_dir = os.path.join(root, "text"), os.path.join(root, "action")
  if os.path.isdir(text_dir):
    text_tok = text.TextTokenizer.load(text_dir)
    print_fn(f"[tokenizers] text tokenizer reloaded from {text_dir}", flush=True)
  else:
    corpus = pipeline.instruction_corpus(config.data)
    text_tok = text.TextTokenizer.fit(corpus, config.text_vocab_size)
    text_tok.save(text_dir)
    print_fn(f"[tokenizers] text tokenizer fitted on {len(corpus)} instructions "
             f"(vocab {text_tok.vocab_size})", flush=True)
  action_tok = None
  if config.policy.head == "ar" and config.policy.ar.tokenizer == "fast":
    if os.path.isdir(action_dir):
      action_tok = fast.FastTokenizer.load(action_dir)
    else:
      action_tok = _fit_fast(config, text_tok, norm_stats)
      action_tok.save(action_dir)
      print_fn(f"[tokenizers] FAST fitted: {action_tok}", flush=True)
  return text_tok, action_tok


def prepare_shared(config: ml_collections.ConfigDict, workdir: str, print_fn: Callable = print
                   ) -> tuple[str, dict, text.TextTokenizer, Any]:
  """``(dataset path, norm stats by dataset, text tokenizer, action tokenizer or None)``.

  In a multi-process run process 0 alone builds the dataset (and caches its statistics) and
  fits and saves the tokenizers; the others wait for it (:func:`distributed.wait_for_all`), take
  its dataset path and read everything from there, so ``config.data_root`` and ``workdir`` must
  be on a filesystem every process sees. With one process this is the plain sequence.

  Raises:
    FileNotFoundError: on a process other than 0 that does not see what process 0 wrote.
  """
  index = jax.process_index()
  if index == 0:
    data_path = prepare_dataset(config, print_fn)
    stats_by_name = pipeline.load_norm_stats(config.data)
    tokenizers = prepare_tokenizers(config, workdir, stats_by_name, print_fn)
  else:
    print_fn(f"[main] process {index}: waiting for process 0 to prepare the dataset and the "
             "tokenizers", flush=True)
  distributed.wait_for_all("vla_jax.main_job.prepare_shared", WAIT_TIMEOUT_S)
  shared_path = distributed.broadcast_str(data_path if index == 0 else "")
  if index == 0:
    return (data_path, stats_by_name, *tokenizers)
  tok_dir = os.path.join(workdir, TOKENIZER_DIR)
  for what, path in (("dataset", shared_path), ("tokenizers", tok_dir)):
    if not os.path.isdir(path):
      raise FileNotFoundError(
          f"process {index}: the {what} that process 0 wrote at {path} is not visible here; "
          "config.data_root and the workdir must be on a filesystem every process sees")
  config.data.datasets[DATASET].path = shared_path
  data_path = prepare_dataset(config, print_fn)  # Only reads: the path is set.
  stats_by_name = pipeline.load_norm_stats(config.data)  # From process 0's cache.
  return (data_path, stats_by_name, *prepare_tokenizers(config, workdir, stats_by_name, print_fn))


def build_policy(config: ml_collections.ConfigDict, norm_stats: dict, text_tokenizer,
                 action_tokenizer=None) -> policy_lib.Policy:
  """The policy of ``config.policy`` sized by the dataset's action/state dimensions."""
  return policy_lib.make_policy(
      config.policy, action_dim=len(norm_stats["action"]["mean"]),
      action_horizon=config.data.horizon, state_dim=len(norm_stats["state"]["mean"]),
      text_vocab_size=text_tokenizer.vocab_size, action_tokenizer=action_tokenizer)


def check_data_matches_env(norm_stats: dict, env: tabletop.TabletopEnv, where: str) -> None:
  """Raises ValueError when the dataset's action/state dimensions differ from the env's."""
  for key, want in (("action", env.action_dim), ("state", env.state_dim)):
    got = len(norm_stats[key]["mean"])
    if got != want:
      raise ValueError(f"{where}: the dataset's {key} dimension is {got} but the env of "
                       f"config.collect.env acts with {key} dimension {want}; point "
                       f"config.data at a dataset of this env or change the env config")


def make_evaluator(config, policy, norm_stats, text_tokenizer,
                   env: tabletop.TabletopEnv | None = None,
                   sample_options: dict | None = None,
                   steering: Callable | None = None) -> closed_loop.Evaluator:
  """A compiled-once closed-loop evaluator in the env the demonstrations came from.

  ``sample_options``: static head sampling options (e.g. ``{"noise_temperature": 0.0}`` for the
  flow head, ``{"num_steps": 5}``); default none (the head's configured defaults).
  ``steering``: see :class:`vla_jax.eval.closed_loop.Evaluator` (default: none).
  """
  checks.check_config(config)
  env = env or tabletop.make_env(config.collect.env)
  check_data_matches_env(norm_stats, env, f"dataset {config.data.datasets[DATASET].path}")
  return closed_loop.Evaluator(env, policy, norm_stats=norm_stats,
                               norm_mode=config.data.norm_mode, text_tokenizer=text_tokenizer,
                               max_text_len=config.data.max_text_len,
                               batch_envs=config.eval.batch_envs,
                               camera_names=list(config.data.cameras),
                               window=config.data.window,
                               replan_every=config.eval.replan_every,
                               sample_options=sample_options, steering=steering)


def _dataset_summary(path: str) -> str:
  from vla_jax.data import rlds  # pylint: disable=g-import-not-at-top
  info = rlds.open_builder(path).info
  splits = ", ".join(f"{name}: {s.num_examples} episodes" for name, s in info.splits.items())
  meta = info.metadata or {}
  extra = f"\n\nCollection metadata: `{ {k: v for k, v in meta.items() if k != 'instructions'} }`"
  return f"Dataset `{path}`: {splits}.{extra if meta else ''}"


def run_main_job(config: ml_collections.ConfigDict, workdir: str, *, command: str = "",
                 print_fn: Callable = print) -> str:
  """Runs the whole job (see the module docstring); returns the path of ``report.md``.

  Multi-process (after :func:`vla_jax.training.distributed.initialize`): see
  :func:`prepare_shared` for the data and tokenizers; every process trains on its shard of the
  data. Evaluations run on process 0 alone, on its own full copy of the params (gathered from
  every process: FSDP may split them), while the others wait at a barrier; process 0 writes the
  report, and the others return ``""`` once it is written (none exits while another works).
  Splitting the evaluation episodes over the processes would divide its wall-clock by their
  number; not done yet.
  """
  t_start = time.time()
  checks.check_config(config)
  n_cpu = mesh_lib.configure_cpu_devices(config.train.cpu_devices, config.train.batch_size)
  if n_cpu:
    print_fn(f"[main] host CPU split into {n_cpu} single-threaded XLA devices "
             "(train.cpu_devices)", flush=True)
  os.makedirs(workdir, exist_ok=True)
  timings: dict[str, float] = {}

  t0 = time.time()
  data_path, stats_by_name, text_tok, action_tok = prepare_shared(config, workdir, print_fn)
  timings["data"] = time.time() - t0
  norm_stats = stats_by_name[DATASET]
  policy = build_policy(config, norm_stats, text_tok, action_tok)
  evaluator = make_evaluator(config, policy, norm_stats, text_tok)

  evals: list[tuple[int, float]] = []

  def periodic_eval(step: int, state) -> None:
    if step == config.train.num_steps:
      return  # The final evaluation below covers the last step with more episodes.
    params = distributed.local_copy(state.inference_params())  # In every process: a collective.
    if jax.process_index() == 0:
      res = evaluator(params,
                      num_episodes_per_task=config.eval.periodic_episodes_per_task,
                      block="dev", print_fn=lambda *a, **k: None)
      evals.append((step, res.mean_success))
      print_fn(f"[eval @ step {step}] {res.summary()}", flush=True)
    distributed.wait_for_all(f"vla_jax.main_job.periodic_eval_{step}", WAIT_TIMEOUT_S)

  def make_data_iterator(*, start_step, local_batch_size, process_index, process_count):
    it, _ = pipeline.make_train_iterator(
        config.data, text_tokenizer=text_tok, batch_size=local_batch_size,
        seed=config.train.seed, process_index=process_index, process_count=process_count,
        start_step=start_step, norm_stats=stats_by_name, action_tokenizer=action_tok,
        max_action_tokens=config.policy.ar.max_fast_tokens)  # FAST tokens: made on host
    return it

  tokenizers = {"text": text_tok}
  if action_tok is not None:
    tokenizers["action"] = action_tok
  assets = assets_lib.Assets(norm_stats=stats_by_name, tokenizers=tokenizers)
  t0 = time.time()
  result = trainer.train(config, workdir, model=policy, make_data_iterator=make_data_iterator,
                         assets=assets, print_fn=print_fn,
                         callback=periodic_eval if config.eval.every else None,
                         callback_every=config.eval.every)
  timings["train"] = time.time() - t0
  if result.preempted:
    print_fn("[main] preempted: no final evaluation; rerun the same command to resume",
             flush=True)
    return ""
  if not config.eval.num_episodes_per_task:
    if jax.process_index() == 0:
      write_results(workdir, config, result, timings, evals)
    print_fn("[main] eval.num_episodes_per_task = 0: trained only, no final evaluation",
             flush=True)
    return ""

  t0 = time.time()
  params = distributed.local_copy(result.state.inference_params())  # Collective (see docstring).
  if jax.process_count() > 1:
    print_fn(f"[main] process {jax.process_index()} of {jax.process_count()}: step {result.step}, "
             f"final loss {(result.history or [{}])[-1].get('loss')!r}, params "
             f"{distributed.tree_fingerprint(params)}", flush=True)
  if jax.process_index() != 0:
    distributed.wait_for_all("vla_jax.main_job.report", WAIT_TIMEOUT_S)
    return ""  # Process 0 evaluated and wrote the report.
  print_fn(f"[eval] final: {config.eval.num_episodes_per_task} episodes per task on the "
           f"'{config.eval.block}' seed block", flush=True)
  final = evaluator(params, num_episodes_per_task=config.eval.num_episodes_per_task,
                    block=config.eval.block, video_episodes=config.eval.video_episodes,
                    print_fn=print_fn)
  evals.append((result.step, final.mean_success))
  ms = evaluator.latency_ms(params)
  chunk = evaluator.chunk_stats(params)
  timings["eval"] = time.time() - t0
  print_fn(f"[eval] {final.summary()}; {ms:.1f} ms per action chunk", flush=True)

  video_lines = []
  for task, frames in final.videos.items():
    path = videos.write_gif(frames, os.path.join(workdir, "videos", f"{task}.gif"),
                            fps=config.collect.env.control_hz)
    video_lines.append(f"- {task}: [videos/{task}.gif]({os.path.relpath(path, workdir)})")
  curve = report.plot_training_curve(result.history, evals,
                                     os.path.join(workdir, "training_curve.png"))
  total = time.time() - t_start
  last = result.history[-1] if result.history else {}
  head = config.policy.head + (f" ({config.policy.ar.tokenizer})" if config.policy.head == "ar"
                               else "")
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(result.state.params))
  sections = [
      ("Summary",
       (f"Head **{head}**, {n_params / 1e6:.2f}M parameters. Mean closed-loop success over tasks "
       f"on the **{final.block}** seed block: **{intervals.format_rate(*final.totals)}** "
       f"(95% Wilson interval, episodes). "
       f"Wall-clock: {total / 60:.1f} min in all (data {timings['data']:.0f} s, training "
       f"{timings['train']:.0f} s, final evaluation {timings['eval']:.0f} s).")),
      ("Data", _dataset_summary(data_path)),
      ("Training",
       f"{result.step} steps at global batch {config.train.batch_size}; final loss "
       f"{last.get('loss', float('nan')):.4g}.\n\n![training curve]({os.path.basename(curve)})\n\n"
       + (f"Periodic evaluation on the dev seed block "
          f"({config.eval.periodic_episodes_per_task} episodes per task; step: mean success): "
          + ", ".join(f"{s}: {v:.0%}" for s, v in evals[:-1]) if len(evals) > 1 else "")),
      (f"Closed-loop success (final, {final.block} seed block)",
       report.success_table(final.per_task)
       + f"\n\nEpisodes with an error flag (invalid/NaN action): {int(final.error.sum())}. "
       f"Rollouts: {final.seconds:.1f} s"
       + (f" after compilation ({final.compile_seconds:.1f} s for the first, compiling batch)."
          if final.compile_seconds else " (compiled during the periodic evaluations).")),
      ("Inference latency", f"{ms:.1f} ms per action chunk (one observation, jitted, CPU)."),
      ("Rollout videos", "\n".join(video_lines) or "(none)"),
  ]
  path = report.write_report(os.path.join(workdir, "report.md"),
                             title=f"vla_jax main job: {head} head", command=command,
                             config=config, sections=sections)
  timings["total"] = total
  write_results(workdir, config, result, timings, evals, final=final,
                chunk={"latency_ms": ms, **chunk})
  print_fn(f"[report] {path}", flush=True)
  distributed.wait_for_all("vla_jax.main_job.report", WAIT_TIMEOUT_S)
  return path


RESULTS = "results.json"


def write_results(workdir: str, config: ml_collections.ConfigDict, result: trainer.TrainResult,
                  timings: dict[str, float], evals: list[tuple[int, float]],
                  final: closed_loop.EvalResult | None = None,
                  chunk: dict[str, float] | None = None) -> str:
  """Writes ``<workdir>/results.json``: what the job measured, for scripts that compare runs
  (``experiments/compare_heads.py``). Keys: ``head``, ``steps``, ``batch_size``, ``seconds``
  (data / train / eval / total wall-clock [s]), ``history`` (the logged loss and steps/s),
  ``dev_curve`` ([step, mean success] of the periodic dev evaluations), and after a final
  evaluation ``final`` (block, per-task [successes, episodes], mean, totals) and ``chunk``
  (latency_ms, nfe, tokens per action chunk)."""
  doc = {
      "head": config.policy.head + ("_fast" if config.policy.head == "ar"
                                    and config.policy.ar.tokenizer == "fast" else ""),
      "steps": result.step, "batch_size": config.train.batch_size,
      "seconds": {k: round(v, 1) for k, v in timings.items()},
      "history": [{k: float(h[k]) for k in ("step", "loss", "steps_per_s") if k in h}
                  for h in result.history],
      "dev_curve": [[int(s), float(v)] for s, v in (evals[:-1] if final is not None else evals)],
  }
  if final is not None:
    doc["final"] = {"block": final.block, "mean": final.mean_success,
                    "totals": list(final.totals),
                    "per_task": {t: list(v) for t, v in final.per_task.items()}}
  if chunk is not None:
    doc["chunk"] = chunk
  return atomic_files.write_json(os.path.join(workdir, RESULTS), doc, indent=1)


class LoadedPolicy(NamedTuple):
  """A policy rebuilt from a checkpoint's assets (see :func:`load_checkpoint_policy`)."""
  policy: policy_lib.Policy
  params: Any
  config: dict
  norm_stats: dict
  text_tokenizer: text.TextTokenizer
  step: int


def load_checkpoint_policy(workdir: str, step: int | None = None) -> LoadedPolicy:
  """Rebuilds the policy of a run from its checkpoint alone (config, stats, tokenizers, params).

  Raises FileNotFoundError naming the directory when there is no checkpoint or an asset is
  missing.
  """
  from vla_jax.tokenizers import assets as tok_assets  # pylint: disable=g-import-not-at-top
  from vla_jax.training import checkpoints  # pylint: disable=g-import-not-at-top
  ckpt_dir = os.path.join(workdir, "checkpoints")
  restored = checkpoints.load_assets(ckpt_dir, step)
  for name, value in (("config", restored.config), ("norm_stats", restored.norm_stats)):
    if value is None:
      raise FileNotFoundError(f"checkpoint in {ckpt_dir} has no '{name}' asset")
  if "text" not in restored.tokenizer_dirs:
    raise FileNotFoundError(f"checkpoint in {ckpt_dir} has no text tokenizer asset "
                            f"(tokenizers: {sorted(restored.tokenizer_dirs)})")
  config = ml_collections.ConfigDict(restored.config)
  text_tok = text.TextTokenizer.load(restored.tokenizer_dirs["text"])
  action_tok = (tok_assets.load_action_tokenizer(restored.tokenizer_dirs["action"])
                if "action" in restored.tokenizer_dirs else None)
  norm_stats = restored.norm_stats[DATASET]
  policy = build_policy(config, norm_stats, text_tok, action_tok)
  params = checkpoints.load_params(ckpt_dir, step)
  resolved = step if step is not None else checkpoints.latest_step(ckpt_dir)
  return LoadedPolicy(policy, params, restored.config, norm_stats, text_tok, resolved)
