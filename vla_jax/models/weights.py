"""Parameter-tree layouts and checkpoint import (Hugging Face safetensors, big_vision .npz).

Import: :func:`import_hf` (``transformers`` ``PaliGemmaForConditionalGeneration``,
``SiglipVisionModel``, ``GemmaForCausalLM`` safetensors) and :func:`import_big_vision` (``.npz``)
return this project's ``{"params": ...}`` tree for a given config, in the scan or unrolled layout.
Every missing or unexpected checkpoint key and every shape mismatch is reported by name
(:class:`CheckpointMismatchError`). :func:`merge_params` puts a loaded backbone into a larger tree.
:func:`load_backbone` reads a checkpoint for a VLM, telling the format from the file suffix and the
model (PaliGemma, SigLIP, Gemma) from the tensor names: what ``policy.init_from`` loads.

Layouts. Stacked (``nn.scan``) layers live under one key with a leading [depth] axis
(``layers`` in Gemma, ``encoderblock`` in the ViT); unstacked ones under ``layers_0 ...``.
:func:`scan_to_layers` / :func:`layers_to_scan` convert between the two, so one checkpoint serves
both layouts.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.flax

from vla_jax.models import gemma as gemma_lib
from vla_jax.models import vit as vit_lib
from vla_jax.models import vlm as vlm_lib

_STACKED = ("layers", "encoderblock")
_UNSTACKED = re.compile(r"^(layers|encoderblock)_(\d+)$")


def scan_to_layers(tree: Any) -> Any:
  """Splits every stacked ``layers`` / ``encoderblock`` subtree [depth, ...] into ``name_i``."""
  if not isinstance(tree, dict):
    return tree
  out = {}
  for k, v in tree.items():
    if k in _STACKED and isinstance(v, dict):
      leaves = flatten(v)
      depths = {a.shape[0] for a in leaves.values()}
      if len(depths) != 1:
        raise ValueError(f"scan_to_layers: '{k}' leaves have different leading axes {depths}")
      for i in range(depths.pop()):
        out[f"{k}_{i}"] = unflatten({p: a[i] for p, a in leaves.items()})
    else:
      out[k] = scan_to_layers(v)
  return out


def layers_to_scan(tree: Any) -> Any:
  """Stacks ``layers_0 ... layers_{n-1}`` (or ``encoderblock_i``) into one [n, ...] subtree."""
  if not isinstance(tree, dict):
    return tree
  groups: dict[str, dict[int, Any]] = {}
  out = {}
  for k, v in tree.items():
    m = _UNSTACKED.match(k)
    if m:
      groups.setdefault(m.group(1), {})[int(m.group(2))] = v
    else:
      out[k] = layers_to_scan(v)
  for name, layers in groups.items():
    if sorted(layers) != list(range(len(layers))):
      raise ValueError(f"layers_to_scan: '{name}_i' indices {sorted(layers)} are not 0..n-1")
    flat = [flatten(layers[i]) for i in range(len(layers))]
    keys = set(flat[0])
    for i, f in enumerate(flat):
      if set(f) != keys:
        raise ValueError(f"layers_to_scan: '{name}_{i}' has keys {sorted(set(f) ^ keys)} that "
                         f"'{name}_0' does not share")
    out[name] = unflatten({p: np.stack([np.asarray(f[p]) for f in flat]) for p in keys})
  return out


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """Nested dict -> ``{"a/b/c": leaf}`` (the big_vision ``.npz`` key format)."""
  if not isinstance(tree, dict):
    return {prefix: tree}
  out = {}
  for k, v in tree.items():
    out.update(flatten(v, f"{prefix}/{k}" if prefix else str(k)))
  return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
  """``{"a/b/c": leaf}`` -> nested dict."""
  out: dict[str, Any] = {}
  for path, v in flat.items():
    node = out
    *parents, last = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = v
  return out


# ------------------------------------------------------------------------------------------------
# Checkpoint import.
# ------------------------------------------------------------------------------------------------


class CheckpointMismatchError(ValueError):
  """A checkpoint does not fit the model: lists missing / unexpected keys and shape mismatches."""


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a ``.safetensors`` file, or every ``*.safetensors`` shard in a directory.

  Returns:
    ``{tensor name: float32 numpy array}`` (bfloat16 / float16 tensors are upcast).
  """
  path = pathlib.Path(path)
  files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
  if not files:
    raise FileNotFoundError(f"no .safetensors files in {path}")
  out: dict[str, np.ndarray] = {}
  for f in files:
    if not f.exists():
      raise FileNotFoundError(f"safetensors checkpoint not found: {f}")
    # The flax loader converts bfloat16 to ml_dtypes arrays, which numpy alone cannot read.
    for k, v in safetensors.flax.load_file(str(f)).items():
      if k in out:
        raise CheckpointMismatchError(f"tensor '{k}' appears in two shards (second: {f})")
      out[k] = np.asarray(v, np.float32)
  return out


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a big_vision ``.npz`` (``/``-joined parameter paths); drops a leading ``params/``."""
  with np.load(path, allow_pickle=False) as z:
    return {k.removeprefix("params/"): np.asarray(z[k], np.float32) for k in z.files}


class _Missing:
  """Stands in for an absent tensor so that conversion continues and all absences get listed."""

  ndim = 4
  shape = (0, 0, 0, 0)
  T = property(lambda self: self)

  def reshape(self, *_):
    return self

  def transpose(self, *_):
    return self

  def __getitem__(self, _):
    return self


_MISSING = _Missing()


def _stack(pairs: list[tuple[str, Any]], source: str, param: str, each: tuple[int, ...]):
  """Stacks converted tensors ``[(checkpoint key, array)]`` into ``param``; differing shapes are
  named with the shape ``each`` that the model expects of every one."""
  xs = [x for _, x in pairs]
  if any(x is _MISSING for x in xs):
    return _MISSING
  if len({x.shape for x in xs}) != 1:
    raise CheckpointMismatchError(
        f"{source}: {param}: tensors stacked into one parameter disagree in shape: "
        + ", ".join(f"'{k}' -> {x.shape}" for k, x in pairs)
        + f"; the model expects each {tuple(each)}")
  return np.stack(xs)


def _split3(x):
  return (_MISSING,) * 3 if x is _MISSING else np.split(x, 3, axis=0)


class _Source:
  """A flat checkpoint dict that records which keys were read and which were absent."""

  def __init__(self, tensors: dict[str, np.ndarray], name: str):
    self.tensors, self.name = tensors, name
    self.used: set[str] = set()
    self.missing: list[str] = []
    self.wrong: list[str] = []

  def has(self, key: str) -> bool:
    return key in self.tensors

  def get(self, key: str, shape: tuple[int, ...] | None = None, param: str = "") -> np.ndarray:
    """The tensor ``key``; with ``shape`` (the checkpoint-side shape the model needs), a tensor
    of another shape is recorded against ``param`` (reshaping it would fail unnamed)."""
    if key not in self.tensors:
      self.missing.append(key)
      return _MISSING
    self.used.add(key)
    x = self.tensors[key]
    if shape is not None and tuple(x.shape) != tuple(shape):
      self.wrong.append(f"'{key}' -> {param}: checkpoint {tuple(x.shape)} vs model {tuple(shape)}")
      return _MISSING
    return x

  def finish(self, ignore: tuple[str, ...] = ()) -> None:
    unexpected = sorted(k for k in self.tensors if k not in self.used
                        and not any(re.fullmatch(p, k) for p in ignore))
    if self.wrong:
      raise CheckpointMismatchError(f"{self.name}: shape mismatches {self.wrong}")
    if self.missing or unexpected:
      raise CheckpointMismatchError(
          f"{self.name}: missing keys {self.missing[:20]}"
          f"{' ...' if len(self.missing) > 20 else ''} ({len(self.missing)} missing); "
          f"unexpected keys {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''} "
          f"({len(unexpected)} unexpected)")


def _strip_prefix(tensors: dict[str, np.ndarray], prefixes: tuple[str, ...],
                  ) -> dict[str, np.ndarray]:
  """Keeps keys under the first of ``prefixes`` that occurs, with that prefix removed."""
  for p in prefixes:
    sub = {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}
    if sub:
      return sub
  return {}


def _linear_t(w: np.ndarray) -> np.ndarray:
  """torch Linear weight [out, in] -> flax kernel [in, out]."""
  return w.T if w.ndim == 2 else w


def _hf_siglip(src: _Source, cfg: vit_lib.ViTConfig, with_map: bool, prefix: str = "") -> dict:
  """transformers ``SiglipVisionModel`` names (after the vision prefix) -> ViT params (unrolled;
  ``prefix``: where they go, for error messages)."""
  num_heads, width = cfg.num_heads, cfg.width

  def heads_in(w, b):  # q/k/v: [H*D, W] -> [W, H, D]; bias [H*D] -> [H, D].
    if w is _MISSING or b is _MISSING:
      return {"kernel": _MISSING, "bias": _MISSING}
    return {"kernel": w.T.reshape(w.shape[1], num_heads, -1), "bias": b.reshape(num_heads, -1)}

  def heads_out(w, b):  # out: [W, H*D] -> [H, D, W].
    return {"kernel": _MISSING if w is _MISSING else w.T.reshape(num_heads, -1, w.shape[0]),
            "bias": b}

  def get_attn(key, param, rows=width):  # Checked first: a wrong size would fail to reshape.
    return (src.get(f"{key}_weight" if key.endswith("in_proj") else f"{key}.weight",
                    (rows, width), f"{param}/kernel"),
            src.get(f"{key}_bias" if key.endswith("in_proj") else f"{key}.bias", (rows,),
                    f"{param}/bias"))

  def ln(p):
    return {"scale": src.get(f"{p}.weight"), "bias": src.get(f"{p}.bias")}

  def dense(p):
    return {"kernel": _linear_t(src.get(f"{p}.weight")), "bias": src.get(f"{p}.bias")}

  patch = src.get("embeddings.patch_embedding.weight")
  params = {
      "embedding": {"kernel": patch.transpose(2, 3, 1, 0) if patch.ndim == 4 else patch,
                    "bias": src.get("embeddings.patch_embedding.bias")},
      "pos_embedding": src.get("embeddings.position_embedding.weight")[None],
      "Transformer": {"encoder_norm": ln("post_layernorm")},
  }
  for i in range(cfg.depth):
    p = f"encoder.layers.{i}"
    where = f"{prefix}Transformer/encoderblock_{i}/MultiHeadDotProductAttention_0"
    attn = {n: heads_in(*get_attn(f"{p}.self_attn.{n[0]}_proj", f"{where}/{n}"))
            for n in ("query", "key", "value")}
    attn["out"] = heads_out(*get_attn(f"{p}.self_attn.out_proj", f"{where}/out"))
    params["Transformer"][f"encoderblock_{i}"] = {
        "LayerNorm_0": ln(f"{p}.layer_norm1"), "LayerNorm_1": ln(f"{p}.layer_norm2"),
        "MultiHeadDotProductAttention_0": attn,
        "MlpBlock_0": {"Dense_0": dense(f"{p}.mlp.fc1"), "Dense_1": dense(f"{p}.mlp.fc2")}}
  if with_map:
    where = f"{prefix}MAPHead_0/MultiHeadDotProductAttention_0"
    w_in, b_in = get_attn("head.attention.in_proj", f"{where}/query,key,value", 3 * width)
    qkv_w, qkv_b = _split3(w_in), _split3(b_in)
    attn = {n: heads_in(w, b) for n, w, b in zip(("query", "key", "value"), qkv_w, qkv_b)}
    attn["out"] = heads_out(*get_attn("head.attention.out_proj", f"{where}/out"))
    params["MAPHead_0"] = {
        "probe": src.get("head.probe"), "MultiHeadDotProductAttention_0": attn,
        "LayerNorm_0": ln("head.layernorm"),
        "MlpBlock_0": {"Dense_0": dense("head.mlp.fc1"), "Dense_1": dense("head.mlp.fc2")}}
  return params


def _hf_gemma(src: _Source, cfg: gemma_lib.GemmaConfig, prefix: str = "") -> dict:
  """transformers ``GemmaModel`` names (after the LM prefix) -> Gemma params (unrolled;
  ``prefix``: where they go, for error messages)."""
  n, k, h, w = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.width

  def heads(key, num, param):  # [num*H, W] -> [num, W, H]; checked first (reshape).
    x = src.get(key, (num * h, w), param)
    return _MISSING if x is _MISSING else x.reshape(num, h, -1).transpose(0, 2, 1)

  params = {"embedder": {"embedding": src.get("embed_tokens.weight")},
            "final_norm": {"scale": src.get("norm.weight")}}
  for i in range(cfg.depth):
    p, where = f"layers.{i}", f"{prefix}layers_{i}"
    wo = src.get(f"{p}.self_attn.o_proj.weight", (w, n * h),
                 f"{where}/attn/attn_vec_einsum/w")  # [W, N*H]
    params[f"layers_{i}"] = {
        "pre_attention_norm": {"scale": src.get(f"{p}.input_layernorm.weight")},
        "pre_ffw_norm": {"scale": src.get(f"{p}.post_attention_layernorm.weight")},
        "attn": {
            "q_einsum": {"w": heads(f"{p}.self_attn.q_proj.weight", n,
                                    f"{where}/attn/q_einsum/w")},
            "kv_einsum": {"w": _stack(
                [(f"{p}.self_attn.{x}_proj.weight",
                  heads(f"{p}.self_attn.{x}_proj.weight", k, f"{where}/attn/kv_einsum/w"))
                 for x in "kv"], src.name, f"{where}/attn/kv_einsum/w", (k, w, h))},
            "attn_vec_einsum": {"w": _MISSING if wo is _MISSING else wo.T.reshape(n, h, -1)},
        },
        "mlp": {
            "gating_einsum": {"w": _stack(
                [(f"{p}.mlp.{x}_proj.weight", src.get(f"{p}.mlp.{x}_proj.weight").T)
                 for x in ("gate", "up")], src.name, f"{where}/mlp/gating_einsum/w",
                (w, cfg.mlp_dim))},
            "linear": {"w": src.get(f"{p}.mlp.down_proj.weight").T},
        },
    }
  return params


def _check_lm_head(tensors: dict[str, np.ndarray], embedding: np.ndarray, name: str) -> None:
  """Gemma ties the output projection to the embedding; a stored ``lm_head`` must agree."""
  for key in ("lm_head.weight", "language_model.lm_head.weight"):
    if key in tensors and not np.array_equal(tensors[key], embedding):
      raise CheckpointMismatchError(
          f"{name}: '{key}' differs from the token embedding; this Gemma ties them (untied "
          "output projections are not supported)")


def _bv_gemma(src: _Source, prefix: str) -> dict:
  """big_vision Gemma names under ``prefix`` -> Gemma params (layout as stored)."""
  flat = {k[len(prefix):]: k for k in src.tensors if k.startswith(prefix)}
  out = {}
  for sub, key in flat.items():
    m = re.fullmatch(r"(layers(?:_\d+)?)/attn/qkv_einsum/w", sub)
    if m:  # Multi-head checkpoints store q, k, v together: [(L,) 3, N, W, H].
      qkv = src.get(key)
      axis = qkv.ndim - 4
      q, kv = np.take(qkv, 0, axis=axis), np.take(qkv, [1, 2], axis=axis)
      out[f"{m.group(1)}/attn/q_einsum/w"] = q
      out[f"{m.group(1)}/attn/kv_einsum/w"] = kv
      continue
    ours = sub
    if sub == "embedder/input_embedding":
      ours = "embedder/embedding"
    elif re.fullmatch(r"layers(?:_\d+)?/mlp/(gating_einsum|linear)", sub):
      ours = f"{sub}/w"
    out[ours] = src.get(key)
  return unflatten(out)


def _bv_tree(src: _Source, prefix: str) -> dict:
  """Every tensor under ``prefix``, as a nested dict (big_vision names equal ours)."""
  return unflatten({k[len(prefix):]: src.get(k) for k in list(src.tensors)
                     if k.startswith(prefix)})


def expected_params(kind: str, config: Any) -> dict:
  """Shapes (``jax.ShapeDtypeStruct`` tree, ``{"params": ...}``) of the model to load into.

  ``kind``: "paligemma" (config: VLMConfig), "siglip" (ViTConfig) or "gemma" (GemmaConfig,
  unrolled layout).
  """
  key = jax.random.key(0)
  if kind == "paligemma":
    c = config
    size = c.vit.image_size
    images = {cam: jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32) for cam in c.cameras}
    tok = jax.ShapeDtypeStruct((1, 2), jnp.int32)
    return jax.eval_shape(lambda i, t: vlm_lib.VLM(c).init(
        key, i, t, jnp.ones((1, 2), bool), method=vlm_lib.VLM.run_prefix), images, tok)
  if kind == "siglip":
    img = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, 3), jnp.float32)
    return jax.eval_shape(vit_lib.ViT(config).init, key, img)
  if kind == "gemma":
    model = gemma_lib.Transformer((config,))
    tok = jax.ShapeDtypeStruct((1, 2), jnp.int32)

    def fwd(m, t):
      return m([m.embed(t)], jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2, 2), bool))
    return jax.eval_shape(lambda t: model.init(key, t, method=fwd), tok)
  raise KeyError(f"unknown checkpoint kind '{kind}'; known: ['gemma', 'paligemma', 'siglip']")


def check_shapes(params: dict, expected: dict, source: str) -> None:
  """Raises CheckpointMismatchError listing every missing, unexpected or mis-shaped leaf."""
  got, want = flatten(params), flatten(expected)
  missing = sorted(set(want) - set(got))
  unexpected = sorted(set(got) - set(want))
  wrong = [f"{k}: checkpoint {tuple(np.shape(got[k]))} vs model {tuple(want[k].shape)}"
           for k in sorted(set(got) & set(want)) if tuple(np.shape(got[k])) != tuple(want[k].shape)]
  if missing or unexpected or wrong:
    raise CheckpointMismatchError(
        f"{source}: missing params {missing}; unexpected params {unexpected}; "
        f"shape mismatches {wrong}")


def _finalize(params: dict, kind: str, config: Any, scan: bool, source: str,
              to_device: bool = True) -> dict:
  """Unrolled tree -> requested layout, checked against the model's shapes; jax arrays on the
  default device, or numpy arrays on the host (``to_device=False``)."""
  params = {"params": layers_to_scan(params) if scan else params}
  if kind == "paligemma":
    config = dataclasses.replace(config, scan=scan, vit=dataclasses.replace(config.vit, scan=scan))
  elif kind == "siglip":
    config = dataclasses.replace(config, scan=scan)
  expected = expected_params(kind, config)
  if kind == "gemma" and scan:
    expected = {"params": layers_to_scan(jax.tree.map(lambda s: np.zeros(s.shape, np.float32),
                                                      expected["params"]))}
  check_shapes(params, expected, source)
  return jax.tree.map(jnp.asarray if to_device else np.asarray, params)


def import_hf(tensors: dict[str, np.ndarray] | str | os.PathLike, kind: str, config: Any,
              scan: bool | None = None, to_device: bool = True) -> dict:
  """Hugging Face ``transformers`` weights -> this project's ``{"params": ...}`` tree.

  Args:
    tensors: a safetensors file / directory, or an already loaded ``{name: array}`` dict.
    kind: "paligemma" (``PaliGemmaForConditionalGeneration``; config a ``vlm.VLMConfig``),
      "siglip" (``SiglipVisionModel``; a ``vit.ViTConfig``, ``pool_type`` "map" when the
      checkpoint has the attention-pooling head, else "none") or "gemma" (``GemmaForCausalLM``;
      a ``gemma.GemmaConfig``).
    config: the shape to load into (its depth decides which layer keys are read).
    scan: stacked (True) or unrolled (False) layer layout; default: the config's ``scan``.
    to_device: return jax arrays (default device); False: numpy arrays that stay on the host
      (for placing them sharded afterwards without a copy on one device).

  Raises:
    CheckpointMismatchError: naming every missing / unexpected checkpoint key and every parameter
      whose shape differs from the config's.
  """
  name = f"{kind} checkpoint {tensors}" if not isinstance(tensors, dict) else f"{kind} checkpoint"
  if not isinstance(tensors, dict):
    tensors = load_safetensors(tensors)
  if kind == "paligemma":
    vis = _Source(_strip_prefix(tensors, ("model.vision_tower.vision_model.",
                                          "vision_tower.vision_model.", "model.vision_tower.",
                                          "vision_tower.")), f"{name} (vision tower)")
    img = _hf_siglip(vis, config.vit, with_map=False, prefix="img/")
    vis.finish()
    proj = _Source(_strip_prefix(tensors, ("model.multi_modal_projector.",
                                           "multi_modal_projector.")), f"{name} (projector)")
    img["head"] = {"kernel": _linear_t(proj.get("linear.weight")), "bias": proj.get("linear.bias")}
    proj.finish()
    lm = _Source(_strip_prefix(tensors, ("model.language_model.", "language_model.model.",
                                         "language_model.")), f"{name} (language model)")
    llm = _hf_gemma(lm, config.llm, prefix="llm/")
    lm.finish()
    _check_lm_head(tensors, llm["embedder"]["embedding"], name)
    known = ("vision_tower.", "model.vision_tower.", "multi_modal_projector.",
             "model.multi_modal_projector.", "language_model.", "model.language_model.",
             "lm_head.")
    other = sorted(k for k in tensors if not k.startswith(known))
    if other:
      raise CheckpointMismatchError(f"{name}: unexpected keys {other[:20]}")
    params = {"img": img, "llm": llm}
    scan = config.scan if scan is None else scan
  elif kind == "siglip":
    src = _Source(_strip_prefix(tensors, ("vision_model.", "")), name)
    params = _hf_siglip(src, config, with_map=config.pool_type == "map")
    src.finish()
    scan = config.scan if scan is None else scan
  elif kind == "gemma":
    src = _Source(_strip_prefix(tensors, ("model.", "")), name)
    params = _hf_gemma(src, config)
    src.finish(ignore=(r"lm_head\.weight",))
    _check_lm_head(tensors, params["embedder"]["embedding"], name)
    scan = bool(scan)
  else:
    raise KeyError(f"unknown checkpoint kind '{kind}'; known: ['gemma', 'paligemma', 'siglip']")
  return _finalize(params, kind, config, scan, name, to_device)


def import_big_vision(tensors: dict[str, np.ndarray] | str | os.PathLike, kind: str, config: Any,
                      scan: bool | None = None, to_device: bool = True) -> dict:
  """big_vision ``.npz`` weights (stacked or unrolled layers) -> ``{"params": ...}``.

  Layout: PaliGemma ``img/...`` (ViT; ``img/head`` is the projection) and ``llm/...`` (Gemma:
  ``embedder/input_embedding``, ``layers/attn/{q_einsum,kv_einsum,qkv_einsum,attn_vec_einsum}/w``,
  ``layers/mlp/{gating_einsum,linear}``, norms ``.../scale``); SigLIP ``img/...``; Gemma
  ``llm/...`` or bare. A leading ``params/`` is ignored. Arguments and errors as
  :func:`import_hf`.
  """
  name = f"{kind} checkpoint {tensors}" if not isinstance(tensors, dict) else f"{kind} checkpoint"
  if not isinstance(tensors, dict):
    tensors = load_npz(tensors)
  src = _Source(tensors, name)
  if kind == "paligemma":
    params = {"img": _bv_tree(src, "img/"), "llm": _bv_gemma(src, "llm/")}
    scan = config.scan if scan is None else scan
  elif kind == "siglip":
    params = _bv_tree(src, "img/")
    scan = config.scan if scan is None else scan
  elif kind == "gemma":
    prefix = "llm/" if any(k.startswith("llm/") for k in tensors) else ""
    params = _bv_gemma(src, prefix)
    scan = bool(scan)
  else:
    raise KeyError(f"unknown checkpoint kind '{kind}'; known: ['gemma', 'paligemma', 'siglip']")
  # The SigLIP text tower and any other tensors are not part of these models.
  src.finish(ignore=(r"txt/.*", r"t", r"b") if kind == "siglip" else ())
  params = scan_to_layers(params)  # Normalise, then lay out as requested.
  return _finalize(params, kind, config, scan, name, to_device)


def merge_params(params: dict, loaded: dict, where: str = "params") -> dict:
  """Returns ``params`` with every leaf of ``loaded`` substituted (e.g. a pretrained backbone
  into a policy's tree with fresh expert / head weights).

  Every loaded leaf must exist in ``params`` with the same shape; the error names the path.
  """
  flat, new = flatten(params), flatten(loaded)
  unexpected = sorted(set(new) - set(flat))
  wrong = [f"{k}: loaded {tuple(np.shape(new[k]))} vs {tuple(np.shape(flat[k]))}"
           for k in sorted(set(new) & set(flat)) if np.shape(new[k]) != np.shape(flat[k])]
  if unexpected or wrong:
    raise CheckpointMismatchError(f"merge into {where}: unknown paths {unexpected}; shape "
                                  f"mismatches {wrong}")
  flat.update(new)
  return unflatten(flat)


# ------------------------------------------------------------------------------------------------
# A pretrained backbone for a policy (``policy.init_from``).
# ------------------------------------------------------------------------------------------------

FORMATS = ("hf", "big_vision")
KINDS = ("paligemma", "siglip", "gemma")
# Tensors of SigLIP's attention-pooling (MAP) head and of big_vision's contrastive projection: the
# policy's ViT keeps every token (pool_type "none") and projects with its own ``head``.
_SIGLIP_POOLING = re.compile(r"^(vision_model\.)?head\.|^img/(MAPHead_0|head)/")


@dataclasses.dataclass
class PretrainedBackbone:
  """A checkpoint converted for a :class:`vlm.VLM` (see :func:`load_backbone`).

  Attributes:
    params: the VLM's params it covers, nested like the VLM's own tree (``{"img": ..., "llm":
      ...}`` for PaliGemma, ``{"img": ...}`` for SigLIP, ``{"llm": ...}`` for Gemma); float32
      arrays in the layout (scan / unrolled) of the config it was loaded for.
    path, fmt, kind: where it came from and how it was read ("hf" | "big_vision";
      "paligemma" | "siglip" | "gemma").
    ignored: checkpoint tensors not loaded (SigLIP's pooling head), by name.
  """
  params: dict
  path: str
  fmt: str
  kind: str
  ignored: list[str]


def checkpoint_format(path: str | os.PathLike) -> str:
  """"hf" for a ``.safetensors`` file or a directory of them, "big_vision" for ``.npz``.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    ValueError: the suffix says neither (pass the format explicitly).
  """
  p = pathlib.Path(path)
  if not p.exists():
    raise FileNotFoundError(f"checkpoint not found: {p}")
  if p.is_dir():
    if any(p.glob("*.safetensors")):
      return "hf"
    raise ValueError(f"{p} is a directory without *.safetensors files; give a .safetensors "
                     "file, a directory of them, or a big_vision .npz")
  if p.suffix == ".safetensors":
    return "hf"
  if p.suffix == ".npz":
    return "big_vision"
  raise ValueError(f"cannot tell the format of {p} from its suffix '{p.suffix}' "
                   f"(.safetensors = hf, .npz = big_vision); set it explicitly, one of {FORMATS}")


def checkpoint_kind(names: Any, fmt: str) -> str:
  """Which model a checkpoint holds, from its tensor names: "paligemma", "siglip" or "gemma".

  Hugging Face: a vision tower and a language model -> PaliGemma; SigLIP patch embeddings alone
  -> SigLIP; token embeddings alone -> Gemma. big_vision: ``img/`` and ``llm/`` -> PaliGemma,
  ``img/`` only -> SigLIP, else Gemma (``llm/...`` or bare Gemma names).

  Raises:
    ValueError: the names fit none of these (pass the kind explicitly).
  """
  names = list(names)
  if fmt == "hf":
    vision = any(k.startswith(("vision_tower.", "model.vision_tower.")) for k in names)
    language = any(k.startswith(("language_model.", "model.language_model.")) for k in names)
    if vision and language:
      return "paligemma"
    if not language and any("embeddings.patch_embedding.weight" in k for k in names):
      return "siglip"
    if not vision and any(k.endswith("embed_tokens.weight") for k in names):
      return "gemma"
  elif fmt == "big_vision":
    img = any(k.startswith("img/") for k in names)
    llm = any(k.startswith("llm/") for k in names)
    if img and llm:
      return "paligemma"
    if img:
      return "siglip"
    if llm or any(k.endswith("embedder/input_embedding") for k in names):
      return "gemma"
  else:
    raise ValueError(f"unknown checkpoint format '{fmt}'; known: {FORMATS}")
  raise ValueError(f"cannot tell which model this {fmt} checkpoint holds from its {len(names)} "
                   f"tensor names (first: {sorted(names)[:5]}); set the kind explicitly, one of "
                   f"{KINDS}")


def load_backbone(path: str | os.PathLike, config: vlm_lib.VLMConfig, fmt: str = "",
                  kind: str = "") -> PretrainedBackbone:
  """Reads a checkpoint and converts it for a VLM of shape ``config``.

  Args:
    path: a safetensors file / directory (Hugging Face) or a big_vision ``.npz``.
    config: the VLM to load into (its vocabulary, depths, widths, layout and camera setup); the
      loaded shapes are checked against it.
    fmt: "hf" | "big_vision"; "" = from the suffix (:func:`checkpoint_format`).
    kind: "paligemma" (the ViT with its projection ``img/head`` and the LM), "siglip" (the ViT
      without ``head``; a MAP pooling head in the checkpoint is ignored) or "gemma" (the LM);
      "" = from the tensor names (:func:`checkpoint_kind`).

  Raises:
    FileNotFoundError: no checkpoint at ``path``.
    ValueError: unknown or undecidable format / kind.
    CheckpointMismatchError: missing / unexpected tensors or shapes that differ from ``config``
      (each named, with the checkpoint's and the model's shape).
  """
  fmt = fmt or checkpoint_format(path)
  if fmt not in FORMATS:
    raise ValueError(f"unknown checkpoint format '{fmt}'; known: {FORMATS}")
  if not pathlib.Path(path).exists():
    raise FileNotFoundError(f"checkpoint not found: {path}")
  tensors = load_safetensors(path) if fmt == "hf" else load_npz(path)
  kind = kind or checkpoint_kind(tensors, fmt)
  if kind not in KINDS:
    raise ValueError(f"unknown checkpoint kind '{kind}'; known: {KINDS}")
  load = import_hf if fmt == "hf" else import_big_vision
  ignored: list[str] = []
  try:
    if kind == "paligemma":
      params = load(tensors, kind, config, to_device=False)["params"]
    elif kind == "siglip":
      ignored = sorted(k for k in tensors if _SIGLIP_POOLING.search(k))
      kept = {k: v for k, v in tensors.items() if k not in ignored}
      vit = dataclasses.replace(config.vit, head_dim=0, pool_type="none")
      params = {"img": load(kept, kind, vit, to_device=False)["params"]}
    else:
      params = {"llm": load(tensors, kind, config.llm, scan=config.scan,
                            to_device=False)["params"]}
  except CheckpointMismatchError as e:
    # The import names tensors and parameters; say which file and how it was read.
    raise CheckpointMismatchError(f"{fmt} {kind} checkpoint {path}: {e}") from None
  return PretrainedBackbone(params=params, path=str(path), fmt=fmt, kind=kind, ignored=ignored)
