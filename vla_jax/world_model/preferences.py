"""Preference pairs judged by a scorer, and the DPO loss of a flow policy on them.

NORA-1.5 (Hung et al. 2025) post-trains a flow VLA with DPO on action chunks ranked by a world
model. Here the pieces, on the project's rollout and steering interfaces:

- :class:`PairRecorder`: a rollout policy that executes the policy's own chunk (the states are
  the policy's) and records, at each decision, the policy observation, N sampled candidate
  chunks and the scorer's scores of them (e.g. ``steering.WorldModelScorer``: the world model
  is the only judge; the simulator only provides the states).
- :func:`select_pairs`: per decision, the best-scored candidate as *chosen* and the worst as
  *rejected*, kept where their scores differ by at least a margin (a tie says nothing).
- :func:`dpo_loss`: Diffusion-DPO (Wallace et al. 2024) with the flow-matching loss in place
  of the denoising loss: the conditional flow-matching loss of a chunk at fixed (noise, time)
  pairs is a negative-ELBO surrogate of its log-likelihood, so with
  ``d(x) = L_theta(x) - L_ref(x)`` the loss is ``-log sigmoid(-beta * (d(chosen) -
  d(rejected)))``: lower the chosen chunk's flow loss relative to the frozen reference more
  than the rejected one's. The reference's losses are computed once per pair
  (:func:`reference_losses`) at that pair's (noise, time) draws, so training needs no second
  copy of the params.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vla_jax.data import normalization
from vla_jax.envs import rollout as rollout_lib
from vla_jax.envs.tabletop import State
from vla_jax.world_model import steering


class PairRecorder:
  """Rollout policy (``make_rollout(..., privileged=True)``): executes the policy's own chunk
  and records the candidates and their scores at each decision.

  ``policy(state, key, carry, params) -> (action [B, D], carry, extras)`` with extras
  ``observation`` (the policy's batch [B, ...]), ``candidates`` (normalized policy-space chunks
  [B, N, H, D]; candidate 0 is the one executed), ``scores`` float32 [B, N] and ``decision``
  bool [B] (True on replanning steps; the other steps' candidates are zeros).

  Args:
    adapter: the evaluator's ``EnvPolicyAdapter``. scorer: a steering scorer.
    num_candidates: N >= 2.
  """

  def __init__(self, adapter: Any, *, scorer: steering.Scorer, num_candidates: int):
    if num_candidates < 2:
      raise ValueError(f"PairRecorder: num_candidates={num_candidates} must be >= 2 (a pair)")
    self.adapter = adapter
    self.best_of = steering.BestOfN(adapter, scorer=scorer, num_candidates=num_candidates)

  def initial_carry(self, n: int):
    return self.adapter.initial_carry(n)

  def __call__(self, state: State, key: jax.Array, carry, params):
    adapter, n = self.adapter, self.best_of.num_candidates
    history, planned, since = carry
    obs = rollout_lib.policy_obs(state)
    history = adapter.update_history(history, obs)
    observation = adapter.observation(history, obs["instruction_id"])
    b, h, d = planned.shape
    decide = since % adapter.replan_every == 0

    def plan():
      k_sample, k_score = jax.random.split(key)
      # The head's own normalized samples are what DPO scores (no unnormalize/normalize round
      # trip, which would clip); the scorer sees them in env units, as BestOfN's candidates.
      tiled = jax.tree.map(lambda x: jnp.repeat(x, n, axis=0), observation)
      out = adapter.policy.sample(params, tiled, k_sample, **adapter.sample_options)
      normalized = out["actions"].reshape(b, n, h, d).astype(jnp.float32)
      valid = out["valid"].reshape(b, n)
      chunks = jnp.where(valid[..., None, None], normalization.unnormalize(
          normalized, adapter.action_stats, adapter.norm_mode), jnp.nan)
      scores = self.best_of.scorer(state, chunks, k_score).astype(jnp.float32)
      finite = valid & jnp.all(jnp.isfinite(normalized), axis=(2, 3))
      return chunks[:, 0], jnp.where(finite[..., None, None], normalized, 0.0), scores, finite

    def keep():
      return (planned, jnp.zeros((b, n, h, d), jnp.float32), jnp.zeros((b, n), jnp.float32),
              jnp.zeros((b, n), bool))

    planned, normalized, scores, finite = jax.lax.cond(decide, plan, keep)
    action = jnp.take(planned, since % adapter.replan_every, axis=1)
    extras = {"observation": observation, "candidates": normalized, "scores": scores,
              "finite": finite, "decision": jnp.broadcast_to(decide, (b,))}
    return action, (history, planned, since + 1), extras


def select_pairs(traj: dict[str, Any], min_gap: float) -> dict[str, np.ndarray]:
  """Chosen/rejected pairs from a :class:`PairRecorder` rollout (host arrays, time-major).

  Keeps the decisions taken while the episode ran (``traj["valid"]``) whose candidates are all
  finite and whose best and worst scores differ by at least ``min_gap``. Returns
  ``{"observation": {...} [P, ...], "chosen", "rejected": float32 [P, H, D] (normalized),
  "gap": float32 [P]}``.
  """
  ex = traj["extras"]
  scores = np.asarray(ex["scores"], np.float32)                 # [T, B, N]
  keep = (np.asarray(ex["decision"]) & np.asarray(traj["valid"])
          & np.asarray(ex["finite"]).all(-1))
  gap = scores.max(-1) - scores.min(-1)
  keep &= gap >= min_gap
  t, b = np.nonzero(keep)
  cand = np.asarray(ex["candidates"])[t, b]                      # [P, N, H, D]
  best, worst = scores[t, b].argmax(-1), scores[t, b].argmin(-1)
  rows = np.arange(len(t))
  return {"observation": {k: np.asarray(v)[t, b] for k, v in ex["observation"].items()},
          "chosen": cand[rows, best].astype(np.float32),
          "rejected": cand[rows, worst].astype(np.float32),
          "gap": gap[t, b].astype(np.float32)}


def flow_losses(policy: Any, params: Any, observation: dict, chosen: jax.Array,
                rejected: jax.Array, noise: jax.Array, t: jax.Array) -> tuple[jax.Array, ...]:
  """Mean flow-matching losses float32 ([P], [P]) of the chosen and rejected chunks [P, H, D]
  at the same (noise [P, M, H, D], time [P, M]) draws, in one batched call."""
  both = jax.tree.map(lambda x: jnp.concatenate([x, x]), observation)
  losses = policy.cfm_losses(params, both, jnp.concatenate([chosen, rejected]),
                             jnp.concatenate([noise, noise]), jnp.concatenate([t, t]))
  losses = losses.mean(-1)
  p = chosen.shape[0]
  return losses[:p], losses[p:]


def reference_losses(policy: Any, ref_params: Any, batch: dict) -> dict[str, jax.Array]:
  """``{"ref_chosen", "ref_rejected"}`` float32 [P]: the frozen reference's flow losses at the
  batch's own draws (computed once per pair, stored with it)."""
  c, r = flow_losses(policy, ref_params, batch["observation"], batch["chosen"],
                     batch["rejected"], batch["noise"], batch["t"])
  return {"ref_chosen": c, "ref_rejected": r}


def dpo_loss(policy: Any, params: Any, batch: dict, beta: float) -> tuple[jax.Array, dict]:
  """Flow-DPO loss (module docstring) of a batch of pairs and its metrics.

  ``batch``: ``observation`` [P, ...], ``chosen`` / ``rejected`` [P, H, D], ``noise``
  [P, M, H, D], ``t`` [P, M], ``ref_chosen`` / ``ref_rejected`` [P]. Metrics: ``accuracy``
  (share of pairs whose implicit reward margin is positive), ``margin`` (its mean, in units of
  the flow loss), ``chosen_drift`` / ``rejected_drift`` (mean ``L_theta - L_ref``).
  """
  lc, lr = flow_losses(policy, params, batch["observation"], batch["chosen"], batch["rejected"],
                       batch["noise"], batch["t"])
  dc, dr = lc - batch["ref_chosen"], lr - batch["ref_rejected"]
  margin = dr - dc     # > 0: the chosen chunk gained likelihood relative to the rejected one
  loss = -jnp.mean(jax.nn.log_sigmoid(beta * margin))
  return loss, {"accuracy": jnp.mean((margin > 0).astype(jnp.float32)),
                "margin": jnp.mean(margin), "chosen_drift": jnp.mean(dc),
                "rejected_drift": jnp.mean(dr)}
