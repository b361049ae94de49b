"""Whole jobs (the imitation main job; later RL and world models): the top of the import graph.

Only this package may import every other part of ``vla_jax`` (data, envs, eval, models,
tokenizers, training); ``training/`` stays model-agnostic.
"""
