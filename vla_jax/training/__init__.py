"""Mesh and sharding rules, train state, optimizer, checkpoints and the one train loop.

Public API:
  default_train_config()                       the ``train`` ConfigDict section
  trainer.train(config, workdir, *, model, make_data_iterator, assets=None, mesh=None,
                print_fn=print) -> TrainResult(state, step, preempted, history, train_step)
  assets.Assets(config, norm_stats, tokenizers, example_batch)   saved with every checkpoint
  mesh.make_mesh(mesh_config, devices=None)    Mesh with axes ('data', 'fsdp')
  sharding.tree_shardings(tree, mesh, min_size), sharding.batch_sharding(mesh)
  global_batch.to_global(host_batch, mesh, global_batch_size)
  checkpoints.load_params(dir, step=None), checkpoints.load_assets(dir, step=None)
  checkpoints.IncompatibleCheckpointError, trainer.NonFiniteLossError
  compile_check.compile_check(model, example_batch, train_config, mesh=None) -> report dict
  compile_check.batch_spec(batch_size, image_size=224, ...) -> ShapeDtypeStruct batch
  distributed.initialize(coordinator_address, num_processes, process_id)
"""

from vla_jax.training.config import default_train_config

__all__ = ["default_train_config"]
