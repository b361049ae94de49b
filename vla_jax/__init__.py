"""vla_jax: vision-language-action policies in JAX."""

__version__ = "0.1.0"
