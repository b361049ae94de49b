"""RLDS reading, standardization, normalization, transforms and the input pipeline.

Modules (each one job):
  rlds_features     TFDS feature specs: our demos, bridge_dataset, fractal20220817_data
  synthetic         small synthetic RLDS datasets with those structures (tests, benchmarks)
  collect           batched scripted-expert rollouts -> RLDS episodes
  tabletop_demos    the demo dataset's TFDS builder; build_demo_dataset
  rlds              open a local TFDS dir; per-process shard of standardized trajectories
  standardize       registry: dataset keys -> canonical image/<cam>, state, actions, language
  normalization     stats layout, normalize / unnormalize (zscore | quantile), JSON cache
  statistics        one-pass per-dataset stats, cached by dataset fingerprint
  traj_transforms   history window, action chunks (+ pad masks), goal relabeling, NaN checks
  frame_transforms  decode, resize, random resized crop, colour jitter
  pipeline          mixture -> shuffled, augmented host batches; train/eval iterators; corpus
  multihost         host batches -> global jax.Arrays on the mesh's data axes
  config            the ``config.data`` section of training configs
"""
