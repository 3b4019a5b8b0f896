"""Incremental decoding of causal shared-QK attention: Trax 1.4.1's algorithm.

Pure JAX. The computation behind `lsh_jax.trax`'s `mode='predict'` and the
Flax modules' `decode=True`: a memory of the last Lm positions, a prefix in
one call, then one token per call at a cost that does not grow with the
number of tokens decoded before (docs/decoding.md).

Shapes (the package glossary): B batch, T tokens given in one call, Lm
the memory's length (Trax's `predict_mem_len`), Ks the memory positions a
decoded LSH token attends to, D query/key depth, Dv value depth, R hash
rounds, C chunk_len.

Memory rows. The memory holds, for each position, whatever its owner
stores: the layer's inputs (the Trax LSH layer, which projects them again
per step) or their projections (the Flax modules, Trax's
`PureLSHSelfAttention`: a pair (qk [Lm, D], v [Lm, Dv])). The per-pair
functions take the rows as a pytree `x` and a `project` function mapping
rows to (queries [., D], values [., Dv]); positions not yet written hold
`fill` rows (zeros when None: Trax's zero inputs; their projections for an
owner storing projections, so that both see the same attention).

The memory update (`use_memory`, over the whole batch):
  * T <= drop_len and T < Lm (one decoded token, a short prefix): when the
    memory cannot take T more, its oldest `drop_len` positions are dropped
    (everything moves left, fill rows come in at the end); the tokens are
    written at `mem_end`.
  * otherwise, a long prefix at the start of a sequence: the heads read the
    T tokens; the memory keeps the last Lm of them. Not at the start
    (mem_end > 0), the inputs become NaN, Trax's error signal.

Per (example, head) pair, with the memory's bucket ids int32[R, Lm] (Trax's
flat ids with round offsets, `bucket + r * ids_per_round`) and a hash key
fixed for the whole decode:
  `lsh_step`    one token: hash it, pick `n_keys` memory positions sharing
                a bucket with it (then the most recent others), attend to
                them: O(Lm) selection plus O(Ks) attention.
  `lsh_prefix`  several tokens: chunked LSH attention over the rows read
                (padded to a multiple of C), outputs of the new tokens.
  `dense_decode` the dense layers (shared QK or separate keys): the new
                tokens attend to every position up to their own.
"""
import jax
import jax.numpy as jnp
from jax import lax

from lsh_jax.core import attention
from lsh_jax.core import chunked
from lsh_jax.core import hashing
from lsh_jax.core import local
from lsh_jax.core import masks

__all__ = [
    'dense_decode', 'lsh_prefix', 'lsh_step', 'n_keys', 'roll_buckets',
    'round_offsets', 'select_keys', 'use_memory',
]


def n_keys(n_hashes, chunk_len, n_chunks_before):
  """Ks: how many memory positions a decoded LSH token attends to."""
  return n_hashes * chunk_len * (1 + n_chunks_before)


def round_offsets(n_buckets, n_hashes):
  """Round offsets of Trax's flat bucket ids: int32[R, 1]."""
  n_ids = hashing.n_buckets_total(n_buckets)
  return n_ids * jnp.arange(n_hashes, dtype=jnp.int32)[:, None]


def roll_buckets(buckets, buckets_idx, q_start, drop_len):
  """Drops the oldest positions' buckets when the memory was rolled.

  buckets int32[R, Lm]. Trax's `roll_buckets`: the window of Lm starting at
  `buckets_idx - q_start` (clamped to `drop_len`, as `dynamic_slice` does)
  of the buckets followed by `drop_len` zeros.
  """
  extended = jnp.pad(buckets, ((0, 0), (0, drop_len)))
  shift = jnp.clip(buckets_idx - q_start, 0, drop_len)
  rolled = lax.dynamic_slice_in_dim(extended, shift, buckets.shape[1], axis=1)
  return jnp.where(buckets_idx > q_start, rolled, buckets)


def _fill_like(rows, fill):
  """Rows shaped as `rows` (an array [.., n, ...]), fill rows or zeros."""
  if fill is None:
    return jnp.zeros_like(rows)
  return jnp.broadcast_to(fill, rows.shape).astype(rows.dtype)


def _map_with_fill(fn, fill, *trees):
  """tree_map of fn(*leaves, fill leaf), the fill leaf None without fill."""
  if fill is None:
    return jax.tree_util.tree_map(lambda *a: fn(*a, None), *trees)
  return jax.tree_util.tree_map(fn, *trees, fill)


def _pad_rows(x, length, fill):
  """Every array of x [L', ...] padded to `length` rows with fill rows."""
  def pad(a, f):
    extra = _fill_like(jnp.zeros((length - a.shape[0],) + a.shape[1:],
                                 a.dtype), f)
    return jnp.concatenate([a, extra])
  return _map_with_fill(pad, fill, x)


def _rows(x, start, size):
  """Rows start..start + size of every array of x."""
  return jax.tree_util.tree_map(
      lambda a: lax.dynamic_slice_in_dim(a, start, size), x)


