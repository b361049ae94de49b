"""Latent dynamics, latent action models and imagined rollouts (planned)."""
