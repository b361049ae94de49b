"""RLDS reading, standardization, normalization, transforms and the input pipeline."""
