"""Writer: the tabletop_demos TFDS builder + collect library, with a tiny stand-in env.

The stand-in follows the env contract (reset/step/State/obs/info, experts as functions) so the
builder, the batched rollouts and the RLDS layout are tested without MJX compile times.
"""

import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from flax import struct

from vla_jax.data import collect, rlds, tabletop_demos
from vla_jax.data import standardize as std_lib


@struct.dataclass
class _State:
  data: jax.Array  # [2] position
  obs: dict
  reward: jax.Array
  done: jax.Array
  success: jax.Array
  info: dict


class _PointEnv:
  """A point that must reach a goal; 8x8 images whose colour encodes the position."""
  action_dim, state_dim, horizon, control_hz = 3, 4, 6, 10.0
  image_size = (8, 8)

  def __init__(self):
    self.task_names = ["near", "far"]
    self.instructions = ["go to the goal", "go far to the goal", "reach it"]
    self.camera_names = ["base"]

  def _obs(self, pos, goal):
    level = jnp.clip((pos[0] + 1.0) * 100.0, 0, 255).astype(jnp.uint8)
    return {"image/base": jnp.full((8, 8, 3), level, jnp.uint8),
            "state": jnp.concatenate([pos, goal]).astype(jnp.float32)}

  enabled_task_ids = np.array([0, 1], np.int32)

  def reset(self, rng):
    k1, k_rest = jax.random.split(rng)
    return self.reset_task(k_rest, jax.random.randint(k1, (), 0, 2))

  def reset_task(self, rng, task):
    _, k2, k3 = jax.random.split(rng, 3)
    goal = jax.random.uniform(k2, (2,), minval=-0.5, maxval=0.5) * (1 + task)
    pos = jnp.zeros(2)
    info = {"task_id": task.astype(jnp.int32),
            "instruction_id": jax.random.randint(k3, (), 0, 3).astype(jnp.int32),
            "step": jnp.int32(0), "error": jnp.bool_(False), "goal": goal}
    return _State(pos, self._obs(pos, goal), jnp.float32(0), jnp.bool_(False), jnp.bool_(False),
                  info)

  def step(self, state, action):
    pos = state.data + 0.25 * jnp.clip(action[:2], -1, 1)
    info = dict(state.info, step=state.info["step"] + 1)
    near = jnp.linalg.norm(pos - info["goal"]) < 0.1
    success = state.success | near
    return _State(pos, self._obs(pos, info["goal"]), success.astype(jnp.float32),
                  info["step"] >= self.horizon, success, info)


def _expert(env, state, rng, noise_scale=0.0):
  delta = (state.info["goal"] - state.data) / 0.25
  a = jnp.concatenate([jnp.clip(delta, -1, 1), jnp.ones(1)])
  return a + noise_scale * jax.random.normal(rng, a.shape)


def _config():
  return ml_collections.ConfigDict({
      "num_train_episodes": 10, "num_validation_episodes": 3, "seed": 5, "batch_envs": 4,
      "noise_scale": 0.0, "action_label": "executed", "steps_after_success": 1,
      "keep_failures": True, "env": {}})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("demos"))
  env = _PointEnv()
  path = tabletop_demos.build_demo_dataset(_config(), data_dir, env=env, expert_fn=_expert)
  return env, path, data_dir


def test_cached_dataset_is_reused_only_for_the_same_config(built):
  env, path, data_dir = built
  assert tabletop_demos.build_demo_dataset(_config(), data_dir, env=env, expert_fn=_expert) == path
  changed = _config()
  changed.noise_scale = 0.3
  with pytest.raises(ValueError, match=r"noise_scale: cached 0.0 != config 0.3"):
    tabletop_demos.build_demo_dataset(changed, data_dir, env=env, expert_fn=_expert)


def test_clean_labels_record_the_noiseless_expert_along_the_noisy_path():
  """DART: the env executes the noisy action; "clean" records the expert's own action."""
  env, seeds = _PointEnv(), np.arange(8)
  run = lambda label: collect.rollout_batch(collect.make_rollout_fn(env, _expert, 0.5, label),
                                            env, seeds)
  clean, executed = run("clean"), run("executed")
  np.testing.assert_array_equal(clean.state, executed.state)  # The same noisy trajectories.
  pos, goal = clean.state[..., :2], clean.state[..., 2:]
  np.testing.assert_allclose(clean.action[..., :2], np.clip((goal - pos) / 0.25, -1, 1),
                             atol=1e-6)
  np.testing.assert_array_equal(clean.action[..., 2], 1.0)
  assert 0.4 < (executed.action - clean.action).std() < 0.6  # Executed = clean + N(0, 0.5).
  with pytest.raises(ValueError, match="'action_label': 'noisy' not in"):
    collect.make_rollout_fn(env, _expert, 0.5, "noisy")


def test_task_weights_set_the_task_mix():
  env, seeds = _PointEnv(), np.arange(64)
  only_far = collect.rollout_batch(
      collect.make_rollout_fn(env, _expert, 0.0, task_weights={"near": 0.0}), env, seeds)
  assert (only_far.task_id == 1).all()
  mixed = collect.rollout_batch(
      collect.make_rollout_fn(env, _expert, 0.0, task_weights={"far": 3.0}), env, seeds)
  assert 0.55 < mixed.task_id.mean() < 0.95  # P(far) = 0.75.
  np.testing.assert_allclose(collect.task_probabilities(env, {"far": 3.0}), [0.25, 0.75])
  assert collect.task_probabilities(env, {}) is None
  with pytest.raises(ValueError, match=r"task\(s\) \['fly'\] are not among the env's tasks"):
    collect.task_probabilities(env, {"fly": 1.0})
  with pytest.raises(ValueError, match="must be finite, >= 0 and not all zero"):
    collect.task_probabilities(env, {"near": 0.0, "far": 0.0})


