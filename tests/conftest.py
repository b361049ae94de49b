"""Test-wide settings: CPU only, quiet TensorFlow, deterministic, cheap XLA compilation.

Most tests are compiles of tiny programs: XLA's CPU backend without its expensive LLVM passes
compiles them faster (tests/test_heads.py: 179 s instead of 216 s here). The notebooks run with
XLA's defaults instead (tests/test_colabs.py), as a user runs them: they train for hundreds of
steps, where optimized code pays.

One persistent XLA compilation cache serves the whole session: created here (in the pytest
process, before xdist starts its workers, which inherit the variable, as do the processes the
multi-process tests and the notebooks start) and removed at the end. Many tests compile the same
programs (the MJX env's step and render at the tests' shared sizes, the experts' rollouts); a
warm cache halved tests/test_envs.py::test_env_api here (102 s -> 45 s). The key is the program
and the XLA flags, so a hit is the same executable.

The longest modules run first (``pytest_collection_modifyitems``): with ``-n 2 --dist
loadscope`` a module stays on one worker, and one started last would run alone at the end.
"""

import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

FAST_COMPILE_XLA_FLAGS = ("--xla_backend_optimization_level=0 "
                          "--xla_llvm_disable_expensive_passes=true")
os.environ.setdefault("XLA_FLAGS", FAST_COMPILE_XLA_FLAGS)

_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_OWN_CACHE = _CACHE_ENV not in os.environ   # a user's own cache dir is used and kept
if _OWN_CACHE:
  os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="vla_jax_test_xla_cache_")

# Modules measured slowest here (pytest --durations, 2-core machine, 2026-12-07), longest
# first; the rest keep their order after them.
SLOW_MODULES = ("test_multihost_train.py", "test_colabs.py", "test_heads.py",
                "test_rl_training.py", "test_sharding.py", "test_steering.py", "test_resume.py",
                "test_rl_exit.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(SLOW_MODULES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_MODULES)))  # stable


def pytest_unconfigure(config):
  # Only the process that created the cache removes it (xdist workers have "workerinput").
  if _OWN_CACHE and not hasattr(config, "workerinput"):
    shutil.rmtree(os.environ[_CACHE_ENV], ignore_errors=True)
