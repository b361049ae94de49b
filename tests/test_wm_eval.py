"""The world model as an evaluator: agreement statistics and the policy list."""

import numpy as np
import pytest

from vla_jax.eval import agreement, closed_loop
from vla_jax.jobs import wm_eval_job


def test_mmrv_matches_the_definition_on_a_hand_made_case():
  real = [0.9, 0.5, 0.4, 0.1]
  # The proxy swaps policies 1 and 2 (true gap 0.1) and ranks everything else as the truth.
  proxy = [0.8, 0.3, 0.35, 0.0]
  # Policy 0: no violation; 1 and 2: their swap, 0.1 each; 3: none -> mean 0.2 / 4.
  assert agreement.mmrv(real, proxy) == pytest.approx(0.05)
  assert agreement.mmrv(real, real) == 0.0
  # Reversing the order: each policy's largest violation is its largest true gap.
  rev = [-x for x in real]
  assert agreement.mmrv(real, rev) == pytest.approx((0.8 + 0.4 + 0.5 + 0.8) / 4)


def test_correlations_match_numpy():
  rng = np.random.default_rng(0)
  real, proxy = rng.uniform(size=9), rng.uniform(size=9)
  assert agreement.pearson(real, proxy) == pytest.approx(np.corrcoef(real, proxy)[0, 1])
  ranks = lambda x: np.argsort(np.argsort(x))
  assert agreement.spearman(real, proxy) == pytest.approx(
      np.corrcoef(ranks(real), ranks(proxy))[0, 1])
  assert np.isnan(agreement.pearson(real, np.ones(9)))
  with pytest.raises(ValueError, match="same length"):
    agreement.pearson(real, proxy[:3])


def _result(success: np.ndarray, task_id: np.ndarray) -> closed_loop.EvalResult:
  names = ["reach", "push"]
  per_task = {n: (int(success[task_id == t].sum()), int((task_id == t).sum()))
              for t, n in enumerate(names)}
  return closed_loop.EvalResult(
      block="dev", seeds=np.arange(len(success)), success=success, task_id=task_id,
      instruction_id=task_id, error=np.zeros_like(success), per_task=per_task,
      per_instruction={}, mean_success=float(success.mean()), seconds=0.0, compile_seconds=0.0,
      videos={})


def test_agreement_stats_of_a_perfect_and_of_a_shuffled_proxy():
  rng = np.random.default_rng(1)
  task_id = np.repeat([0, 1], 20)
  spec = wm_eval_job.PolicySpec("w", 0, 1)
  rates = np.linspace(0.1, 0.9, 8)
  real = [rng.uniform(size=40) < p for p in rates]
  perfect = [wm_eval_job.PolicyRow(spec, _result(r, task_id), _result(r, task_id), 0.0)
             for r in real]
  stats = wm_eval_job.agreement_stats(perfect)
  assert stats["pearson"] == pytest.approx(1.0) and stats["mmrv"] == 0.0
  assert stats["pearson_ci"][0] == pytest.approx(1.0)
  assert stats["episode_agreement"] == 1.0 and stats["policies"] == 8
  # A proxy that gives every policy the outcomes of another: rank information is lost.
  shuffled = [wm_eval_job.PolicyRow(spec, _result(r, task_id), _result(real[(i * 3) % 8],
                                                                        task_id), 0.0)
              for i, r in enumerate(real)]
  bad = wm_eval_job.agreement_stats(shuffled)
  assert bad["pearson"] < 0.5 and bad["mmrv"] > 0.1
  low, high = bad["pearson_ci"]
  assert low <= bad["pearson"] <= high


def test_parse_policies_names_what_is_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match="experiments/train.py"):
    wm_eval_job.parse_policies([str(tmp_path / "none@all")], [1])
  with pytest.raises(ValueError, match="replan_every"):
    wm_eval_job.parse_policies([str(tmp_path)], [0])
  with pytest.raises(ValueError, match="no policies"):
    wm_eval_job.parse_policies([], [1])
