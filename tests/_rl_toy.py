"""A micro RL setup on the real paths: the MJX tabletop env (reach, 16 px, short horizon), the
micro flow policy of ``_training_toy`` sized to the env, the one env adapter, and the RL step in
the one train loop (``vla_jax.rl.step.RLStepBuilder`` + ``trainer.train``).

Shared by tests/test_rl*.py and their subprocess workers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from _training_toy import tiny_policy_config

from vla_jax.envs import tabletop
from vla_jax.eval.closed_loop import EnvPolicyAdapter
from vla_jax.models import policy as policy_lib
from vla_jax.rl import collect
from vla_jax.rl import config as rl_config_lib
from vla_jax.rl import expert_iteration
from vla_jax.rl import step as rl_step
from vla_jax.training import default_train_config, trainer

IMG, HORIZON, CHUNK, TEXT_LEN, TEXT_VOCAB = 16, 6, 3, 4, 20


def make_env(done_on_success: bool = True, task: str = "reach") -> tabletop.TabletopEnv:
  c = tabletop.default_env_config()
  c.update(tasks=task, image_size=IMG, horizon=HORIZON, done_on_success=done_on_success,
           num_objects=2)
  return tabletop.make_env(c)


def identity_stats(dim: int) -> dict:
  one = {"mean": np.zeros(dim), "std": np.ones(dim), "min": -np.ones(dim), "max": np.ones(dim),
         "q01": -np.ones(dim), "q99": np.ones(dim), "mask": np.ones(dim, bool)}
  return {k: np.asarray(v) for k, v in one.items()}


def make_policy(env: tabletop.TabletopEnv) -> policy_lib.Policy:
  c = tiny_policy_config()
  c.flow.num_steps = 2
  return policy_lib.make_policy(c, action_dim=env.action_dim, action_horizon=CHUNK,
                                state_dim=env.state_dim, text_vocab_size=TEXT_VOCAB)


def make_adapter(env, policy) -> EnvPolicyAdapter:
  rng = np.random.default_rng(0)
  n = len(env.instructions)
  ids = jnp.asarray(rng.integers(1, TEXT_VOCAB, (n, TEXT_LEN)), jnp.int32)
  return EnvPolicyAdapter(policy, norm_stats={"action": identity_stats(env.action_dim),
                                              "state": identity_stats(env.state_dim)},
                          norm_mode="zscore", text_ids=ids, text_mask=jnp.ones(ids.shape, bool),
                          camera_names=["base"], image_shape=env.image_size,
                          state_dim=env.state_dim)


def rl_config(**overrides) -> ml_collections.ConfigDict:
  rl = rl_config_lib.default_rl_config()
  rl.update(num_groups=2, group_size=4, decisions_per_update=16, updates_per_iteration=2,
            eval_every=0)
  rl.update(**overrides)
  return rl


def train_config(rl, **overrides) -> ml_collections.ConfigDict:
  c = default_train_config()
  c.update(num_steps=4, batch_size=rl.num_groups * rl.group_size, learning_rate=3e-3,
           warmup_steps=0, end_lr_fraction=1.0, weight_decay=0.0, log_every=1,
           checkpoint_every=2, keep_checkpoints=4, sharding_min_size=64)
  mesh = overrides.pop("mesh", None)
  c.update(**overrides)
  if mesh is not None:
    c.mesh.update(**mesh)
  return c


class Model:
  """The train loop's model for RL: ``init`` from an example observation (the batch holds
  seeds; ``init_fn`` = ``RLStepBuilder.initial_params``, default the policy's own init),
  optionally starting from given params (``pretrained_params``)."""

  def __init__(self, policy, adapter, params=None, init_fn=None):
    self.policy, self.params = policy, params
    self.init_fn = init_fn or policy.init
    self.example = adapter.observation(adapter.initial_history(1), jnp.zeros((1,), jnp.int32))

  def init(self, rng, example_batch):
    del example_batch
    return self.init_fn(rng, self.example)

  def pretrained_params(self, abstract_params):
    if self.params is None:
      return None
    from vla_jax.training import transfer  # pylint: disable=g-import-not-at-top
    return {k: np.asarray(v) for k, v in transfer.named_leaves(self.params).items()}, "given"


def run(workdir: str, rl=None, mesh=None, params=None, print_fn=lambda *a, **k: None,
        env=None, on_batch=None, callback=None, callback_every=0,
        **train_overrides) -> trainer.TrainResult:
  """RL iterations of the micro policy in the micro env through ``trainer.train``.

  ``on_batch(step)``: called before the batch of ``step`` is made (tests send signals there);
  ``callback``/``callback_every``: passed to ``trainer.train``.
  """
  rl = rl or rl_config()
  env = env or make_env(rl.done_on_success)
  policy = make_policy(env)
  adapter = make_adapter(env, policy)
  config = ml_collections.ConfigDict({"rl": rl, "train": train_config(rl, **train_overrides)})
  task_ids = [int(i) for i in env.enabled_task_ids]
  episodes = collect.make_episode_iterator(rl.num_groups, rl.group_size, task_ids)

  def make_data_iterator(*, start_step, **kwargs):
    for step, batch in enumerate(episodes(start_step=start_step, **kwargs), start_step):
      if on_batch is not None:
        on_batch(step)
      yield batch

  if rl.algorithm == "exit":
    builder = expert_iteration.ExpertIterationStep(policy, env, adapter, rl)
  else:
    builder = rl_step.RLStepBuilder(policy, env, adapter, rl)
  return trainer.train(config, workdir,
                       model=Model(policy, adapter, params, builder.initial_params),
                       make_data_iterator=make_data_iterator, mesh=mesh, print_fn=print_fn,
                       callback=callback, callback_every=callback_every, make_step=builder)


def tree_max_diff(a, b) -> float:
  return max(float(jnp.max(jnp.abs(jnp.asarray(x, jnp.float32) - jnp.asarray(y, jnp.float32))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
