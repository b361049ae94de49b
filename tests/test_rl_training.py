"""RL fine-tuning in the one train loop: sharding, exact resume, NaN stop, named config errors.

Runs are the micro RL setup of ``_rl_toy`` (MJX reach at 16 px, the micro flow policy, 8 envs =
2 groups x 4, dense reward so that every group has return variance and every iteration updates).
Compiling the RL step costs 40-85 s here, so every process of this module (this one and the
``_rl_worker.py`` subprocesses) shares one persistent compilation cache: each program compiles
once. The 8-device run starts first and compiles in the background while this process compiles
the one-device program; the SIGKILL worker starts once that program is in the cache, and runs
while this process compiles the NaN test's program.
"""

import glob
import json
import os
import shutil
import subprocess
import sys

import _rl_toy
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _training_toy import tiny_policy_config, xla_flags
from jax.experimental.compilation_cache import compilation_cache

from vla_jax.jobs import rl_job
from vla_jax.models import policy as policy_lib
from vla_jax.rl import collect
from vla_jax.rl import config as rl_config_lib
from vla_jax.rl import step as rl_step
from vla_jax.training import mesh as mesh_lib
from vla_jax.training import trainer, transfer

RL = {"reward": "dense"}  # Dense returns differ within a group: the update is never skipped.
# eps: Adam divides each coordinate's step by its gradient's scale, so a param whose exact
# gradient is 0 (the ViT's attention key bias: softmax ignores it) would take +-lr steps driven by
# float rounding noise, which differs between device layouts (measured: 3e-4 apart after 2
# iterations with eps=1e-8). eps well above that noise and well below the real gradients (their
# global norm is ~50 here) keeps Adam's steps for those and makes the noise steps negligible.
TRAIN = {"num_steps": 4, "checkpoint_every": 2, "log_every": 1, "eps": 1e-3}
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_rl_worker.py")
CACHE_OPTIONS = {"jax_compilation_cache_dir": None,
                 "jax_persistent_cache_min_compile_time_secs": 0,
                 "jax_persistent_cache_min_entry_size_bytes": 0}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  """This process's persistent compilation cache for the module, restored afterwards."""
  path = str(tmp_path_factory.mktemp("jax_cache"))
  saved = {k: getattr(jax.config, k) for k in CACHE_OPTIONS}
  for k, v in CACHE_OPTIONS.items():
    jax.config.update(k, path if v is None else v)
  compilation_cache.reset_cache()  # JAX decides once per process whether it uses a cache.
  yield path
  for k, v in saved.items():
    jax.config.update(k, v)
  compilation_cache.reset_cache()


