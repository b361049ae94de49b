"""configs/vla_tiny.py shrunk for tests/test_multihost_train.py: the same job and code paths
(demo collection, tokenizer fitting, flow policy, train loop, closed-loop evaluation, report) at
toy sizes: 8 reach demos of 10 steps at 32 px, a 2-layer backbone of width 32-64, 3 train steps,
a periodic evaluation at step 2 (dev seeds), a final one of 1 episode (test seeds). Params of at least 512 elements are split across the 2 processes
(``train.mesh.fsdp=-1``) so the evaluation's copy of the params needs the all-gather.

Give ``--config.data_root=<dir>``; ``arg`` is unused.
"""

import importlib.util
import os


def _vla_tiny():
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "vla_tiny.py")
  spec = importlib.util.spec_from_file_location("vla_tiny_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  del arg
  c = _vla_tiny().get_config("steps=3,batch_size=4,eval_episodes=1,eval_every=2")

  env = c.collect.env
  env.tasks, env.num_objects, env.horizon, env.image_size = "reach", 2, 10, 32
  c.collect.update(num_train_episodes=8, num_validation_episodes=2, batch_envs=8,
                   keep_failures=True)  # 10 steps are too few for the expert to always succeed

  c.data.image_size = 32
  c.data.shuffle_buffer = 64
  c.data.episode_shuffle_buffer = 4

  bb = c.policy.backbone
  bb.vit.update(image_size=32, width=32, depth=1, mlp_dim=64, num_heads=2, keypoints=4,
                head_dim=64)  # head_dim: the ViT projects to the LM width
  bb.llm.update(width=64, depth=1, mlp_dim=128, num_heads=2, num_kv_heads=1, head_dim=32)
  c.policy.flow.update(expert_width=32, expert_mlp_dim=64, num_noise_samples=1, num_steps=2)

  c.train.update(log_every=1, checkpoint_every=0, warmup_steps=1, sharding_min_size=512)
  c.train.mesh.update(data=1, fsdp=-1)

  c.eval.update(batch_envs=2, video_episodes=1, periodic_episodes_per_task=2)
  return c
