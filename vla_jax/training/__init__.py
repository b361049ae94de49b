"""Mesh and sharding rules, train state, optimizer, checkpoints and the one train loop."""
