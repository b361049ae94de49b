"""The policy: a VLM backbone plus one action head, behind one interface.

Interface (all jit-able end to end; params are a plain pytree):

* ``policy.init(rng, example_batch) -> params``
* ``policy.loss(params, batch, rng) -> (loss float32 [], metrics dict of scalars)``
* ``policy.sample_actions(params, observation, rng) -> actions float32 [B, H, D]``
* ``policy.sample(params, observation, rng, **head_options) -> dict`` with ``actions`` [B, H, D],
  ``valid`` bool [B] (token heads: False for a sequence that did not decode; its actions are NaN,
  never zeros; continuous heads: all True), ``nfe`` int32 [] (network evaluations per chunk) and
  head extras (``tokens``). Evaluation should call ``sample`` and act only on valid rows.

``observation`` is the batch contract without ``actions`` / ``action_mask``: ``image/<camera>``
uint8 [B, T, H, W, 3] (all T history frames are used; padded frames masked by ``obs_mask``),
``obs_mask`` bool [B, T], ``state`` float32 [B, T, S] (one projected token per frame),
``text_tokens`` int32 [B, L], ``text_mask`` bool [B, L].

Heads (``config.head``): ``flow`` (pi0 action expert, default), ``diffusion`` (Octo readouts +
DDPM/DDIM), ``ar`` (autoregressive binning or FAST tokens), ``discrete_diffusion`` (masked binned
tokens), ``hybrid`` (HybridVLA: flow and AR binning on one backbone, ensembled). See ``vla_jax/models/heads/*`` for each head's design.

Build with :func:`make_policy` from :func:`default_policy_config` (embed it in a run config as
``config.policy``).

Pretrained backbone: ``policy.init_from`` names a checkpoint (Hugging Face PaliGemma / SigLIP /
Gemma safetensors, or a big_vision ``.npz``) whose weights replace the random init of the VLM
(``backbone/vlm/...``) when a run starts from step 0 (:meth:`Policy.pretrained_params`, called by
the trainer); heads, the state projection and the flow head's expert keep their random init.
:data:`FREEZE_BACKBONE` is the ``train.trainable`` pattern that then trains only those.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vla_jax.models import gemma, vlm, weights
from vla_jax.models.heads import action_tokens
from vla_jax.models.heads import autoregressive as ar_lib
from vla_jax.models.heads import diffusion as diffusion_lib
from vla_jax.models.heads import discrete_diffusion as dd_lib
from vla_jax.models.heads import flow as flow_lib
from vla_jax.models.heads import hybrid as hybrid_lib
from vla_jax.tokenizers import binning, fast

HEADS = ("flow", "diffusion", "ar", "discrete_diffusion", "hybrid")


def default_policy_config(head: str = "flow", backbone: str = "tiny") -> ml_collections.ConfigDict:
  """The policy config: ``head``, ``backbone`` (see ``vlm.backbone_config``) and every head's
  section (only ``config[head]`` is read).

  Keys:
    vocab_size: LM vocabulary; 0 = text vocabulary (+ the token heads' special and action ids).
    flow: expert_width / expert_mlp_dim (the action expert; depth and heads follow the LM),
      num_steps (Euler steps, 10), num_noise_samples (M, level-2 minibatching),
      noise_temperature (std of the initial sampling noise; 1 = as trained).
    diffusion: num_readouts, hidden, num_blocks (denoiser), num_train_steps (20, Octo),
      sampler ("ddim" | "ddpm"), num_steps, num_noise_samples (M), clip_sample (1.0: the
      quantile-normalized action range, Diffusion Policy's ``clip_sample``; use 5.0, Octo's
      value, or 0 = off for z-score-normalized actions), denoiser ("mlp": Octo's readout and
      MLP-ResNet; "expert": pi0's action expert predicting epsilon, shaped by ``flow``'s
      expert_width / expert_mlp_dim), prediction ("epsilon" | "v": the denoiser's target).
    ar: tokenizer ("binning" | "fast"), num_bins, max_fast_tokens, temperature (0 = greedy),
      first_step_weight (binning: loss weight of the chunk's first step's tokens; 1 = plain),
      slot_embedding (a learned embedding per suffix slot; default False = RoPE positions only:
      with it the AR head ignored the image, dev 21% -> 4% at 2000 steps), point (binning,
      greedy: "mode" = argmax bin, "median" = the median bin of each step's distribution,
      "mean" = its expected bin), expert (the action tokens run in their own Gemma expert
      stream shaped by ``flow``'s expert_width / expert_mlp_dim, as pi0's action expert;
      False = in the LM).
    discrete_diffusion: num_bins, rounds (12), temperature, remask_threshold,
      first_step_weight (loss weight of the chunk's first step's masked slots; 1 = plain),
      slot_embedding (a learned embedding per token slot, default; False = RoPE positions
      only: dev 2% -> 14% at 2000 steps with it, docs/experiments/heads.md), point (greedy
      candidates: "mode" | "median" | "mean", as ar.point), label_sigma (std in bins of ordinal
      soft targets for the masked cross-entropy, HL-Gauss; 0 = one-hot), expert (as ar.expert).
    hybrid (HybridVLA: ``flow`` and ``ar`` binning on one backbone, shaped by those sections):
      ar_loss_weight (1), threshold (the AR confidence above which the two predictions are
      averaged; 0.96), mode ("ensemble" | "flow" | "ar": what ``sample`` returns).
    init_from: a pretrained backbone to start from ("" = random init): a Hugging Face
      ``PaliGemmaForConditionalGeneration`` / ``SiglipVisionModel`` / ``GemmaForCausalLM``
      ``.safetensors`` file or directory, or a big_vision ``.npz``. Loaded into ``backbone/vlm``
      before the first step of a new run (a resumed run keeps its trained weights); the
      backbone config (and ``vocab_size`` for the LM embedding) must match its shapes, or a
      ``CheckpointMismatchError`` names each parameter with both shapes.
    init_from_format: "hf" | "big_vision"; "" = from the suffix (.safetensors / .npz).
    init_from_kind: "paligemma" (ViT + projection + LM) | "siglip" (ViT) | "gemma" (LM);
      "" = from the checkpoint's tensor names.
  """
  if head not in HEADS:
    raise KeyError(f"Unknown head '{head}'; known: {list(HEADS)}")
  return ml_collections.ConfigDict({
      "head": head,
      "backbone": vlm.backbone_config(backbone),
      "vocab_size": 0,
      "flow": {"expert_width": 64, "expert_mlp_dim": 256, "num_steps": 10,
               "num_noise_samples": 1, "noise_temperature": 1.0},
      # denoiser: "mlp" (Octo's readout + MLP-ResNet: num_readouts, hidden, num_blocks) or
      # "expert" (pi0's action expert, shaped by flow.expert_width / flow.expert_mlp_dim).
      "diffusion": {"num_readouts": 1, "hidden": 256, "num_blocks": 3, "num_train_steps": 20,
                    "sampler": "ddim", "num_steps": 10, "num_noise_samples": 1,
                    "clip_sample": 1.0, "denoiser": "mlp", "prediction": "epsilon"},
      "ar": {"tokenizer": "binning", "num_bins": 256, "max_fast_tokens": 64,
             "temperature": 0.0, "first_step_weight": 1.0, "slot_embedding": False,
             "point": "mode", "expert": False},
      "discrete_diffusion": {"num_bins": 256, "rounds": 12, "temperature": 0.0,
                             "remask_threshold": 0.5, "first_step_weight": 1.0,
                             "slot_embedding": True, "point": "mode", "label_sigma": 0.0,
                             "expert": False},
      "hybrid": {"ar_loss_weight": 1.0, "threshold": 0.96, "mode": "ensemble"},
      "init_from": "",
      "init_from_format": "",
      "init_from_kind": "",
  })


@dataclasses.dataclass(frozen=True, eq=False)  # Hashed by identity (jit of bound methods).
class Policy:
  """Backbone + head (see the module docstring). Build with :func:`make_policy`.

  Attributes:
    head: the head object (``FlowHead``, ``DiffusionHead``, ``ARHead``,
      ``DiscreteDiffusionHead``, ``HybridHead``).
    config: the policy config it was built from.
    action_dim, action_horizon, state_dim: D, H, S.
    action_tokenizer: the token heads' tokenizer (None for continuous heads).
    backbone_config: the VLM shape the head was built with (the LM vocabulary included).
  """

  head: Any
  config: ml_collections.ConfigDict
  action_dim: int
  action_horizon: int
  state_dim: int
  action_tokenizer: Any = None
  backbone_config: vlm.VLMConfig | None = None

  def init(self, rng: jax.Array, example_batch: dict) -> Any:
    """Params pytree for a batch-contract example batch (only shapes matter)."""
    return self.head.init(rng, example_batch)

  def loss(self, params: Any, batch: dict, rng: jax.Array) -> tuple[jax.Array, dict]:
    """Training loss of the head and its scalar metrics."""
    return self.head.loss(params, batch, rng)

  def sample(self, params: Any, observation: dict, rng: jax.Array, **options) -> dict:
    """Actions with validity and head extras (see the module docstring); ``options`` are the
    head's static sampling options (e.g. ``num_steps``, ``use_cache``, ``sampler``, ``rounds``)."""
    return self.head.sample(params, observation, rng, **options)

  def sample_actions(self, params: Any, observation: dict, rng: jax.Array) -> jax.Array:
    """float32 [B, H, D] normalized action chunks (NaN rows where a token head failed)."""
    return self.head.sample(params, observation, rng)["actions"]

  def sample_stochastic(self, params: Any, observation: dict, rng: jax.Array, **options) -> dict:
    """RL sampling: ``{"actions" [B, H, D], "valid" [B], "log_prob" float32 [B], "sample":
    {per-row arrays that :meth:`log_prob` re-scores}, "nfe"}``; ``options`` are the head's
    (flow: ``noise_std``, ``num_steps``; token heads: ``temperature``).

    Raises:
      NotImplementedError: naming the head when it has no stochastic sampler.
    """
    return self._rl_method("sample_stochastic")(params, observation, rng, **options)

  def log_prob(self, params: Any, observation: dict, sample: dict, **options) -> jax.Array:
    """float32 [B]: exact log-likelihood of ``sample`` (from :meth:`sample_stochastic` with the
    same options), differentiable in ``params``."""
    return self._rl_method("log_prob")(params, observation, sample, **options)

  def cfm_losses(self, params: Any, observation: dict, actions: jax.Array, noise: jax.Array,
                 t: jax.Array) -> jax.Array:
    """Flow head only (FPO): per-sample flow-matching losses float32 [B, M]."""
    return self._rl_method("cfm_losses")(params, observation, actions, noise, t)

  def features(self, params: Any, observation: dict) -> jax.Array:
    """float32 [B, W]: the backbone's observation features, the mean of the prefix's hidden
    states over its valid tokens (what a value head reads; every head has the same prefix)."""
    def pooled(module, obs):
      hidden, mask, _ = module.backbone.run_prefix(obs)
      m = mask.astype(jnp.float32)[..., None]
      return jnp.sum(hidden.astype(jnp.float32) * m, axis=1) / jnp.maximum(m.sum(1), 1.0)
    return self.head.module.apply({"params": params}, observation, method=pooled)

  def supports(self, method: str) -> bool:
    """Whether the head implements an RL method (``sample_stochastic``, ``cfm_losses``...)."""
    return callable(getattr(self.head, method, None))

  def _rl_method(self, method: str):
    if not self.supports(method):
      have = [m for m in ("sample_stochastic", "log_prob", "cfm_losses") if self.supports(m)]
      raise NotImplementedError(
          f"the '{self.config.head}' head has no {method}() (it implements {have or 'none'} of "
          "the RL methods); choose an algorithm this head supports")
    return getattr(self.head, method)

  def pretrained_params(self, abstract_params: Any) -> tuple[dict[str, np.ndarray], str] | None:
    """The backbone of ``config.init_from`` as initial values (None when it is "").

    Args:
      abstract_params: this policy's params (arrays or ShapeDtypeStructs); every loaded array
        must exist there with the same shape.

    Returns:
      ``({"backbone/vlm/...": float32 numpy array}, description)``: host arrays keyed by
      ``/``-joined param path, and what was loaded from where (format, kind, path).

    Raises:
      FileNotFoundError / ValueError / weights.CheckpointMismatchError: naming the config key,
        the file and, for shapes, each parameter with the checkpoint's and the policy's shape.
    """
    path = self.config.get("init_from", "")
    if not path:
      return None
    key = "policy.init_from"
    try:
      loaded = weights.load_backbone(path, self.backbone_config,
                                     fmt=self.config.get("init_from_format", ""),
                                     kind=self.config.get("init_from_kind", ""))
    except FileNotFoundError as e:
      raise FileNotFoundError(f"{key}={path!r}: {e}") from None
    except weights.CheckpointMismatchError as e:
      raise weights.CheckpointMismatchError(
          f"{key}: {e}. The policy's parameters are under backbone/vlm/ with shapes from "
          "policy.backbone (and policy.vocab_size for llm/embedder/embedding)") from None
    except ValueError as e:
      raise ValueError(f"{key}={path!r}: {e} (policy.init_from_format / "
                       "policy.init_from_kind)") from None
    flat = {f"backbone/vlm/{k}": v for k, v in weights.flatten(loaded.params).items()}
    want = weights.flatten(abstract_params)
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs policy "
           f"{tuple(want[k].shape) if k in want else 'absent'}"
           for k, v in flat.items() if k not in want or tuple(want[k].shape) != v.shape]
    if bad:
      raise weights.CheckpointMismatchError(f"{key}={path!r}: loaded arrays that do not fit "
                                            f"the policy: {bad}")
    ignored = f"; ignored {len(loaded.ignored)} tensors ({loaded.ignored[:3]}...)" if (
        loaded.ignored) else ""
    return flat, f"{loaded.fmt} {loaded.kind} checkpoint {loaded.path} ({key}){ignored}"


def make_policy(config: ml_collections.ConfigDict, *, action_dim: int, action_horizon: int,
                state_dim: int, text_vocab_size: int, action_tokenizer: Any = None) -> Policy:
  """Builds the policy of ``config.head``.

  Args:
    config: from :func:`default_policy_config` (possibly overridden).
    action_dim, action_horizon, state_dim: D, H, S of the data.
    text_vocab_size: the text tokenizer's vocabulary (ids of ``text_tokens``).
    action_tokenizer: token heads only: a ``BinningTokenizer`` (default: uniform ``num_bins``
      over [-1, 1]) or, for ``ar.tokenizer = "fast"``, a fitted ``FastTokenizer`` (required).
  """
  head = config.head
  if head not in HEADS:
    raise KeyError(f"policy config: unknown head '{head}'; known: {list(HEADS)}")
  if min(action_dim, action_horizon, state_dim, text_vocab_size) < 1:
    raise ValueError(f"make_policy: action_dim={action_dim}, action_horizon={action_horizon}, "
                     f"state_dim={state_dim}, text_vocab_size={text_vocab_size} must be >= 1")
  bb = vlm.VLMConfig.from_config(config.backbone)
  hc = config[head]
  common_kw = {"action_dim": action_dim, "action_horizon": action_horizon,
               "state_dim": state_dim, "config": config}
  if head in ("flow", "diffusion"):
    if action_tokenizer is not None:
      raise ValueError(f"make_policy: head '{head}' takes no action_tokenizer")
    vocab = config.vocab_size or text_vocab_size
    if vocab < text_vocab_size:
      raise ValueError(f"policy config: vocab_size={vocab} < text_vocab_size={text_vocab_size}")
    bb = dataclasses.replace(bb, llm=dataclasses.replace(bb.llm, vocab_size=vocab))
    if head == "flow":
      expert = dataclasses.replace(bb.llm, width=hc.expert_width, mlp_dim=hc.expert_mlp_dim,
                                   vocab_size=0)
      module = flow_lib.FlowModule(bb, expert, state_dim, action_dim, action_horizon)
      h = flow_lib.FlowHead(module, hc.num_steps, hc.num_noise_samples,
                            hc.get("noise_temperature", 1.0))
    else:
      kind = hc.get("denoiser", "mlp")
      expert = (dataclasses.replace(bb.llm, width=config.flow.expert_width,
                                    mlp_dim=config.flow.expert_mlp_dim, vocab_size=0)
                if kind == "expert" else None)
      module = diffusion_lib.DiffusionModule(
          bb, state_dim, action_dim, action_horizon, hc.num_readouts, hc.hidden, hc.num_blocks,
          hc.num_train_steps, denoiser_type=kind, expert=expert,
          prediction=hc.get("prediction", "epsilon"))
      h = diffusion_lib.DiffusionHead(module, hc.sampler, hc.num_steps, hc.num_noise_samples,
                                      hc.clip_sample)
    return Policy(head=h, backbone_config=bb, **common_kw)

  kind = hc.tokenizer if head == "ar" else "binning"
  if head == "hybrid" and config.ar.tokenizer != "binning":
    raise ValueError(f"policy config: head 'hybrid' needs ar.tokenizer='binning', got "
                     f"'{config.ar.tokenizer}'")
  if head == "hybrid":
    hc = config.ar  # The token part's bins and options.
    if hc.get("expert", False):
      raise ValueError("policy config: head 'hybrid' needs ar.expert=False (its AR part reads "
                       "the flow head's backbone, whose expert stream is the flow expert)")
  if kind not in ("binning", "fast"):
    raise ValueError(f"policy config: ar.tokenizer='{kind}' not in ('binning', 'fast')")
  tok = action_tokenizer
  if tok is None:
    if kind == "fast":
      raise ValueError("make_policy: ar.tokenizer='fast' needs a fitted FastTokenizer as "
                       "action_tokenizer (fit it first: its vocabulary sizes the LM)")
    tok = binning.BinningTokenizer.uniform(action_dim, hc.num_bins)
  want = binning.BinningTokenizer if kind == "binning" else fast.FastTokenizer
  if not isinstance(tok, want):
    raise TypeError(f"make_policy: head '{head}' with tokenizer '{kind}' needs a "
                    f"{want.__name__}, got {type(tok).__name__}")
  if tok.action_dim != action_dim or (kind == "fast" and tok.action_horizon != action_horizon):
    raise ValueError(f"make_policy: the action tokenizer is for D={tok.action_dim}"
                     f"{'' if kind == 'binning' else f', H={tok.action_horizon}'}, the policy "
                     f"for D={action_dim}, H={action_horizon}")
  layout = action_tokens.TokenLayout(text_vocab_size, action_tokens.num_action_ids(tok),
                                     1 if head == "discrete_diffusion" else 2,
                                     config.vocab_size)
  bb = dataclasses.replace(bb, llm=dataclasses.replace(bb.llm, vocab_size=layout.vocab_size))
  if head == "hybrid":
    n = action_tokens.max_tokens(tok, action_horizon, hc.max_fast_tokens)
    ar = ar_lib.ARHead(ar_lib.ARModule(bb, state_dim, (n + 1) * hc.get("slot_embedding", False)),
                       tok, layout, action_horizon, action_dim, n, hc.temperature,
                       hc.get("first_step_weight", 1.0), hc.get("point", "mode"))
    fc = config.flow
    expert = dataclasses.replace(bb.llm, width=fc.expert_width, mlp_dim=fc.expert_mlp_dim,
                                 vocab_size=0)
    fh = flow_lib.FlowHead(flow_lib.FlowModule(bb, expert, state_dim, action_dim, action_horizon),
                           fc.num_steps, fc.num_noise_samples, fc.get("noise_temperature", 1.0))
    yc = config.hybrid
    h = hybrid_lib.HybridHead(fh, ar, yc.ar_loss_weight, yc.threshold, yc.mode)
  elif head == "ar":
    n = action_tokens.max_tokens(tok, action_horizon, hc.max_fast_tokens)
    ar_expert = expert_config(config) if hc.get("expert", False) else None
    h = ar_lib.ARHead(ar_lib.ARModule(bb, state_dim, (n + 1) * hc.get("slot_embedding", False),
                                      ar_expert),
                      tok, layout, action_horizon, action_dim, n, hc.temperature,
                      hc.get("first_step_weight", 1.0), hc.get("point", "mode"))
  else:
    module = dd_lib.DiscreteDiffusionModule(
        bb, state_dim, layout.action_start, tok.num_bins,
        action_horizon * action_dim if hc.get("slot_embedding", False) else 0,
        expert_config(config) if hc.get("expert", False) else None)
    h = dd_lib.DiscreteDiffusionHead(module, tok, layout, action_horizon, action_dim, hc.rounds,
                                     hc.temperature, hc.remask_threshold,
                                     hc.get("first_step_weight", 1.0), hc.get("point", "mode"),
                                     hc.get("label_sigma", 0.0))
  return Policy(head=h, action_tokenizer=tok, backbone_config=bb, **common_kw)


def expert_config(config: ml_collections.ConfigDict) -> gemma.GemmaConfig:
  """The action-expert shape implied by ``config`` (the flow head's, the diffusion head's expert
  denoiser, the AR head's with ``ar.expert``)."""
  llm = vlm.VLMConfig.from_config(config.backbone).llm
  return dataclasses.replace(llm, width=config.flow.expert_width,
                             mlp_dim=config.flow.expert_mlp_dim, vocab_size=0)


# Extra experts' modules inside the LM's layers (``gemma._suffix``): ``q_einsum_1``, ``mlp_1``...
# (``layers_0`` is a layer, not an expert).
_EXPERT_MODULE = (r"(q_einsum|kv_einsum|attn_vec_einsum|pre_attention_norm|pre_ffw_norm|mlp|"
                  r"final_norm)_\d+")
_EXPERT_KEY = re.compile(_EXPERT_MODULE)
# ``train.trainable`` pattern that freezes the VLM backbone (what ``policy.init_from`` loads) and
# trains everything else: the head, the state projection and the flow head's action expert (whose
# weights live in the LM's layers under ``*_<i>`` names).
FREEZE_BACKBONE = rf"(?!backbone/vlm/).*|backbone/vlm/llm/(.*/)?{_EXPERT_MODULE}/.*"


def param_split(params: Any) -> tuple[int, int]:
  """(backbone, head) parameter counts of a policy params pytree (arrays or ShapeDtypeStructs).

  The backbone is everything under ``vlm`` except the extra experts' ``*_<i>`` weights inside the
  LM (the flow head's action expert lives in the LM's layers); the rest (expert, projections,
  readouts) is the head's.
  """
  backbone = head = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = [str(getattr(k, "key", k)) for k in path]
    n = int(np.prod(leaf.shape))
    expert = "llm" in keys and any(_EXPERT_KEY.fullmatch(k) for k in keys)
    if "vlm" in keys and not expert:
      backbone += n
    else:
      head += n
  return backbone, head
