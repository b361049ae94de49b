"""MJX tabletop task suite, in-graph camera, scripted experts and wrappers."""