def lsh_prefix(x, buckets, buckets_idx, hash_key, *, project, q_start, q_len,
               n_buckets, n_hashes, chunk_len, n_chunks_before,
               n_chunks_after, drop_len, fill=None):
  """Several tokens at once, one (example, head) pair.

  Args:
    x: memory rows [L', ...] (module docstring): a long prefix or the whole
      memory (a short call); the new tokens are rows q_start..q_start + q_len.
    buckets: int32[R, Lm] the memory's bucket ids; buckets_idx: int32[] where
      the next token's go; hash_key: the pair's hash key.
    project: rows -> (q [., D], v [., Dv]).
    q_start: int32[] position of the first new token; q_len: static.
    n_buckets: the bucket count (resolved, not None).
    n_hashes, chunk_len, n_chunks_before, n_chunks_after, drop_len: the
      layer's settings.
    fill: rows for the padding to a multiple of C (None: zeros).

  Returns:
    (o float[q_len, Dv], buckets int32[R, Lm], buckets_idx int32[]).
  """
  mem_len = buckets.shape[1]
  length = jax.tree_util.tree_leaves(x)[0].shape[0]
  x = _pad_rows(x, -(-length // chunk_len) * chunk_len, fill)
  q, v = project(x)
  new_buckets = hashing.hash_vectors(q, hash_key=hash_key,
                                     n_buckets=n_buckets,
                                     n_hashes=n_hashes)  # [R, L'']
  o = attention.lsh_attention_from_buckets(
      q, v, new_buckets, chunk_len=chunk_len, n_chunks_before=n_chunks_before,
      n_chunks_after=n_chunks_after, causal=True,
      n_ids=hashing.n_buckets_total(n_buckets))
  o = lax.dynamic_slice_in_dim(o, q_start, q_len)
  update = lax.dynamic_slice_in_dim(
      new_buckets + round_offsets(n_buckets, n_hashes), q_start, q_len,
      axis=1)[:, -mem_len:]
  buckets = roll_buckets(buckets, buckets_idx, q_start, drop_len)
  buckets = lax.dynamic_update_slice_in_dim(buckets, update, q_start, axis=1)
  return o, buckets, buckets_idx + q_len


def select_keys(buckets, q_buckets, q_start, n_selected):
  """Trax's choice of the memory positions a decoded token attends to.

  Positions sharing a bucket with the token in some round come first, then
  the others, each group by recency; future positions last. Trax's
  priorities, all distinct: position t <= q_start + 1 scores t, a later one
  -(Lm + t); sharing a bucket adds Lm. (Trax counts q_start + 1 as a past
  position; the causal mask hides it anyway.)

  Args:
    buckets: int32[R, Lm] the memory's buckets, the token's included.
    q_buckets: int32[R, 1] the token's buckets.
    q_start: int32[] the token's position.
    n_selected: static, min(Ks, Lm).

  Returns:
    int32[n_selected] positions, lowest priority first (Trax's order).
  """
  mem_len = buckets.shape[1]
  shares = jnp.any(buckets == q_buckets, axis=0)  # [Lm]
  positions = jnp.arange(mem_len, dtype=jnp.int32)
  priority = jnp.where(positions > q_start + 1, -(mem_len + positions),
                       positions) + mem_len * shares.astype(jnp.int32)
  _, chosen = lax.top_k(priority, n_selected)  # highest first
  return chosen[::-1]


def lsh_step(x, buckets, buckets_idx, hash_key, *, project, q_start,
             n_buckets, n_hashes, chunk_len, n_chunks_before, drop_len):
  """One decoded token, one (example, head) pair (Trax's q_len == 1 path).

  Args:
    x: the memory rows [Lm, ...], the token at `q_start`.
    buckets, buckets_idx, hash_key, project, n_buckets, n_hashes, chunk_len,
      n_chunks_before, drop_len: as in `lsh_prefix`.
    q_start: int32[] the token's position in the memory.

  Returns:
    (o float[1, Dv], buckets int32[R, Lm], buckets_idx int32[]).
  """
  mem_len = buckets.shape[1]
  buckets = roll_buckets(buckets, buckets_idx, q_start, drop_len)
  q, _ = project(_rows(x, q_start, 1))  # [1, D]
  q_buckets = hashing.hash_vectors(
      q, hash_key=hash_key, n_buckets=n_buckets, n_hashes=n_hashes) + (
          round_offsets(n_buckets, n_hashes))  # [R, 1]
  buckets = lax.dynamic_update_slice_in_dim(buckets, q_buckets, q_start,
                                            axis=1)
  kv_pos = select_keys(buckets, q_buckets, q_start, min(
      n_keys(n_hashes, chunk_len, n_chunks_before), mem_len))
  k, v = project(jax.tree_util.tree_map(lambda a: a[kv_pos], x))
  dots = q @ chunked.normalize_keys(k).T  # [1, n_selected]
  dots = masks.mask_logits(dots, jnp.reshape(q_start, (1,)), kv_pos,
                           causal=True)
  probs = jnp.exp(dots - jax.nn.logsumexp(dots, axis=-1, keepdims=True))
  return probs @ v, buckets, jnp.asarray(q_start + 1, buckets_idx.dtype)


def dense_decode(x, *, project, q_start, q_len, chunk_len=None,
                 n_chunks_before=0, n_chunks_after=0, fill=None):
  """The new tokens' dense attention, one (example, head) pair.

  Trax's dense `SelfAttention` decoding: each new token attends to every
  row up to its own position (causal), not only to its chunk window; with
  shared QK (`project` giving no keys) it avoids itself unless nothing
  else is visible. A long prefix given with `chunk_len` is attended in
  chunks as in training (chunk n sees chunks n - n_chunks_before, ...,
  n + n_chunks_after, wrapping around), padded with fill rows to a
  multiple of C.

  Args:
    x: rows [L', ...] (the memory or a long prefix).
    project: rows -> (q [., D], k [., D] or None (shared QK), v [., Dv]).
    q_start: int32[] the first new token's row; q_len: static.
    chunk_len, n_chunks_before, n_chunks_after: a long prefix's chunking
      (chunk_len None: none).
    fill: padding rows (None: zeros).

  Returns:
    float[q_len, Dv].
  """
  if chunk_len is not None:
    length = jax.tree_util.tree_leaves(x)[0].shape[0]
    x = _pad_rows(x, -(-length // chunk_len) * chunk_len, fill)
  q, k, v = project(x)
  keys = chunked.normalize_keys(q) if k is None else local.scale_keys(k)
  kv_pos = jnp.arange(q.shape[0], dtype=jnp.int32)
  if chunk_len is None:
    q = lax.dynamic_slice_in_dim(q, q_start, q_len)
    q_pos = q_start + jnp.arange(q_len, dtype=jnp.int32)
  else:
    q_pos = kv_pos
  o = local.attend(q, keys, v, q_pos=q_pos, kv_pos=kv_pos, kv_valid=None,
                   causal=True, exclude_self=k is None, chunk_len=chunk_len,
                   n_chunks_before=n_chunks_before if chunk_len else 0,
                   n_chunks_after=n_chunks_after if chunk_len else 0)
  return o[:q_len]


def _append(mem, mem_end, x, drop_len, fill):
  """The short-call memory update: roll if full, write x at mem_end.

  mem and x are pytrees of arrays [B, Lm, ...] and [B, T, ...].

  Returns:
    (mem, q_start int32[]).
  """
  tree = jax.tree_util.tree_map
  mem_len = jax.tree_util.tree_leaves(mem)[0].shape[1]
  n_new = jax.tree_util.tree_leaves(x)[0].shape[1]
  roll = mem_end + n_new > mem_len
  drop = lambda m, f: jnp.concatenate(
      [m[:, drop_len:], _fill_like(m[:, :drop_len], f)], axis=1)
  mem = lax.cond(roll, lambda m: _map_with_fill(drop, fill, m), lambda m: m,
                 mem)
  q_start = jnp.where(roll, mem_end - drop_len, mem_end)
  mem = tree(lambda m, new: lax.dynamic_update_slice_in_dim(
      m, new.astype(m.dtype), q_start, axis=1), mem, x)
  return mem, q_start


def use_memory(x, mem_end, mem, *, drop_len, fill=None):
  """Trax's `_use_predict_mem`: the memory update of one call.

  Args:
    x: the new tokens' rows, a pytree of [B, T, ...]; mem_end: int32[];
    mem: the memory, the same pytree of [B, Lm, ...].
    drop_len: positions dropped when the memory is full (1 <= it <= Lm).
    fill: rows the memory takes where nothing was written, a pytree
      matching mem of arrays broadcasting to [B, 1, ...] (None: zeros).

  Returns:
    (inputs: what the heads read, the memory or a long prefix [B, T, ...]
    (NaN when not at the start); the new memory; q_start int32[] the first
    new token's row in `inputs`; the new mem_end int32[]).
  """
  tree = jax.tree_util.tree_map
  mem_end = jnp.asarray(mem_end, jnp.int32)
  n_new = jax.tree_util.tree_leaves(x)[0].shape[1]
  mem_len = jax.tree_util.tree_leaves(mem)[0].shape[1]
  if n_new <= drop_len and n_new < mem_len:
    mem, q_start = _append(mem, mem_end, x, drop_len, fill)
    return mem, mem, q_start, q_start + n_new
  # A long prefix: only at the start of a sequence.
  inputs = tree(lambda a: jnp.where(mem_end == 0, a, jnp.nan).astype(a.dtype),
                x)
  if n_new >= mem_len:
    keep = lambda a, m, f: a[:, n_new - mem_len:].astype(m.dtype)
  else:
    keep = lambda a, m, f: jnp.concatenate(
        [a.astype(m.dtype), _fill_like(m[:, n_new:], f)], axis=1)
  mem = _map_with_fill(keep, fill, x, mem)
  return inputs, mem, jnp.zeros((), jnp.int32), jnp.int32(min(n_new, mem_len))
