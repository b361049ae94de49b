"""vla_jax: vision-language-action policies in JAX.

Version ranges are the ones this project is tested with (lower bound: the tested release).
"""

import setuptools

INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.13",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "chex>=0.1.92,<0.2",
    "absl-py>=2.5,<3",
    "ml-collections>=1.1,<2",
    "numpy>=2.0,<3",
    "scipy>=1.17,<2",
    "tensorflow-cpu>=2.21,<2.22",
    "tensorflow-datasets>=4.9.10,<5",
    "mujoco>=3.3,<5",
    "mujoco-mjx>=3.17,<4",
    "tokenizers>=0.23,<0.24",
    "sentencepiece>=0.2.3,<0.3",
    "safetensors>=0.8,<0.9",
    "matplotlib>=3.11,<4",
    "mediapy>=1.2.7,<2",
    "imageio>=2.38,<3",
    "tensorboardX>=2.6.5,<3",
    "tqdm>=4.67,<5",
    # tensorflow-datasets imports it to prepare datasets (builders) but does not declare it.
    "importlib-resources>=7.1,<8",
]

EXTRAS_REQUIRE = {
    "test": [
        "pytest>=9,<10",
        "pytest-xdist>=3.8,<4",
        "nbclient>=0.11,<0.12",
        "nbformat>=5.11,<6",
        "ipykernel>=7,<8",
        # Reference implementation for the checkpoint-parity tests. torch 2.13.0 is the CPU build
        # that this project's machines carry locally (a newer one would pull CUDA packages).
        "torch==2.13.0",
        "transformers>=5.23,<6",
    ],
    "tpu": ["jax[tpu]>=0.10.2,<0.13"],
    "cuda": ["jax[cuda12]>=0.10.2,<0.13"],
}

setuptools.setup(
    name="vla_jax",
    version="0.1.0",
    description="Vision-language-action robot policies in JAX: backbones, action tokenizers and "
    "heads, MJX simulation, RLDS data, sharded training.",
    packages=setuptools.find_packages(include=["vla_jax", "vla_jax.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
