"""Every action head trained on the same cached data for the same wall-clock, side by side.

The job of ``experiments/compare_heads.py`` (issue 17). Each entry of :data:`VARIANTS` is the main
job (``configs/vla_tiny.py``) with its head changed (and, for the Mini-Diffuser variants, the
flow head's level-2 copies), run as its own ``experiments/train.py`` process:

1. Calibration: every variant trains ``calibration_steps`` steps (training only) in
   ``<workdir>/calibration/<name>``, back to back, so the training rates (steps/s of the logged
   intervals after the first, which holds the compilation; input pipeline included) are measured
   side by side on the same machine. They are kept in ``calibration.json`` and reused when the
   comparison resumes.
2. Budget: every variant trains for the wall-clock the flow head needs for ``flow_steps`` (the
   main job's 6000): ``steps = flow_steps * rate / rate_flow`` (or ``train_minutes`` x rate).
   Step counts, not deadlines: the learning-rate schedule then ends where each run ends.
3. Each variant's main job (training, periodic ``dev`` evaluations at a quarter of its steps,
   the final ``test`` evaluation, ``report.md``, ``results.json``) in ``<workdir>/<name>``. A
   variant whose ``results.json`` holds a final evaluation is not rerun: stop the job any time
   and rerun the same command to continue (a stopped main job resumes from its checkpoint).
4. The hybrid head's checkpoint is evaluated again with each of its two heads alone (the same
   ``test`` episodes), for the paper's ablation.
5. ``compare_heads.md`` (:mod:`vla_jax.jobs.compare_report`): one row per variant, the
   learning curves (``learning_curves.png``: ``dev`` success against training minutes), and the
   seed papers' claims, each stated as confirmed or not with the numbers.

Two success rates are called different only when their 95% Wilson intervals do not overlap;
otherwise the difference is "inside the noise".
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence

from vla_jax import atomic_files
from vla_jax.eval import intervals
from vla_jax.jobs.compare_report import HYBRID_PARTS, RESULTS, write_report

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass(frozen=True)
class Variant:
  """One row: the ``configs/vla_tiny.py`` head argument and extra ``--config.`` overrides."""
  head: str
  overrides: tuple[tuple[str, str], ...] = ()
  label: str = ""


# In the order they run (and are listed): the default head and the newest first.
VARIANTS: dict[str, Variant] = {
    "flow": Variant("flow", label="flow (pi0 expert, M = 4)"),
    "hybrid": Variant("hybrid", label="hybrid (flow + AR binning, ensemble)"),
    "diffusion": Variant("diffusion", label="diffusion (expert denoiser, v)"),
    "ar": Variant("ar", label="AR binning (action expert)"),
    "ar_fast": Variant("ar_fast", label="AR FAST"),
    "discrete_diffusion": Variant("discrete_diffusion", label="discrete diffusion"),
    # Mini-Diffuser's level-2 minibatching: M noised copies per conditioning (flow uses M = 4).
    "flow_m1": Variant("flow", (("policy.flow.num_noise_samples", "1"),), "flow, M = 1"),
    "flow_m8": Variant("flow", (("policy.flow.num_noise_samples", "8"),), "flow, M = 8"),
}
DEFAULT = tuple(VARIANTS)


def train_command(name: str, workdir: str, steps: int, *, eval_episodes: int, eval_every: int,
                  data_root: str, extra: Sequence[str] = ()) -> list[str]:
  """The ``experiments/train.py`` command line of variant ``name`` (a list for subprocess)."""
  v = VARIANTS[name]
  args = [f"head={v.head}", f"steps={steps}", f"eval_episodes={eval_episodes}",
          f"eval_every={eval_every}", f"data_root={data_root}"]
  return ([sys.executable, os.path.join(REPO, "experiments", "train.py"),
           f"--config={os.path.join(REPO, 'configs', 'vla_tiny.py')}:{','.join(args)}",
           f"--workdir={workdir}"]
          + [f"--config.{k}={val}" for k, val in v.overrides] + list(extra))


def run_logged(cmd: Sequence[str], log_path: str, print_fn: Callable = print) -> None:
  """Runs ``cmd``, its output appended to ``log_path``; raises naming the log when it fails."""
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  print_fn(f"[compare] $ {' '.join(cmd)}  (log: {log_path})", flush=True)
  with open(log_path, "a") as log:
    code = subprocess.call(list(cmd), stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
  if code:
    with open(log_path) as f:
      tail = "".join(f.readlines()[-15:])
    raise RuntimeError(f"{cmd[1]} exited with {code}; the end of {log_path}:\n{tail}")


def training_rate(results: Mapping) -> float:
  """Steps per second of a run's logged intervals after the first (which holds compilation)."""
  rates = [h["steps_per_s"] for h in results["history"][1:] if "steps_per_s" in h]
  if not rates:
    raise ValueError(f"training_rate: need >= 2 logged intervals, got {results['history']}")
  return sorted(rates)[len(rates) // 2]  # The median: robust to one slow interval.


def calibrate(names: Sequence[str], workdir: str, *, steps: int, data_root: str,
              log_every: int, print_fn: Callable = print) -> dict[str, float]:
  """Training steps/s of each variant (see the module docstring), cached in
  ``<workdir>/calibration.json``; only variants missing there are measured."""
  path = os.path.join(workdir, "calibration.json")
  rates = atomic_files.read_json(path) or {}
  for name in names:
    if name in rates:
      continue
    run_dir = os.path.join(workdir, "calibration", name)
    run_logged(train_command(name, run_dir, steps, eval_episodes=0, eval_every=0,
                             data_root=data_root,
                             extra=[f"--config.train.log_every={log_every}",
                                    "--config.train.checkpoint_every=0"]),
               os.path.join(run_dir, "log.txt"), print_fn)
    results = atomic_files.read_json(os.path.join(run_dir, RESULTS))
    if results is None:
      raise FileNotFoundError(f"calibration of '{name}': no {RESULTS} in {run_dir}")
    rates[name] = training_rate(results)
    atomic_files.write_json(path, rates, indent=1)
    print_fn(f"[compare] calibration: {name} trains at {rates[name]:.2f} steps/s", flush=True)
  return {n: rates[n] for n in names}


def plan_steps(rates: Mapping[str, float], *, flow_steps: int,
               train_minutes: float = 0.0) -> dict[str, int]:
  """Steps per variant for equal training wall-clock: ``train_minutes`` x rate, or (0) the time
  the flow head takes for ``flow_steps``."""
  if train_minutes > 0:
    seconds = 60.0 * train_minutes
  elif "flow" in rates:
    seconds = flow_steps / rates["flow"]
  else:
    raise ValueError("plan_steps: without the 'flow' variant give train_minutes > 0")
  return {n: max(1, round(seconds * r)) for n, r in rates.items()}


def evaluate_hybrid_parts(run_dir: str, episodes: int, print_fn: Callable = print) -> None:
  """The hybrid checkpoint's final evaluation with each head alone (``HYBRID_PARTS``), on the same
  ``test`` episodes, into ``<run_dir>/results_<mode>.json`` (skipped when present)."""
  # Imported here: the comparison itself only starts processes; these pull in JAX and TF.
  import ml_collections  # pylint: disable=g-import-not-at-top

  from vla_jax.jobs import main_job  # pylint: disable=g-import-not-at-top
  todo = [m for m in HYBRID_PARTS if not os.path.exists(os.path.join(run_dir,
                                                                      f"results_{m}.json"))]
  if not todo:
    return
  loaded = main_job.load_checkpoint_policy(run_dir)
  config = ml_collections.ConfigDict(loaded.config)
  for mode in todo:
    evaluator = main_job.make_evaluator(config, loaded.policy, loaded.norm_stats,
                                        loaded.text_tokenizer, sample_options={"mode": mode})
    res = evaluator(loaded.params, num_episodes_per_task=episodes, block=config.eval.block,
                    print_fn=lambda *a, **k: None)
    print_fn(f"[compare] hybrid, {mode} head alone: {res.summary()}", flush=True)
    atomic_files.write_json(os.path.join(run_dir, f"results_{mode}.json"), {
        "head": f"hybrid:{mode}", "steps": loaded.step,
        "final": {"block": res.block, "mean": res.mean_success, "totals": list(res.totals),
                  "per_task": {t: list(v) for t, v in res.per_task.items()}},
        "chunk": {"latency_ms": evaluator.latency_ms(loaded.params),
                  **evaluator.chunk_stats(loaded.params)}}, indent=1)


def run_comparison(workdir: str, names: Sequence[str] = DEFAULT, *, flow_steps: int = 6000,
                   train_minutes: float = 0.0, calibration_steps: int = 150,
                   calibration_log_every: int = 50, eval_episodes: int = 100,
                   data_root: str = "workdirs/data", print_fn: Callable = print) -> str:
  """The whole comparison (module docstring); returns the path of ``compare_heads.md``."""
  unknown = [n for n in names if n not in VARIANTS]
  if unknown:
    raise KeyError(f"compare_heads: unknown variant(s) {unknown}; known: {list(VARIANTS)}")
  os.makedirs(workdir, exist_ok=True)
  data_root = os.path.abspath(data_root)
  t0 = time.time()
  rates = calibrate(names, workdir, steps=calibration_steps, data_root=data_root,
                    log_every=calibration_log_every, print_fn=print_fn)
  steps = plan_steps(rates, flow_steps=flow_steps, train_minutes=train_minutes)
  print_fn("[compare] steps for equal training wall-clock: "
           + ", ".join(f"{n} {s}" for n, s in steps.items()), flush=True)
  for name in names:
    run_dir = os.path.join(workdir, name)
    done = atomic_files.read_json(os.path.join(run_dir, RESULTS))
    if not (done and "final" in done):
      run_logged(train_command(name, run_dir, steps[name], eval_episodes=eval_episodes,
                               eval_every=max(1, steps[name] // 4), data_root=data_root),
                 os.path.join(run_dir, "log.txt"), print_fn)
      done = atomic_files.read_json(os.path.join(run_dir, RESULTS))
      if not (done and "final" in done):  # Preempted (SIGTERM): its checkpoint is saved.
        path = write_report(workdir, names, labels(), rates, steps)
        print_fn(f"[compare] {name} stopped before its final evaluation; the report so far: "
                 f"{path}. Rerun the same command to resume.", flush=True)
        return path
    print_fn(f"[compare] {name}: {_summary(done)}", flush=True)
    if name == "hybrid":
      evaluate_hybrid_parts(run_dir, eval_episodes, print_fn)
  path = write_report(workdir, names, labels(), rates, steps)
  print_fn(f"[compare] {path} ({(time.time() - t0) / 60:.1f} min this call)", flush=True)
  return path


def _summary(results: Mapping | None) -> str:
  if not results or "final" not in results:
    return "no final evaluation"
  f = results["final"]
  return f"{f['block']} {intervals.format_rate(*f['totals'])} after {results['steps']} steps"


def labels() -> dict[str, str]:
  """Variant name -> its row label in the report."""
  return {name: v.label for name, v in VARIANTS.items()}
