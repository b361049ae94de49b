"""Per-dimension binning of action chunks (RT-2 / OpenVLA style), uniform or quantile.

Each action value becomes one token: its bin among N bins of its dimension (default N = 256, as in
RT-2, Brohan et al. 2023, and OpenVLA, Kim et al. 2024). Two variants share one class and one API:

* ``uniform``: N equal-width bins over ``[low, high]`` (default ``[-1, 1]``, the range of
  q01/q99-normalized actions).
* ``quantile``: N equal-mass bins per dimension, edges at the data quantiles ``k / N`` fitted by
  :meth:`BinningTokenizer.fit_quantile` (outer edges: the data min and max per dimension).

Token order: ``encode`` returns ids int32 [B, H * D], time-major (``t0 d0, t0 d1, ..., t1 d0, ...``),
the order in which an autoregressive head emits one full action after another. ``decode`` maps ids
back to the bin centres, float32 [B, H, D]; the round-trip error is at most half a bin width.

Both are pure ``jax.numpy``, batched and jit-compiled; the tokenizer is a ``flax.struct`` pytree, so
it can also be closed over or passed into a caller's ``jit``. Out-of-range inputs: values outside
``[edges[d, 0], edges[d, -1]]`` are clipped into the end bins (documented RT-2 behaviour; the error
bound holds inside the range). Bad inputs raise ``ValueError`` on concrete arrays (wrong rank or
dimension, NaN/inf, ids out of ``[0, N)``); inside a caller's ``jit`` values cannot raise, so a
non-finite action encodes to id ``-1`` and an out-of-range id decodes to NaN, never to a valid
looking action. Put the ids into a language-model vocabulary with :mod:`vla_jax.tokenizers.vocab`.
"""

from __future__ import annotations

import os

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from vla_jax import atomic_files
from vla_jax.tokenizers.checks import check_actions, check_int_ids, read_tokenizer_json

FILENAME = "binning_tokenizer.json"
FORMAT = "vla_jax.binning/1"
KINDS = ("uniform", "quantile")


@jax.jit
def _encode(edges: jax.Array, actions: jax.Array) -> jax.Array:
  """edges f32 [D, N+1], actions f32 [B, H, D] -> ids int32 [B, H * D] (-1 where non-finite)."""
  b, h, d = actions.shape
  inner = edges[:, 1:-1]  # [D, N-1] boundaries between bins.
  x = jnp.clip(actions, edges[:, 0], edges[:, -1])
  x = jnp.moveaxis(x, -1, 0).reshape(d, b * h)  # [D, B*H]: one searchsorted per dimension.
  left = jax.vmap(lambda e, v: jnp.searchsorted(e, v, side="left"))(inner, x)
  right = jax.vmap(lambda e, v: jnp.searchsorted(e, v, side="right"))(inner, x)
  # A value equal to >= 2 boundaries sits on a zero-width quantile bin (a point mass such as a
  # gripper at exactly -1): pick that bin so it decodes exactly; otherwise the bin to the right.
  ids = jnp.where(right - left >= 2, left + 1, right).astype(jnp.int32)
  ids = jnp.moveaxis(ids.reshape(d, b, h), 0, -1)  # [B, H, D]
  ids = jnp.where(jnp.isfinite(actions), ids, -1)
  return ids.reshape(b, h * d)


@jax.jit
def _decode(edges: jax.Array, ids: jax.Array) -> jax.Array:
  """edges f32 [D, N+1], ids int [B, H * D] -> actions f32 [B, H, D] (NaN where id invalid)."""
  d, n = edges.shape[0], edges.shape[1] - 1
  centers = 0.5 * (edges[:, :-1] + edges[:, 1:])  # [D, N]
  ids = ids.reshape(ids.shape[0], -1, d)  # [B, H, D]
  ok = (ids >= 0) & (ids < n)
  values = centers[jnp.arange(d), jnp.clip(ids, 0, n - 1)]  # Broadcasts [D] with [B, H, D].
  return jnp.where(ok, values, jnp.nan).astype(jnp.float32)


