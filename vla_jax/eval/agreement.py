"""How well a proxy evaluator (a world model, another simulator) ranks policies like the truth.

Given the true success rates ``real`` [P] of P policies and the proxy's ``proxy`` [P]:

- :func:`pearson`: linear correlation of the rates (WorldGym reports r ~ 0.78 against real
  robots, Quevedo et al. 2025).
- :func:`spearman`: correlation of their ranks (ties share the average rank).
- :func:`mmrv`: the mean maximum rank violation of SimplerEnv (Li et al. 2024, eq. 1): for each
  policy, the largest true-success gap to a policy the proxy orders the other way round,
  averaged over policies. 0 when the proxy orders every pair as the truth does; a violation
  between policies of nearly equal true success costs little.

scipy gives the correlations; MMRV is not in a library, so it is written out here.
"""

from __future__ import annotations

import numpy as np
import scipy.stats


def _check(real, proxy) -> tuple[np.ndarray, np.ndarray]:
  real, proxy = np.asarray(real, np.float64), np.asarray(proxy, np.float64)
  if real.ndim != 1 or real.shape != proxy.shape or len(real) < 2:
    raise ValueError(f"agreement: real {real.shape} and proxy {proxy.shape} must be two vectors "
                     "of the same length >= 2 (one rate per policy)")
  if not (np.all(np.isfinite(real)) and np.all(np.isfinite(proxy))):
    raise ValueError("agreement: success rates must be finite")
  return real, proxy


def pearson(real, proxy) -> float:
  """Pearson r of two rate vectors [P]; NaN when either is constant (r is undefined)."""
  real, proxy = _check(real, proxy)
  if np.ptp(real) == 0 or np.ptp(proxy) == 0:
    return float("nan")
  return float(scipy.stats.pearsonr(real, proxy).statistic)


def spearman(real, proxy) -> float:
  """Spearman rho of two rate vectors [P] (average ranks for ties); NaN when either is
  constant."""
  real, proxy = _check(real, proxy)
  if np.ptp(real) == 0 or np.ptp(proxy) == 0:
    return float("nan")
  return float(scipy.stats.spearmanr(real, proxy).statistic)


def mmrv(real, proxy) -> float:
  """Mean maximum rank violation [same units as ``real``] of ``proxy`` against ``real`` [P].

  ``mean_i max_j |real_i - real_j| * [(proxy_i < proxy_j) != (real_i < real_j)]``.
  """
  real, proxy = _check(real, proxy)
  violated = (proxy[:, None] < proxy[None, :]) != (real[:, None] < real[None, :])
  gaps = np.abs(real[:, None] - real[None, :]) * violated
  return float(gaps.max(axis=1).mean())
