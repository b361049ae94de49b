"""Closed-loop evaluation, success tables and rollout videos."""
