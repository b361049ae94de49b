"""Steering: sample N action chunks per decision, score each, execute the best (best-of-N).

At every replanning step, :class:`BestOfN` asks the policy for ``N`` chunks for each env (the
observation repeated N times, so the head's own sampling noise makes them differ), has a
*scorer* rate them, and executes the best one exactly as plain evaluation executes the policy's
chunk (``vla_jax.eval.closed_loop.EnvPolicyAdapter``: replan every ``replan_every`` steps).
With ``N = 1`` it is plain evaluation: the same samples from the same keys.

A scorer is ``scorer(state, chunks, key) -> scores float32 [B, N]`` (higher is better; ``-inf``
never chosen unless all are): ``state`` the batched env :class:`~vla_jax.envs.tabletop.State`
[B] at the decision, ``chunks`` env-space float32 [B, N, H, D] (NaN rows where the head's sample
did not decode). The MJX oracle (:class:`MJXOracle`) is privileged: it reads the simulator's
state. A learned scorer reads only ``state.obs`` (and the instruction) through the same
interface: :class:`WorldModelScorer` imagines each candidate in a trained world model.

Run it through the evaluator (``vla_jax.eval.closed_loop.Evaluator(steering=...)``), e.g.
``experiments/steer.py``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from vla_jax.envs import rollout as rollout_lib
from vla_jax.envs.tabletop import State, TabletopEnv

Scorer = Callable[[State, jax.Array, jax.Array], jax.Array]


def branch(state: State, n: int) -> State:
  """Each env's state copied ``n`` times: [B] -> [B * n], env ``b``'s copies at rows
  ``b * n ... b * n + n - 1`` (MJX states are plain arrays: a copy is a branch)."""
  return jax.tree.map(lambda x: jnp.repeat(x, n, axis=0), state)


class MJXOracle:
  """Privileged scorer: simulates each candidate in a copy of the true MJX state.

  A candidate's score is the env's return over its first ``lookahead`` actions (the dense task
  reward in [0, 1] plus 1 per step once successful, ``vla_jax.envs.tasks``); a candidate whose
  actions are not finite (an undecodable token chunk) or that breaks the physics scores
  ``-inf``. The branches are not rendered (no observation of them is used), so a candidate
  costs ``lookahead`` control steps of physics only.

  Args:
    env: the env the episodes run in.
    lookahead: control steps simulated per candidate, 1 ... H (the chunk length).
  """

  def __init__(self, env: TabletopEnv, lookahead: int):
    if lookahead < 1:
      raise ValueError(f"MJXOracle: lookahead={lookahead} must be >= 1 control step")
    self.env, self.lookahead = env, int(lookahead)

  def _simulate(self, state: State, actions: jax.Array) -> jax.Array:
    """Return of one env state [] under actions [k, D]; -inf on an error."""
    def step(s, a):
      new = self.env.step(s, a)
      # Keep the branch's old observation: the render is dead code and XLA drops it.
      return new.replace(obs=s.obs), new.reward
    final, rewards = jax.lax.scan(step, state, actions)
    return jnp.where(final.info["error"], -jnp.inf, rewards.sum())

  def __call__(self, state: State, chunks: jax.Array, key: jax.Array) -> jax.Array:
    del key  # the simulator is deterministic
    b, n, h, d = chunks.shape
    if self.lookahead > h:
      raise ValueError(f"MJXOracle: lookahead={self.lookahead} exceeds the chunk length H={h}")
    actions = chunks[:, :, :self.lookahead].reshape(b * n, self.lookahead, d)
    return jax.vmap(self._simulate)(branch(state, n), actions).reshape(b, n)


class WorldModelScorer:
  """Learned scorer: imagines each candidate in a trained world model (not privileged).

  The current observation (``state.obs``: the camera image and proprio state the policy sees)
  is encoded once; each candidate's first ``lookahead`` actions are imagined from that latent
  (``vla_jax.world_model.model.WorldModel.imagine``) and scored like the oracle scores its
  simulation: the imagined reward (the model's estimate of the env's, which counts success)
  summed over the lookahead. A candidate whose actions are not finite scores ``-inf``.

  Args:
    model: a :class:`~vla_jax.world_model.model.WorldModel`. params: its trained params.
    lookahead: control steps imagined per candidate, 1 ... H.
  """

  def __init__(self, model: Any, params: Any, lookahead: int):
    if lookahead < 1:
      raise ValueError(f"WorldModelScorer: lookahead={lookahead} must be >= 1 control step")
    self.model, self.params, self.lookahead = model, params, int(lookahead)

  def __call__(self, state: State, chunks: jax.Array, key: jax.Array) -> jax.Array:
    del key  # the world model is deterministic
    b, n, h, d = chunks.shape
    if self.lookahead > h:
      raise ValueError(f"WorldModelScorer: lookahead={self.lookahead} exceeds the chunk length "
                       f"H={h}")
    key = self.model.image_key
    z = self.model.encode(self.params, {key: state.obs[key], "state": state.obs["state"]})
    actions = chunks[:, :, :self.lookahead].reshape(b * n, self.lookahead, d)
    finite = jnp.all(jnp.isfinite(actions), axis=(1, 2))
    out = self.model.imagine(self.params, jnp.repeat(z, n, axis=0),
                             jnp.where(finite[:, None, None], actions, 0.0),
                             jnp.repeat(state.info["instruction_id"], n, axis=0))
    score = out["reward"].sum(1)
    return jnp.where(finite, score, -jnp.inf).reshape(b, n)


class BestOfN:
  """A privileged rollout policy (``make_rollout(..., privileged=True)``) that executes the best
  of ``num_candidates`` sampled chunks per decision (see the module docstring).

  ``policy(state, key, carry, params) -> (action [B, D], carry, extras)`` with the adapter's
  carry (``adapter.initial_carry(B)``) and no extras.

  Args:
    adapter: the env-to-policy adapter of plain evaluation (history, text, normalization).
    scorer: see the module docstring.
    num_candidates: N >= 1 chunks sampled per decision.
  """

  def __init__(self, adapter: Any, *, scorer: Scorer, num_candidates: int):
    if num_candidates < 1:
      raise ValueError(f"BestOfN: num_candidates={num_candidates} must be >= 1")
    self.adapter, self.scorer, self.num_candidates = adapter, scorer, int(num_candidates)

  def initial_carry(self, n: int):
    return self.adapter.initial_carry(n)

  def candidates(self, observation: dict[str, jax.Array], key: jax.Array, params: Any
                 ) -> jax.Array:
    """Env-space chunks [B, N, H, D] for a policy observation [B, ...] (one sampling call on the
    observation repeated N times: candidate ``j`` of env ``b`` is row ``b * N + j``)."""
    n = self.num_candidates
    tiled = jax.tree.map(lambda x: jnp.repeat(x, n, axis=0), observation)
    chunks = self.adapter.chunk(tiled, key, params)
    return chunks.reshape((-1, n) + chunks.shape[1:])

  def plan(self, state: State, observation: dict[str, jax.Array], key: jax.Array, params: Any
           ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(best chunk [B, H, D], candidates [B, N, H, D], scores float32 [B, N])``; the chunk is
    ``candidates[b, argmax_j scores[b, j]]``. N = 1 is plain evaluation's sample, from plain
    evaluation's key, and is not scored (scores 0)."""
    if self.num_candidates == 1:
      chunk = self.adapter.chunk(observation, key, params)
      return chunk, chunk[:, None], jnp.zeros(chunk.shape[:1] + (1,), jnp.float32)
    k_sample, k_score = jax.random.split(key)
    chunks = self.candidates(observation, k_sample, params)
    scores = self.scorer(state, chunks, k_score).astype(jnp.float32)
    best = jnp.argmax(scores, axis=1)
    chunk = jnp.take_along_axis(chunks, best[:, None, None, None], axis=1)[:, 0]
    return chunk, chunks, scores

  def __call__(self, state: State, key: jax.Array, carry, params):
    return self.adapter.step_with(
        rollout_lib.policy_obs(state), key, carry,
        lambda observation, k: self.plan(state, observation, k, params)[0])
