"""Hybrid head (HybridVLA, Liu et al. 2025): one backbone, a flow head and an AR token head.

Model. One set of parameters: the flow head's (:class:`~.flow.FlowModule`: the VLM, the proprio
projection and pi0's action expert inside the LM's layers), built with the AR head's vocabulary
(text ids + BOA/EOS + the binning action ids, :mod:`.action_tokens`). The AR head
(:class:`~.autoregressive.ARModule`) reads the same backbone parameters (its tree is the flow
tree without the expert's), so both heads share every backbone weight and are trained jointly:

  ``loss = flow matching loss + ar_loss_weight * AR next-token loss``

(the AR loss with its ``first_step_weight``). The paper trains both objectives in one LLM
sequence; here the two losses run their own prefix pass over the shared weights (same gradient,
about one extra prefix pass per step).

Inference (``mode``):

* ``"ensemble"`` (the paper's collaborative action ensemble): both heads predict; when the AR
  chunk decodes and its mean token probability (``ARHead.sample``'s ``confidence``) exceeds
  ``threshold``, the action is the mean of the two predictions, otherwise the flow prediction
  alone. HybridVLA gates on the AR tokens' mean confidence (0.96 is the value we read in the
  paper); on a new task suite tune it on the ``dev`` seeds (``"ensembled"`` reports how often
  the average was taken).
* ``"flow"`` / ``"ar"``: one head alone (the same checkpoint; for the paper's ablation).

Actions are in the token head's normalized space (quantile-normalized to [-1, 1]), which the
flow part shares.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from vla_jax.models.heads import autoregressive, flow

Array = jax.Array
MODES = ("ensemble", "flow", "ar")


@dataclasses.dataclass(frozen=True, eq=False)  # Hashed by identity (jit of bound methods).
class HybridHead:
  """Flow + AR binning on one backbone behind the policy interface (see the module docstring).

  Attributes:
    flow: the flow head (its module owns every parameter).
    ar: the AR binning head (its module reads the shared backbone parameters).
    ar_loss_weight: weight of the AR loss in the joint loss.
    threshold: the ensemble averages the two predictions when the AR confidence exceeds it.
    mode: default inference mode, one of ``MODES``.
  """

  flow: flow.FlowHead
  ar: autoregressive.ARHead
  ar_loss_weight: float = 1.0
  threshold: float = 0.96
  mode: str = "ensemble"

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"HybridHead: mode='{self.mode}' not in {MODES}")
    if not self.ar_loss_weight >= 0:
      raise ValueError(f"HybridHead: ar_loss_weight={self.ar_loss_weight} must be >= 0")
    if not isinstance(self.ar.tokenizer, autoregressive.action_tokens.binning.BinningTokenizer):
      raise TypeError("HybridHead: the AR part needs the binning tokenizer (policy.ar.tokenizer)")

  @property
  def module(self):
    """The module owning the parameters (``Policy.features`` reads its backbone)."""
    return self.flow.module

  def init(self, rng: Array, batch: Mapping[str, Array]):
    """The flow head's params (the AR head's backbone is the same tree without the action
    expert), plus the AR head's own top-level params (its slot embedding, if any)."""
    flow_rng, ar_rng = jax.random.split(rng)
    params = self.flow.init(flow_rng, batch)
    own = {k: v for k, v in self.ar.init(ar_rng, batch).items() if k not in params}
    return {**params, **own}

  def loss(self, params, batch, rng):
    flow_loss, flow_metrics = self.flow.loss(params, batch, rng)
    ar_loss, ar_metrics = self.ar.loss(params, batch, rng)
    return (flow_loss + self.ar_loss_weight * ar_loss,
            {**flow_metrics, **ar_metrics, "ar_loss": ar_loss})

  def sample(self, params, obs, rng, mode: str | None = None) -> dict[str, Array]:
    """Actions of ``mode`` (static; default ``self.mode``).

    Returns:
      ``{"actions" float32 [B, H, D], "valid" bool [B], "nfe" int32 [] (flow Euler steps plus AR
      decoding steps run)}``; ``"ensemble"`` adds ``"ar_confidence"`` float32 [B],
      ``"ensembled"`` bool [B] (the average was taken) and the AR part's ``"num_tokens"``;
      ``"ar"`` returns the AR head's output.
    """
    mode = mode or self.mode
    if mode not in MODES:
      raise ValueError(f"HybridHead.sample: mode='{mode}' not in {MODES}")
    flow_rng, ar_rng = jax.random.split(rng)
    if mode == "ar":
      return self.ar.sample(params, obs, ar_rng)
    out = self.flow.sample(params, obs, flow_rng)
    if mode == "flow":
      return out
    tok = self.ar.sample(params, obs, ar_rng)
    ensembled = tok["valid"] & (tok["confidence"] > self.threshold)
    actions = jnp.where(ensembled[:, None, None], 0.5 * (out["actions"] + tok["actions"]),
                        out["actions"])
    return {"actions": actions, "valid": out["valid"], "nfe": out["nfe"] + tok["nfe"],
            "ar_confidence": tok["confidence"], "ensembled": ensembled,
            "num_tokens": tok["num_tokens"]}
