"""Test-wide settings: CPU only, quiet TensorFlow, deterministic."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# Cheaper XLA:CPU compilation: the suite is mostly compiles of tiny programs (the multi-process
# test measured 157 instead of 232 CPU-seconds). Tests that start processes with their own
# XLA_FLAGS (device counts) replace this.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 "
                      "--xla_llvm_disable_expensive_passes=true")
