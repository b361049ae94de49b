"""Reinforcement-learning fine-tuning of policies inside batched MJX environments (planned)."""
