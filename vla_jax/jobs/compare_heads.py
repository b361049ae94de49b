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
5. ``compare_heads.md``: one row per variant, the learning curves (``learning_curves.png``:
   ``dev`` success against training minutes), and the seed papers' claims, each stated as
   confirmed or not with the numbers (:func:`claims`).

Two success rates are called different only when their 95% Wilson intervals do not overlap;
otherwise the difference is "inside the noise".
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence

from matplotlib.figure import Figure

from vla_jax.eval import intervals

RESULTS = "results.json"  # vla_jax.jobs.main_job.RESULTS (not imported: keeps this import light)
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
    "ar": Variant("ar", label="AR binning"),
    "ar_fast": Variant("ar_fast", label="AR FAST"),
    "discrete_diffusion": Variant("discrete_diffusion", label="discrete diffusion"),
    # Mini-Diffuser's level-2 minibatching: M noised copies per conditioning (flow uses M = 4).
    "flow_m1": Variant("flow", (("policy.flow.num_noise_samples", "1"),), "flow, M = 1"),
    "flow_m8": Variant("flow", (("policy.flow.num_noise_samples", "8"),), "flow, M = 8"),
}
DEFAULT = tuple(VARIANTS)
HYBRID_PARTS = ("flow", "ar")  # The hybrid's heads alone: results_<mode>.json in its workdir.


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


