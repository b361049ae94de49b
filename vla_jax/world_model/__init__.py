"""Steering (``steering.py``: best-of-N with a scorer, the MJX oracle); learned latent dynamics
and imagined rollouts are planned (issue 18)."""
