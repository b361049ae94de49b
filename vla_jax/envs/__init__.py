"""MJX tabletop task suite, in-graph camera, scripted experts and the one batched rollout.

``make_env(default_env_config())`` builds the env; see ``tabletop.py`` for the API,
``tasks.py`` for the task families, ``camera.py`` for the renderer, ``experts.py`` for the
scripted experts and ``rollout.py`` for the jitted batched rollout (reset outside, any policy).
"""

from vla_jax.envs.tabletop import State, TabletopEnv, default_env_config, make_env

__all__ = ["State", "TabletopEnv", "default_env_config", "make_env"]