def test_builder_writes_rlds_that_reads_back_equal(built):
  env, path, _ = built
  builder = rlds.open_builder(path)
  assert builder.info.splits["train"].num_examples == 10
  assert builder.info.splits["validation"].num_examples == 3
  assert builder.info.metadata["instructions"] == env.instructions
  counts = builder.info.metadata["counts"]["train"]
  assert sum(c["episodes"] for c in counts.values()) == 10

  # Reference: the same seeds rolled out directly.
  cfg = _config()
  fn = collect.make_rollout_fn(env, _expert, 0.0)
  ref = collect.rollout_batch(fn, env, collect.split_seeds(cfg, "train"))
  stack = lambda ep: {**ep, "steps": ep["steps"].batch(100).get_single_element()}
  episodes = list(builder.as_dataset(split="train").map(stack).as_numpy_iterator())
  for i, ep in enumerate(episodes):
    steps, meta = ep["steps"], ep["episode_metadata"]
    n = collect.episode_length(ref.success[i], cfg.steps_after_success)
    np.testing.assert_array_equal(steps["action"], ref.action[i, :n])
    np.testing.assert_array_equal(steps["observation"]["state"], ref.state[i, :n])
    np.testing.assert_array_equal(steps["observation"]["image_base"], ref.images["base"][i, :n])
    np.testing.assert_array_equal(steps["reward"], ref.reward[i, :n])
    assert steps["is_first"][0] and steps["is_last"][-1] and not steps["is_last"][:-1].any()
    assert bool(steps["is_terminal"][-1]) == bool(meta["success"]) == bool(ref.success[i, n - 1])
    assert meta["seed"] == cfg.seed + i and meta["episode_id"] == i
    assert meta["task"].decode() == env.task_names[ref.task_id[i]]
    text = env.instructions[ref.instruction_id[i]]
    assert all(s.decode() == text for s in steps["language_instruction"])
  # Successful episodes are cut shortly after the success; some episodes succeed here.
  assert any(len(ep["steps"]["action"]) < env.horizon for ep in episodes)

  # Replaying one episode alone from its recorded seed gives the same first observation.
  k_reset, _ = jax.random.split(jax.random.PRNGKey(int(episodes[3]["episode_metadata"]["seed"])))
  np.testing.assert_array_equal(env.reset(k_reset).obs["state"],
                                episodes[3]["steps"]["observation"]["state"][0])


def test_demos_read_through_the_standard_reader(built):
  _, path, _ = built
  ds = rlds.read_trajectories(path, std_lib.get_spec("tabletop_demos"), ("base",),
                              split="validation")
  trajs = list(rlds.iterate_numpy(ds, "demos"))
  assert len(trajs) == 3
  img = tf.io.decode_image(trajs[0]["image/base"][0]).numpy()
  assert img.shape == (8, 8, 3) and trajs[0]["actions"].shape[1] == 3


_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_package_alone_builds_the_demos_and_the_tfds_cli_finds_the_builder(tmp_path):
  """What ``pip install .`` ships (the ``vla_jax`` package, no repository around it) must build
  the demo dataset; the builder once lived in the repository's ``data/`` dir, loaded by a path
  relative to ``collect.py``, so an installed package could not build the demos. The thin
  ``data/tabletop_demos`` module must still give the TFDS CLI exactly one builder class."""
  site = tmp_path / "site"
  shutil.copytree(os.path.join(_REPO, "vla_jax"), site / "vla_jax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  script = textwrap.dedent(f"""
      import sys
      import vla_jax
      assert vla_jax.__file__.startswith({str(site)!r}), vla_jax.__file__  # not the source tree
      from vla_jax.data import tabletop_demos
      sys.path.append({os.path.join(_REPO, "tests")!r})  # the stand-in env, after the package
      import test_data_collect as t
      path = tabletop_demos.build_demo_dataset(t._config(), {str(tmp_path / "tfds")!r},
                                               env=t._PointEnv(), expert_fn=t._expert)
      assert path.endswith("tabletop_demos/1.0.0"), path
      import tensorflow_datasets as tfds
      with tfds.core.utils.add_sys_path({os.path.join(_REPO, "data")!r}):
        cls = tfds.core.community.builder_cls_from_module(
            "tabletop_demos.tabletop_demos_dataset_builder")
      assert issubclass(cls, tabletop_demos.Builder) and cls.name == "tabletop_demos", cls
      print("OK", path)
  """)
  env = dict(os.environ, PYTHONPATH=str(site))
  out = subprocess.run([sys.executable, "-c", script], cwd=str(site), env=env,
                       check=False, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and "OK " in out.stdout, out.stdout[-2000:] + out.stderr[-4000:]
  builder = rlds.open_builder(str(tmp_path / "tfds" / "tabletop_demos" / "1.0.0"))
  assert builder.info.splits["train"].num_examples == 10


def test_episode_length_cuts_after_success():
  assert collect.episode_length(np.array([0, 0, 1, 1, 1, 1], bool), 1) == 4
  assert collect.episode_length(np.array([0, 0, 0, 0, 0, 1], bool), 3) == 6
  assert collect.episode_length(np.zeros(5, bool), 1) == 5
  assert collect.split_seeds(_config(), "validation")[0] == 5 + collect.VALIDATION_SEED_OFFSET
  with pytest.raises(KeyError, match="unknown split"):
    collect.split_seeds(_config(), "test")
