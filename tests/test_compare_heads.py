"""experiments/compare_heads.py's method without training: the equal-wall-clock step plan from
calibrated rates, the training rate read from a run's log, the claims' verdicts from success
counts (non-overlapping 95% intervals or "inside the noise"), and the report from variants'
``results.json`` files as the main job writes them (unfinished variants listed as not run).
The runs themselves are the main job's, tested end to end in tests/test_multihost_train.py."""

import json
import os

import pytest

from vla_jax.jobs import compare_heads, compare_report

TASKS = ("reach", "push", "pick_place", "lift")


def _results(successes, *, steps=1000, tokens=0.0, nfe=3, latency=2.0, curve=(), train_s=600):
  """A ``results.json`` document with ``successes`` of 100 episodes per task."""
  per_task = {t: [s, 100] for t, s in zip(TASKS, successes)}
  total = sum(successes)
  return {"head": "x", "steps": steps, "batch_size": 64, "seconds": {"train": train_s},
          "history": [], "dev_curve": [list(c) for c in curve],
          "final": {"block": "test", "mean": total / 400, "totals": [total, 400],
                    "per_task": per_task},
          "chunk": {"latency_ms": latency, "nfe": nfe, "tokens": tokens}}


def test_equal_wall_clock_plan_and_calibrated_rate():
  rates = {"flow": 5.0, "ar": 2.5, "hybrid": 1.25}
  assert compare_heads.plan_steps(rates, flow_steps=6000) == {"flow": 6000, "ar": 3000,
                                                                "hybrid": 1500}
  assert compare_heads.plan_steps(rates, flow_steps=6000, train_minutes=2) == {
      "flow": 600, "ar": 300, "hybrid": 150}
  with pytest.raises(ValueError, match="train_minutes"):
    compare_heads.plan_steps({"ar": 2.0}, flow_steps=6000)
  # The first logged interval holds the compilation: left out; the median of the rest.
  history = [{"step": 50, "steps_per_s": 0.5}] + [
      {"step": 100 + 50 * i, "steps_per_s": r} for i, r in enumerate((4.0, 6.0, 5.0))]
  assert compare_heads.training_rate({"history": history}) == 5.0
  with pytest.raises(ValueError, match="2 logged intervals"):
    compare_heads.training_rate({"history": history[:1]})


def test_variants_run_the_main_job_with_their_head_and_overrides(tmp_path):
  cmd = compare_heads.train_command("flow_m8", str(tmp_path / "m8"), 1234, eval_episodes=7,
                                    eval_every=300, data_root="/data")
  assert cmd[1].endswith(os.path.join("experiments", "train.py"))
  assert cmd[2].endswith("vla_tiny.py:head=flow,steps=1234,eval_episodes=7,eval_every=300,"
                         "data_root=/data")
  assert "--config.policy.flow.num_noise_samples=8" in cmd
  with pytest.raises(KeyError, match="unknown variant"):
    compare_heads.run_comparison(str(tmp_path), ["flow", "mlp"])


def test_claims_verdicts_follow_the_intervals():
  rows = {
      "ar": _results((90, 10, 20, 80), tokens=16, nfe=17, curve=[(500, 0.2), (1000, 0.4)]),
      "ar_fast": _results((95, 30, 40, 90), tokens=5, nfe=6, curve=[(700, 0.5)]),
      "discrete_diffusion": _results((10, 0, 0, 5), tokens=16, nfe=12),
      "flow": _results((100, 55, 82, 97), latency=2.5),
      "flow_m1": _results((100, 50, 80, 95), steps=9000),
      "flow_m8": _results((100, 52, 78, 96), steps=4000),
  }
  claims = compare_report.claims(rows)
  by_paper = {c.split(" (")[0]: (v, m) for c, v, m in claims}
  assert len(claims) == 6
  v, m = next(x[1:] for x in claims if "fewer tokens" in x[0])
  assert v == "confirmed" and "3.2x fewer" in m  # 16 / 5 tokens
  # ar_fast 255/400 vs ar 200/400: intervals [58.9, 68.4] and [45.1, 54.9] do not overlap.
  fast_learns = next(x for x in claims if "learns faster" in x[0])
  assert fast_learns[1] == "confirmed" and "dev at half the budget 50% vs 20%" in fast_learns[2]
  v, m = by_paper["Discrete Diffusion VLA"]
  assert v == "contradicted" and "12 vs 17 network evaluations" in m and "(lower)" in m
  v, m = by_paper["Mini-Diffuser"]
  assert v == "confirmed" and "inside the noise, inside the noise" in m
  v, m = by_paper["pi0 vs pi0-FAST"]
  assert v == "flow higher" and "latency 2.5 vs 2.0 ms" in m
  v, m = by_paper["HybridVLA"]
  assert v == "not run yet" and m == ""


def test_report_from_results_files(tmp_path):
  hybrid = _results((100, 60, 85, 97), nfe=20, tokens=16)
  hybrid["chunk"]["ensembled"] = 0.25
  for name, res in {"flow": _results((100, 55, 82, 97), curve=[(1500, 0.5), (3000, 0.7)]),
                    "hybrid": hybrid}.items():
    os.makedirs(tmp_path / name)
    (tmp_path / name / "results.json").write_text(json.dumps(res))
  for mode, succ in (("flow", (100, 50, 80, 97)), ("ar", (90, 5, 10, 80))):
    part = {k: v for k, v in _results(succ).items() if k != "seconds"}  # As evaluate_hybrid_parts
    (tmp_path / "hybrid" / f"results_{mode}.json").write_text(json.dumps(part))
  os.makedirs(tmp_path / "ar")  # Started, not finished: no results.json.
  rates = {"flow": 5.0, "ar": 2.0, "hybrid": 2.5}
  path = compare_report.write_report(str(tmp_path), ["flow", "ar", "hybrid"],
                                     compare_heads.labels(), rates,
                                     compare_heads.plan_steps(rates, flow_steps=6000))
  with open(path) as f:
    text = f.read()
  assert "| flow (pi0 expert, M = 4) | 100/100 | 55/100 | 82/100 | 97/100 | **83.5% [79.5, 86.8] " \
      "(n=400)** | 3 | 2.0 | 0.0 | 1000 | 3.3 | 10.0 |" in text, text
  assert "| AR binning (action expert) | not run yet |" in text
  assert "| hybrid (flow + AR binning, ensemble) (averaged on 25% of first chunks) | 100/100 |" \
      in text
  assert "| hybrid, ar head alone | 90/100 | 5/100 | 10/100 | 80/100 |" in text
  assert "| hybrid, flow head alone |" in text and "(same run)" in text
  # HybridVLA: 342/400 vs 327/400 (inside the noise) and vs 185/400 (higher).
  assert ("| HybridVLA (Liu et al. 2025): the ensemble beats each of its two heads alone | "
          "not confirmed (inside the noise) |") in text
  assert "Planned steps: flow 6000, ar 2400, hybrid 3000." in text
  assert os.path.getsize(tmp_path / "learning_curves.png") > 1000