def load_json(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def save_json(path: str, doc: Mapping) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(doc, f, indent=1)
  os.replace(tmp, path)


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
  rates = load_json(path) or {}
  for name in names:
    if name in rates:
      continue
    run_dir = os.path.join(workdir, "calibration", name)
    run_logged(train_command(name, run_dir, steps, eval_episodes=0, eval_every=0,
                             data_root=data_root,
                             extra=[f"--config.train.log_every={log_every}",
                                    "--config.train.checkpoint_every=0"]),
               os.path.join(run_dir, "log.txt"), print_fn)
    results = load_json(os.path.join(run_dir, RESULTS))
    if results is None:
      raise FileNotFoundError(f"calibration of '{name}': no {RESULTS} in {run_dir}")
    rates[name] = training_rate(results)
    save_json(path, rates)
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
    save_json(os.path.join(run_dir, f"results_{mode}.json"), {
        "head": f"hybrid:{mode}", "steps": loaded.step,
        "final": {"block": res.block, "mean": res.mean_success, "totals": list(res.totals),
                  "per_task": {t: list(v) for t, v in res.per_task.items()}},
        "chunk": {"latency_ms": evaluator.latency_ms(loaded.params),
                  **evaluator.chunk_stats(loaded.params)}})


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
    done = load_json(os.path.join(run_dir, RESULTS))
    if not (done and "final" in done):
      run_logged(train_command(name, run_dir, steps[name], eval_episodes=eval_episodes,
                               eval_every=max(1, steps[name] // 4), data_root=data_root),
                 os.path.join(run_dir, "log.txt"), print_fn)
      done = load_json(os.path.join(run_dir, RESULTS))
      if not (done and "final" in done):  # Preempted (SIGTERM): its checkpoint is saved.
        path = write_report(workdir, names, rates, steps)
        print_fn(f"[compare] {name} stopped before its final evaluation; the report so far: "
                 f"{path}. Rerun the same command to resume.", flush=True)
        return path
    print_fn(f"[compare] {name}: {_summary(done)}", flush=True)
    if name == "hybrid":
      evaluate_hybrid_parts(run_dir, eval_episodes, print_fn)
  path = write_report(workdir, names, rates, steps)
  print_fn(f"[compare] {path} ({(time.time() - t0) / 60:.1f} min this call)", flush=True)
  return path


def _summary(results: Mapping | None) -> str:
  if not results or "final" not in results:
    return "no final evaluation"
  f = results["final"]
  return f"{f['block']} {intervals.format_rate(*f['totals'])} after {results['steps']} steps"


# ----------------------------------------------------------------------------------- the report


def collect_rows(workdir: str, names: Sequence[str]) -> dict[str, dict]:
  """name -> results (``results.json``; the hybrid's parts as ``hybrid:flow`` / ``hybrid:ar``)
  of every variant with a final evaluation."""
  rows = {}
  for name in names:
    res = load_json(os.path.join(workdir, name, RESULTS))
    if res and "final" in res:
      rows[name] = res
    if name == "hybrid":
      for mode in HYBRID_PARTS:
        part = load_json(os.path.join(workdir, name, f"results_{mode}.json"))
        if part:
          rows[f"hybrid:{mode}"] = part
  return rows


def compare_rates(a: Mapping, b: Mapping) -> str:
  """"higher" / "lower" when ``a``'s final success interval lies above / below ``b``'s, else
  "inside the noise"."""
  lo_a, hi_a = intervals.wilson(*a["final"]["totals"])
  lo_b, hi_b = intervals.wilson(*b["final"]["totals"])
  if lo_a > hi_b:
    return "higher"
  if hi_a < lo_b:
    return "lower"
  return "inside the noise"


def _rate(res: Mapping) -> str:
  return intervals.format_rate(*res["final"]["totals"])


def _dev_at(res: Mapping, fraction: float) -> float | None:
  """The dev success of the periodic evaluation nearest ``fraction`` of the run's steps."""
  curve = res.get("dev_curve") or []
  if not curve:
    return None
  want = fraction * res["steps"]
  return min(curve, key=lambda sv: abs(sv[0] - want))[1]


def claims(rows: Mapping[str, Mapping]) -> list[tuple[str, str, str]]:
  """``(claim, verdict, measured)`` for each seed paper's claim; "not run yet" where a row it
  needs is missing. Verdicts follow :func:`compare_rates` (non-overlapping 95% intervals)."""
  out = []

  def need(*names):
    return all(n in rows for n in names)

  claim = "FAST (Pertsch et al. 2025): 2-13x fewer tokens per chunk than binning"
  if need("ar", "ar_fast"):
    t_bin, t_fast = rows["ar"]["chunk"]["tokens"], rows["ar_fast"]["chunk"]["tokens"]
    ratio = t_bin / max(t_fast, 1e-9)
    out.append((claim, "confirmed" if ratio >= 2 else "not confirmed",
                f"{t_bin:.1f} binning vs {t_fast:.1f} FAST tokens: {ratio:.1f}x fewer"))
  else:
    out.append((claim, "not run yet", ""))

  claim = "FAST: the FAST AR policy learns faster than binning AR (equal wall-clock)"
  if need("ar", "ar_fast"):
    cmp = compare_rates(rows["ar_fast"], rows["ar"])
    half = [_dev_at(rows[n], 0.5) for n in ("ar_fast", "ar")]
    mid = (f"; dev at half the budget {half[0]:.0%} vs {half[1]:.0%}"
           if None not in half else "")
    out.append((claim, {"higher": "confirmed", "lower": "contradicted"}.get(
        cmp, "not confirmed (inside the noise)"),
        f"test {_rate(rows['ar_fast'])} FAST vs {_rate(rows['ar'])} binning{mid}"))
  else:
    out.append((claim, "not run yet", ""))

  claim = ("Discrete Diffusion VLA (Liang et al. 2025): 12 parallel rounds instead of one pass "
           "per token, at equal or better success than AR")
  if need("discrete_diffusion", "ar"):
    cmp = compare_rates(rows["discrete_diffusion"], rows["ar"])
    nfe_dd, nfe_ar = rows["discrete_diffusion"]["chunk"]["nfe"], rows["ar"]["chunk"]["nfe"]
    measured = (f"{nfe_dd:.0f} vs {nfe_ar:.0f} network evaluations per chunk; test "
                f"{_rate(rows['discrete_diffusion'])} vs {_rate(rows['ar'])} ({cmp})")
    out.append((claim, "contradicted" if cmp == "lower" else "confirmed", measured))
  else:
    out.append((claim, "not run yet", ""))

  claim = ("Mini-Diffuser (Hu et al. 2025): M noised samples per conditioning keep success at a "
           "fraction of the cost (M = 1, 4, 8 at equal wall-clock)")
  if need("flow_m1", "flow", "flow_m8"):
    base = rows["flow_m1"]
    verdicts = [compare_rates(rows[n], base) for n in ("flow", "flow_m8")]
    out.append((claim, "contradicted" if "lower" in verdicts else "confirmed",
                "; ".join(f"M = {m}: {_rate(rows[n])} in {rows[n]['steps']} steps"
                          for m, n in ((1, "flow_m1"), (4, "flow"), (8, "flow_m8")))
                + f" (M = 4, 8 vs 1: {verdicts[0]}, {verdicts[1]})"))
  else:
    out.append((claim, "not run yet", ""))

  claim = "pi0 vs pi0-FAST (Black et al. 2024; Pertsch et al. 2025): flow vs FAST tokens"
  if need("flow", "ar_fast"):
    f, a = rows["flow"], rows["ar_fast"]
    measured = (f"test {_rate(f)} vs {_rate(a)}; latency {f['chunk']['latency_ms']:.1f} vs "
                f"{a['chunk']['latency_ms']:.1f} ms per chunk")
    out.append((claim, f"flow {compare_rates(f, a)}", measured))
  else:
    out.append((claim, "not run yet", ""))

  claim = "HybridVLA (Liu et al. 2025): the ensemble beats each of its two heads alone"
  if need("hybrid", "hybrid:flow", "hybrid:ar"):
    h = rows["hybrid"]
    verdicts = [compare_rates(h, rows[f"hybrid:{m}"]) for m in HYBRID_PARTS]
    measured = (f"ensemble {_rate(h)}; flow head alone {_rate(rows['hybrid:flow'])} "
                f"({verdicts[0]}); AR head alone {_rate(rows['hybrid:ar'])} ({verdicts[1]})")
    verdict = ("confirmed" if verdicts == ["higher", "higher"] else
               "contradicted" if "lower" in verdicts else "not confirmed (inside the noise)")
    out.append((claim, verdict, measured))
  else:
    out.append((claim, "not run yet", ""))
  return out


def plot_learning_curves(rows: Mapping[str, Mapping], rates: Mapping[str, float],
                         path: str) -> str:
  """``dev`` success of the periodic evaluations against training minutes (steps / the
  calibrated rate), one line per variant, with its final ``test`` success as a marker."""
  fig = Figure(figsize=(8, 5))
  ax = fig.add_subplot()
  for name, res in rows.items():
    if name not in rates:
      continue
    minutes = [s / rates[name] / 60 for s, _ in res.get("dev_curve", [])]
    line, = ax.plot(minutes, [100 * v for _, v in res.get("dev_curve", [])], "o-", label=name)
    ax.plot([res["steps"] / rates[name] / 60], [100 * res["final"]["mean"]], "*",
            markersize=12, color=line.get_color())
  ax.set_xlabel("training wall-clock (min, calibrated)")
  ax.set_ylabel("success (%): dev (lines), final test (stars)")
  ax.set_ylim(0, 100)
  ax.legend(fontsize=8)
  ax.set_title("learning curves at equal training wall-clock")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path


def write_report(workdir: str, names: Sequence[str], rates: Mapping[str, float],
                 steps: Mapping[str, int]) -> str:
  """Writes ``<workdir>/compare_heads.md`` and ``learning_curves.png`` from the variants'
  results (those without a final evaluation are listed as not run yet)."""
  rows = collect_rows(workdir, names)
  tasks = next((list(r["final"]["per_task"]) for r in rows.values()), [])
  head = (["variant"] + tasks + ["mean (95% interval)", "NFE / chunk", "latency (ms)",
                                 "tokens / chunk", "steps", "training (min): calibrated",
                                 "measured"])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name in [*names, *[f"hybrid:{m}" for m in HYBRID_PARTS]]:
    res = rows.get(name)
    label = VARIANTS[name].label if name in VARIANTS else f"hybrid, {name[7:]} head alone"
    if res is None:
      if name in VARIANTS:
        lines.append(f"| {label} | " + " | ".join(["not run yet"] + [""] * (len(head) - 2))
                     + " |")
      continue
    per_task = [f"{s}/{n}" for s, n in (res["final"]["per_task"][t] for t in tasks)]
    chunk = res.get("chunk", {})
    if "ensembled" in chunk:
      label += f" (averaged on {chunk['ensembled']:.0%} of first chunks)"
    train_s = res.get("seconds", {}).get("train")
    calibrated = (f"{res['steps'] / rates[name] / 60:.1f}" if name in rates and train_s
                  else "(same run)")
    lines.append("| " + " | ".join([
        label, *per_task, f"**{_rate(res)}**", f"{chunk.get('nfe', float('nan')):.0f}",
        f"{chunk.get('latency_ms', float('nan')):.1f}", f"{chunk.get('tokens', 0):.1f}",
        str(res["steps"]), calibrated, f"{train_s / 60:.1f}" if train_s else "(same run)"])
                 + " |")
  claim_lines = ["| claim | verdict | measured |", "|---|---|---|"]
  claim_lines += [f"| {c} | {v} | {m} |" for c, v, m in claims(rows)]
  curve = plot_learning_curves(rows, rates, os.path.join(workdir, "learning_curves.png"))
  block = next((r["final"]["block"] for r in rows.values()), "test")
  text = "\n".join([
      "# Action heads side by side (experiments/compare_heads.py)", "",
      "Every variant is the main job (`configs/vla_tiny.py`) with its head changed, trained on "
      "the same cached demonstrations for the same training wall-clock: the steps below are "
      "the calibrated rates (steps/s, measured back to back: "
      + ", ".join(f"{n} {r:.2f}" for n, r in rates.items())
      + ") times the flow head's time for its steps. Success: final closed-loop evaluation on "
      f"the `{block}` seed block (successes / episodes per task; mean with its 95% Wilson "
      "interval). NFE: network evaluations per action chunk (Euler or denoising steps, decoding "
      "steps, refinement rounds; a hybrid runs both heads). Latency: one jitted chunk for one "
      "observation on this machine's CPU. Training minutes: calibrated = steps / calibrated rate "
      "(what the budget gives every variant); measured = this run's training wall-clock "
      "(periodic evaluations excluded), longer when the machine was shared.", "",
      "\n".join(lines), "",
      f"![learning curves]({os.path.basename(curve)})", "",
      "## The seed papers' claims on our tasks", "",
      "Two rates differ only when their 95% intervals do not overlap.", "",
      "\n".join(claim_lines), "",
      "Planned steps: " + ", ".join(f"{n} {s}" for n, s in steps.items()) + ".", ""])
  path = os.path.join(workdir, "compare_heads.md")
  with open(path, "w") as f:
    f.write(text)
  return path