@flax.struct.dataclass
class BinningTokenizer:
  """Bins each action dimension into ``num_bins`` bins; ids are ``0..num_bins-1``.

  Attributes:
    edges: float32 [D, N + 1] bin edges per dimension, non-decreasing; bin ``k`` of dimension
      ``d`` is ``[edges[d, k], edges[d, k + 1]]`` and decodes to its centre.
    kind: "uniform" or "quantile" (static).

  Build with :meth:`uniform` or :meth:`fit_quantile`, or :meth:`load` a saved one.
  """
  edges: np.ndarray
  kind: str = flax.struct.field(pytree_node=False, default="uniform")

  @classmethod
  def uniform(cls, action_dim: int, num_bins: int = 256, low: float = -1.0,
              high: float = 1.0) -> BinningTokenizer:
    """N equal-width bins over ``[low, high]`` for each of ``action_dim`` dimensions."""
    if action_dim < 1 or num_bins < 1 or not high > low:
      raise ValueError(f"BinningTokenizer.uniform: need action_dim >= 1, num_bins >= 1, "
                       f"high > low; got {action_dim}, {num_bins}, [{low}, {high}]")
    row = np.linspace(low, high, num_bins + 1, dtype=np.float64).astype(np.float32)
    return cls(edges=np.tile(row, (action_dim, 1)), kind="uniform")

  @classmethod
  def fit_quantile(cls, actions, num_bins: int = 256) -> BinningTokenizer:
    """Equal-mass bins per dimension from data.

    Args:
      actions: float [..., D] normalized actions (chunks [N, H, D] or steps [N, D]), all finite.
      num_bins: N.

    Returns:
      A "quantile" tokenizer whose edges are the ``k / N`` quantiles of each dimension
      (``k = 0..N``; the outer edges are the data min and max).
    """
    a = np.asarray(actions)
    if a.ndim < 2 or a.shape[-1] < 1 or a.size == 0:
      raise ValueError(f"BinningTokenizer.fit_quantile: actions must be [..., D] with data, got "
                       f"shape {a.shape}")
    flat = a.reshape(-1, a.shape[-1]).astype(np.float64)
    bad = ~np.isfinite(flat)
    if bad.any():
      raise ValueError(f"BinningTokenizer.fit_quantile: {int(bad.sum())} non-finite action values "
                       f"(first at flat row/dim {tuple(int(i) for i in np.argwhere(bad)[0])})")
    edges = np.quantile(flat, np.linspace(0.0, 1.0, num_bins + 1), axis=0).T  # [D, N+1]
    edges = np.maximum.accumulate(edges.astype(np.float32), axis=1)  # Monotone after the cast.
    return cls(edges=edges, kind="quantile")

  @property
  def num_bins(self) -> int:
    return int(self.edges.shape[1]) - 1

  @property
  def vocab_size(self) -> int:
    """Number of action ids (``num_bins``), for :class:`~vla_jax.tokenizers.vocab.ActionVocabMapping`."""
    return self.num_bins

  @property
  def action_dim(self) -> int:
    return int(self.edges.shape[0])

  def tokens_per_chunk(self, horizon: int) -> int:
    """Tokens for one chunk of ``horizon`` steps: ``horizon * D`` (one per value)."""
    return horizon * self.action_dim

  def bin_widths(self) -> np.ndarray:
    """float32 [D, N]: width of every bin; the round-trip error of a bin is at most half of it."""
    e = np.asarray(self.edges)
    return e[:, 1:] - e[:, :-1]

  def encode(self, actions) -> jax.Array:
    """actions float [B, H, D] -> ids int32 [B, H * D], time-major (see the module docstring)."""
    check_actions(actions, self.action_dim, f"BinningTokenizer({self.kind}).encode")
    return _encode(jnp.asarray(self.edges), jnp.asarray(actions, jnp.float32))

  def decode(self, ids) -> jax.Array:
    """ids int [B, H * D] in ``[0, N)`` -> actions float32 [B, H, D] (bin centres)."""
    what = f"BinningTokenizer({self.kind}).decode"
    shape = tuple(np.shape(ids))
    if len(shape) != 2 or shape[1] % self.action_dim:
      raise ValueError(f"{what}: ids must be [B, H * D] with D={self.action_dim}, got shape "
                       f"{shape}")
    check_int_ids(ids, 0, self.num_bins, what)
    return _decode(jnp.asarray(self.edges), jnp.asarray(ids))

  def save(self, directory: str) -> str:
    """Writes ``<directory>/binning_tokenizer.json``; returns its path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, FILENAME)
    blob = {"format": FORMAT, "kind": self.kind, "num_bins": self.num_bins,
            "action_dim": self.action_dim, "edges": np.asarray(self.edges).tolist()}
    return atomic_files.write_json(path, blob)

  @classmethod
  def load(cls, directory: str) -> BinningTokenizer:
    """Reads a tokenizer written by :meth:`save`; a corrupt file raises ValueError naming it."""
    path = os.path.join(directory, FILENAME)
    blob = read_tokenizer_json(path, "binning", "BinningTokenizer.save", FORMAT)
    for key in ("kind", "num_bins", "action_dim", "edges"):
      if key not in blob:
        raise ValueError(f"Corrupt binning tokenizer {path}: missing key '{key}'")
    if blob["kind"] not in KINDS:
      raise ValueError(f"Corrupt binning tokenizer {path}: key 'kind' is {blob['kind']!r}, "
                       f"expected one of {KINDS}")
    try:
      edges = np.asarray(blob["edges"], dtype=np.float32)
    except (TypeError, ValueError) as e:
      raise ValueError(f"Corrupt binning tokenizer {path}: key 'edges' is not a numeric "
                       f"[D, N + 1] array ({e})") from None
    want = (blob["action_dim"], blob["num_bins"] + 1)
    if edges.shape != want:
      raise ValueError(f"Corrupt binning tokenizer {path}: key 'edges' has shape {edges.shape}, "
                       f"expected [action_dim, num_bins + 1] = {want}")
    if not np.isfinite(edges).all() or (np.diff(edges, axis=1) < 0).any():
      raise ValueError(f"Corrupt binning tokenizer {path}: key 'edges' must be finite and "
                       f"non-decreasing along each dimension")
    return cls(edges=edges, kind=blob["kind"])
