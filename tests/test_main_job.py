"""The main job's config, its consistency checks and the seed blocks.

The whole job end to end at tiny size (demo collection, training, periodic evaluation on dev,
final evaluation on test, videos, report.md, reloading the checkpoint) runs through its entry
point in tests/test_multihost_train.py, and piece by piece in colabs/quickstart.ipynb.
"""

import importlib.util
import itertools
import os

import numpy as np
import pytest

from vla_jax.envs import tabletop
from vla_jax.eval import seeds
from vla_jax.jobs import checks, main_job

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config_module():
  spec = importlib.util.spec_from_file_location("vla_tiny", os.path.join(_ROOT, "configs",
                                                                         "vla_tiny.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("head", ["flow", "diffusion", "ar", "ar_fast", "discrete_diffusion"])
def test_head_flag_switches_the_head(head):
  c = _config_module().get_config(f"head={head},steps=10")
  assert c.policy.head == ("ar" if head == "ar_fast" else head)
  assert c.train.num_steps == 10
  if head == "ar_fast":
    assert c.policy.ar.tokenizer == "fast"
  token_head = head in ("ar", "ar_fast", "discrete_diffusion")
  assert c.data.norm_mode == ("quantile" if token_head else "zscore")


def test_unknown_arg_key_lists_close_matches():
  with pytest.raises(KeyError, match="Did you mean: head"):
    _config_module().get_config("haed=flow")


def test_unknown_head_is_an_error():
  with pytest.raises(ValueError, match="head='flw'"):
    _config_module().get_config("head=flw")


def _stats(action_dim, state_dim):
  one = lambda d: {"mean": [0.0] * d}
  return {"action": one(action_dim), "state": one(state_dim)}


def test_dataset_dimension_disagreeing_with_env_is_an_error():
  env = tabletop.make_env(tabletop.default_env_config())
  main_job.check_data_matches_env(_stats(env.action_dim, env.state_dim), env, "ok")
  with pytest.raises(ValueError, match=r"action dimension is 7 .* dimension 4"):
    main_job.check_data_matches_env(_stats(7, env.state_dim), env, "dataset /some/where")
  with pytest.raises(ValueError, match="state dimension is 9"):
    main_job.check_data_matches_env(_stats(env.action_dim, 9), env, "dataset /some/where")


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    main_job.load_checkpoint_policy(str(tmp_path))


def test_data_policy_env_disagreements_are_named_before_anything_is_built():
  c = _config_module().get_config()
  checks.check_config(c)
  c.data.cameras = ("base", "wrist")
  c.collect.env.image_size = 32
  with pytest.raises(checks.ConfigMismatchError) as e:
    checks.check_config(c)
  msg = str(e.value)
  assert "data.cameras ('base', 'wrist') != policy.backbone.cameras ('base',)" in msg
  assert "collect.env.image_size=32" in msg and "data.image_size=64" in msg
  c = _config_module().get_config()
  c.policy.backbone.cameras = ("base", "wrist")
  c.data.cameras = ("base", "wrist")
  with pytest.raises(checks.ConfigMismatchError, match=r"include \['wrist'\], which collect.env"):
    checks.check_config(c)


def test_seed_blocks_are_disjoint_and_evaluation_refuses_demo_seeds():
  for a, b in itertools.pairwise([seeds.DEMO, seeds.DEV, seeds.TEST]):
    assert a.stop <= b.start
  s, t = seeds.eval_episodes("test", [0, 2], 3)
  np.testing.assert_array_equal(s, seeds.TEST.start + np.arange(6))
  np.testing.assert_array_equal(t, [0, 2, 0, 2, 0, 2])
  with pytest.raises(ValueError, match="'demo' block holds the training episodes"):
    seeds.eval_episodes("demo", [0], 1)
  with pytest.raises(ValueError, match="exceeds it"):
    seeds.DEV.seeds(2, seeds.BLOCK_SIZE - 1)