def _start(spec: dict, num_devices: int | None = None) -> subprocess.Popen:
  """Starts ``_rl_worker.py``; ``num_devices`` simulated CPU devices (None: this process's
  environment, so the one-device program is the one this process compiled)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             PYTHONPATH=os.path.dirname(os.path.dirname(WORKER)))
  if num_devices is not None:
    env["XLA_FLAGS"] = xla_flags(num_devices)
  return subprocess.Popen([sys.executable, WORKER, json.dumps(spec)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
  out, _ = proc.communicate(timeout=600)
  return proc.returncode, out


def _steps(workdir: str) -> list[int]:
  return sorted(int(os.path.basename(p)) for p in glob.glob(f"{workdir}/checkpoints/*"))


@pytest.fixture(scope="module")
def sharded_proc(cache_dir, tmp_path_factory):
  """The 2-iteration run on 8 simulated devices (data=4 x fsdp=2), started at once."""
  tmp = tmp_path_factory.mktemp("rl_sharded")
  spec = {"workdir": str(tmp / "run"), "out": str(tmp / "params.npz"), "cache_dir": cache_dir,
          "rl": RL, "train": dict(TRAIN, num_steps=2), "mesh": {"data": 4, "fsdp": 2}}
  proc = _start(spec, num_devices=8)
  yield proc, spec
  if proc.poll() is None:
    proc.kill()
    proc.communicate()


@pytest.fixture(scope="module")
def reference(cache_dir, sharded_proc, tmp_path_factory):
  """The uninterrupted one-device run (4 iterations) in this process, with its params at
  iteration 2. Asks for ``sharded_proc`` so that the 8-device compile overlaps this one."""
  del sharded_proc
  workdir = str(tmp_path_factory.mktemp("rl_reference") / "run")
  at = {}
  result = _rl_toy.run(workdir, rl=_rl_toy.rl_config(**RL),
                       callback=lambda step, state: at.update({step: jax.device_get(state.params)}),
                       callback_every=2, **TRAIN)
  assert result.step == 4 and _steps(workdir) == [2, 4]
  return {"workdir": workdir, "history": result.history, "params2": at[2],
          "params": jax.device_get(result.state.params)}


@pytest.fixture(scope="module")
def killed_proc(cache_dir, reference, tmp_path_factory):
  """The same run in a worker that SIGKILLs itself when the batch of iteration index 3 is
  requested (after the step-2 checkpoint, mid-way to the next). Started once the one-device
  program is in the cache."""
  del reference
  tmp = tmp_path_factory.mktemp("rl_killed")
  spec = {"workdir": str(tmp / "run"), "out": str(tmp / "params.npz"), "cache_dir": cache_dir,
          "rl": RL, "train": TRAIN, "kill_at": 3}
  proc = _start(spec)
  yield proc, spec
  if proc.poll() is None:
    proc.kill()
    proc.communicate()


def test_sharded_rl_matches_one_device(sharded_proc, reference):
  proc, spec = sharded_proc
  code, out = _finish(proc)
  assert code == 0, out
  with open(spec["out"] + ".specs.json") as f:
    layout = json.load(f)
  assert layout["devices"] == 8
  split = [k for k, s in layout["specs"].items() if "fsdp" in s]
  assert len(split) >= 5, layout["specs"]  # FSDP really splits params (sharding_min_size 64).
  assert any(s == "P()" for s in layout["specs"].values())
  sharded = dict(np.load(spec["out"]))
  want = {k: np.asarray(v) for k, v in transfer.named_leaves(reference["params2"]).items()}
  assert sharded.keys() == want.keys()
  # Same function, other float32 summation orders (per-device partial sums over 2-env shards,
  # all-gathered params, the cross-device loss mean): not bit-exact. A rollout seeing slightly
  # other actions moves the physics, and the dense returns with it, a little more.
  diffs = {k: float(np.max(np.abs(sharded[k] - v))) for k, v in want.items()}
  worst = sorted(diffs.items(), key=lambda kv: -kv[1])[:5]
  assert worst[0][1] < 1e-5, worst
  # The compared iterations did update: with a skipped update the check would prove nothing.
  assert all(h["kept_fraction"] == 1.0 and h["grad_norm"] > 0 for h in reference["history"][:2])
  init = _initial_params()
  assert max(float(np.max(np.abs(want[k] - init[k]))) for k in want) > 1e-3


def _initial_params() -> dict:
  """The params every run starts from (the train loop's step-0 state: init from
  ``train.seed``), named; the same jitted init as the runs', so a compilation cache hit."""
  env = _rl_toy.make_env()
  policy = _rl_toy.make_policy(env)
  model = _rl_toy.Model(policy, _rl_toy.make_adapter(env, policy))
  rl = _rl_toy.rl_config(**RL)
  seeds, tasks = collect.train_episodes(0, rl.num_groups, rl.group_size,
                                        [int(i) for i in env.enabled_task_ids])
  one = mesh_lib.make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1])
  state = trainer.initial_train_state(model, _rl_toy.train_config(rl, **TRAIN),
                                      {"seeds": seeds[:1], "task_ids": tasks[:1]}, one,
                                      print_fn=lambda *a, **k: None)
  return {k: np.asarray(v) for k, v in transfer.named_leaves(jax.device_get(state.params)).items()}


class NaNRewardEnv:
  """The micro env with every step's reward NaN (a broken reward function); all else is the
  wrapped env's."""

  def __init__(self, env):
    self._env = env

  def __getattr__(self, name):
    return getattr(self._env, name)

  def step(self, state, action):
    state = self._env.step(state, action)
    return state.replace(reward=jnp.full_like(state.reward, jnp.nan))


def test_nan_rewards_stop_the_run_and_keep_the_last_good_checkpoint(reference, killed_proc,
                                                                   tmp_path):
  del killed_proc  # Started here to run while this test compiles its own (NaN env) program.
  # Resume the reference run's good step-2 checkpoint with rewards turned NaN: iteration 3 is
  # the first bad one. checkpoint_every=1 would save it, were it not checked first.
  workdir = str(tmp_path / "run")
  shutil.copytree(os.path.join(reference["workdir"], "checkpoints", "2"),
                  os.path.join(workdir, "checkpoints", "2"))
  rl = _rl_toy.rl_config(**RL)
  with pytest.raises(trainer.NonFiniteLossError, match=r"at step 3 .*return_mean=nan") as err:
    _rl_toy.run(workdir, rl=rl, env=NaNRewardEnv(_rl_toy.make_env(rl.done_on_success)),
                **dict(TRAIN, checkpoint_every=1))
  assert "last good checkpoint (step 2)" in str(err.value)
  assert _steps(workdir) == [2]


