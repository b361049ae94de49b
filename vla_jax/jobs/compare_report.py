"""``compare_heads.md`` from the variants' ``results.json`` files (``vla_jax.jobs.compare_heads``).

One row per variant (success per task on the final evaluation's block with 95% Wilson intervals,
NFE, latency, tokens per chunk, steps, training minutes), the learning curves, and the seed
papers' claims with verdicts: two success rates differ only when their 95% intervals do not
overlap (:func:`compare_rates`); otherwise the difference is "inside the noise".
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

from vla_jax import atomic_files
from vla_jax.eval import intervals

RESULTS = "results.json"  # vla_jax.jobs.main_job.RESULTS (not imported: keeps this import light)
HYBRID_PARTS = ("flow", "ar")  # The hybrid's heads alone: results_<mode>.json in its workdir.


def collect_rows(workdir: str, names: Sequence[str]) -> dict[str, dict]:
  """name -> results (``results.json``; the hybrid's parts as ``hybrid:flow`` / ``hybrid:ar``)
  of every variant with a final evaluation."""
  rows = {}
  for name in names:
    res = atomic_files.read_json(os.path.join(workdir, name, RESULTS))
    if res and "final" in res:
      rows[name] = res
    if name == "hybrid":
      for mode in HYBRID_PARTS:
        part = atomic_files.read_json(os.path.join(workdir, name, f"results_{mode}.json"))
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


def write_report(workdir: str, names: Sequence[str], labels: Mapping[str, str],
                 rates: Mapping[str, float], steps: Mapping[str, int]) -> str:
  """Writes ``<workdir>/compare_heads.md`` and ``learning_curves.png`` from the results of the
  variants ``names`` (row labels ``labels``; those without a final evaluation are listed as not
  run yet), with their calibrated training ``rates`` [steps/s] and planned ``steps``."""
  rows = collect_rows(workdir, names)
  tasks = next((list(r["final"]["per_task"]) for r in rows.values()), [])
  head = (["variant"] + tasks + ["mean (95% interval)", "NFE / chunk", "latency (ms)",
                                 "tokens / chunk", "steps", "training (min): calibrated",
                                 "measured"])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name in [*names, *[f"hybrid:{m}" for m in HYBRID_PARTS]]:
    res = rows.get(name)
    label = labels.get(name, f"hybrid, {name[7:]} head alone")
    if res is None:
      if name in names:
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
