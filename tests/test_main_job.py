"""The main job: its config, its consistency checks, and the whole job end to end at tiny sizes
(demo collection, training, periodic and final closed-loop evaluation, videos, report.md)."""

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


def _tiny_job_config(data_root):
  """The main job at tiny sizes: 8 demos of 12 steps at 32 px, 1-layer backbone, 4 steps."""
  c = _config_module().get_config(f"steps=4,eval_episodes=2,eval_every=2,data_root={data_root}")
  c.collect.num_train_episodes, c.collect.num_validation_episodes = 8, 2
  c.collect.batch_envs = 8
  c.collect.env.horizon = 12
  c.collect.keep_failures = True  # 12 steps are too short for most expert episodes to succeed
  for section in (c.collect.env, c.data, c.policy.backbone.vit):
    section.image_size = 32
  c.policy.backbone.vit.update(width=16, depth=1, mlp_dim=32, num_heads=2, keypoints=4)
  c.policy.backbone.llm.update(width=32, depth=1, mlp_dim=64, num_heads=2, num_kv_heads=1,
                               head_dim=16)
  c.policy.flow.update(expert_width=16, expert_mlp_dim=32, num_noise_samples=2)
  c.data.shuffle_buffer, c.data.episode_shuffle_buffer = 64, 4
  c.train.batch_size, c.train.log_every, c.train.checkpoint_every = 8, 2, 2
  c.train.warmup_steps = 1
  c.eval.update(batch_envs=4, periodic_episodes_per_task=1, video_episodes=1)
  return c


def test_main_job_end_to_end_at_tiny_size(tmp_path):
  config = _tiny_job_config(str(tmp_path / "data"))
  workdir = str(tmp_path / "run")
  lines = []
  path = main_job.run_main_job(config, workdir, command="pytest tiny main job",
                               print_fn=lambda *a, **k: lines.append(" ".join(map(str, a))))
  with open(path) as f:
    text = f.read()
  log = "\n".join(lines)
  # Periodic evaluation on dev at step 2 (not at the last step: the final one covers it).
  assert "[eval @ step 2] dev block" in log and "[eval @ step 4]" not in log
  # The final evaluation on test: per task and mean, with counts and 95% intervals.
  assert "on the **test** seed block" in text
  assert "| task | successes / episodes | success | 95% interval |" in text
  for task in ("reach", "push", "pick_place", "lift"):
    assert f"| {task} | " in text and " / 2 | " in text
  assert "| **mean over tasks** | " in text and " / 8 | " in text
  assert os.path.exists(os.path.join(workdir, "training_curve.png"))
  for task in ("reach", "push", "pick_place", "lift"):
    gif = os.path.join(workdir, "videos", f"{task}.gif")
    assert os.path.getsize(gif) > 0, gif
  # The run is self-describing: the checkpoint alone rebuilds the policy for experiments/eval.py.
  loaded = main_job.load_checkpoint_policy(workdir)
  assert loaded.step == 4 and loaded.config["eval"]["block"] == "test"