def test_killed_rl_run_resumes_exactly(killed_proc, reference):
  proc, spec = killed_proc
  code, out = _finish(proc)
  assert code == -9, out
  assert _steps(spec["workdir"]) == [2]
  result = _rl_toy.run(spec["workdir"], rl=_rl_toy.rl_config(**RL), **TRAIN)
  assert result.step == 4 and not result.preempted
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(result.state.params),
               reference["params"])
  # Iterations 3 and 4 saw the same rollouts (same returns) and made the same updates.
  for key in ("return_mean", "loss", "rollout_log_prob"):
    np.testing.assert_array_equal([h[key] for h in result.history],
                                  [h[key] for h in reference["history"][2:]])


@pytest.mark.parametrize("head", ["diffusion", "ar", "discrete_diffusion"])
def test_fpo_needs_the_flow_head(head):
  rl = _rl_toy.rl_config(likelihood="fpo")
  with pytest.raises(ValueError, match=r"rl\.likelihood='fpo' needs the flow head.*'" + head):
    rl_config_lib.check_rl_config(rl, head)
  rl_config_lib.check_rl_config(rl, "flow")


def _policy(head: str, action_dim: int = 2, state_dim: int = 4) -> policy_lib.Policy:
  config = tiny_policy_config()
  config.head = head
  return policy_lib.make_policy(config, action_dim=action_dim, action_horizon=3,
                                state_dim=state_dim, text_vocab_size=20)


def test_check_policy_supports_names_the_head():
  exact, fpo = _rl_toy.rl_config(likelihood="exact"), _rl_toy.rl_config(likelihood="fpo")
  for head in policy_lib.HEADS:
    if head != "hybrid":
      rl_step.check_policy_supports(_policy(head), exact)
  # The hybrid's ensemble (an average gated by the AR confidence) has no likelihood.
  with pytest.raises(NotImplementedError, match=r"'hybrid' head .*sample_stochastic"):
    rl_step.check_policy_supports(_policy("hybrid"), exact)
  # FPO needs the flow head's per-sample flow-matching losses, which a token head lacks.
  with pytest.raises(NotImplementedError, match=r"'ar' head .*cfm_losses"):
    rl_step.check_policy_supports(_policy("ar"), fpo)
  rl_step.check_policy_supports(_policy("flow"), fpo)


def test_rl_job_checks_env_and_init_checkpoint(tmp_path):
  env = _rl_toy.make_env()
  rl_job.check_env_matches_policy(env, _policy("flow", env.action_dim, env.state_dim), "w")
  with pytest.raises(ValueError, match="action dimension"):
    rl_job.check_env_matches_policy(env, _policy("flow", env.action_dim + 1, env.state_dim), "w")
  with pytest.raises(ValueError, match="state dimension"):
    rl_job.check_env_matches_policy(env, _policy("flow", env.action_dim, env.state_dim + 1), "w")
  for workdir in (tmp_path / "missing", tmp_path / "empty"):
    if workdir.name == "empty":
      (workdir / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as err:
      rl_job.require_init_checkpoint(str(workdir))
    assert rl_job.MAIN_JOB_COMMAND in str(err.value)
  # RL trains only on tasks the checkpoint's env has (the micro env: reach only).
  assert rl_job.rl_task_ids("", env, "w") == [env.task_names.index("reach")]
  assert rl_job.rl_task_ids("reach", env, "w") == [env.task_names.index("reach")]
  assert rl_job.rl_task_ids(" reach+", env, "w") == [env.task_names.index("reach")]  # as env.tasks
  with pytest.raises(ValueError, match=r"rl.tasks: task\(s\) \['push'\] are not among .*'reach'"):
    rl_job.rl_task_ids("reach+push", env, "w")
  # A token head has no action expert: freezing the VLM would leave it nothing to train.
  rl_job.check_trainable_reaches_head(policy_lib.FREEZE_BACKBONE, "flow")
  rl_job.check_trainable_reaches_head(".*", "ar")
  rl_job.check_trainable_reaches_head(policy_lib.FREEZE_BACKBONE, "ar", token_expert=True)
  rl_job.check_trainable_reaches_head(policy_lib.FREEZE_BACKBONE, "discrete_diffusion",
                                      token_expert=True)
  with pytest.raises(ValueError, match=r"'hybrid' head predicts its tokens with the LM"):
    rl_job.check_trainable_reaches_head(policy_lib.FREEZE_BACKBONE, "hybrid", token_expert=True)
  with pytest.raises(ValueError, match=r"'ar' head predicts its tokens with the LM"):
    rl_job.check_trainable_reaches_head(policy_lib.FREEZE_BACKBONE, "ar")
