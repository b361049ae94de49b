"""MJX tabletop task suite, in-graph camera, scripted experts and wrappers.

``make_env(default_env_config())`` builds the env; see ``tabletop.py`` for the API,
``tasks.py`` for the task families, ``camera.py`` for the renderer, ``experts.py`` for the
scripted experts, ``wrappers.py`` for batching and ``rollout.py`` for jitted rollouts.
"""

from vla_jax.envs.tabletop import State, TabletopEnv, default_env_config, make_env

__all__ = ["State", "TabletopEnv", "default_env_config", "make_env"]
