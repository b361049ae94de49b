"""95% confidence intervals for success rates (Wilson score interval).

Wilson (1927) rather than the normal approximation: it stays inside [0, 1] and keeps its coverage
at rates near 0% or 100% and at small episode counts, where a reach task at 100/100 would
otherwise get a zero-width interval. scipy's ``binomtest(...).proportion_ci(method="wilson")``
computes the same interval; this closed form avoids a test object per table cell.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson(successes: int, episodes: int, z: float = Z95) -> tuple[float, float]:
  """``(low, high)`` of the Wilson score interval for ``successes`` out of ``episodes``."""
  if episodes < 1 or not 0 <= successes <= episodes:
    raise ValueError(f"wilson: need 0 <= successes ({successes}) <= episodes ({episodes}), "
                     "episodes >= 1")
  p = successes / episodes
  z2n = z * z / episodes
  center = (p + z2n / 2) / (1 + z2n)
  half = z / (1 + z2n) * math.sqrt(p * (1 - p) / episodes + z2n / (4 * episodes))
  return max(0.0, center - half), min(1.0, center + half)


def format_rate(successes: int, episodes: int) -> str:
  """``'81.0% [77.0, 84.5] (n=400)'``: rate, 95% Wilson interval in percent, episode count."""
  low, high = wilson(successes, episodes)
  return f"{successes / episodes:.1%} [{100 * low:.1f}, {100 * high:.1f}] (n={episodes})"
