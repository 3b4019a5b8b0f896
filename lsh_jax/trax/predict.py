"""Incremental decoding (`mode='predict'`) of the LSH layers: Trax's algorithm.

Pure JAX (no Trax import): the computation behind
`lsh_jax.trax.LSHSelfAttention(mode='predict')` and
`lsh_jax.trax.PureLSHSelfAttention(mode='predict')`, Trax 1.4.1's
`_use_predict_mem` and `_incremental_forward_unbatched` written for today's
JAX, one jit-compiled `call` per step.

Shapes: B batch, N heads, P = B * N (example, head) pairs, T tokens given
in one call, Lm = predict_mem_len, Dm model depth, D = d_qk, R = n_hashes,
C = chunk_len, Ks = R * C * (1 + n_chunks_before) keys per decoded token.

State, Trax's layout (its `init_weights_and_state` in predict mode):
  (mem_end int32[], (mem float[B, Lm, Dm],),
   (buckets int32[P, R * Lm], buckets_idx int32[P], hash_key uint32[P, 2]))
The weightless `PureLSHSelfAttention` (spec.kind 'pure') sees each
(example, head) pair as an example of one head: its inputs are
(qk float[P, T, D], v float[P, T, Dv]), its memory (qk float[P, Lm, D],
v float[P, Lm, Dv]) in place of `(mem,)`, and it has no weights (Trax's
layout for that layer).
`mem` holds the layer's inputs, the next one goes to position `mem_end`;
`buckets` are the memory positions' bucket ids, flat with round offsets
(`bucket + h * n_buckets_total`, Trax's `hash_vectors`); `buckets_idx` is
where the next token's buckets go; the hash key stays fixed while decoding.

A call with T tokens (`call`):
  * T <= predict_drop_len and T < Lm (one decoded token, a short prefix):
    when the memory cannot take T more, its oldest `predict_drop_len`
    positions are dropped (everything moves left, zeros come in at the end,
    the buckets likewise); the tokens are written at `mem_end`. T = 1:
    `step_head`; T > 1: `prefix_head` over the whole memory.
  * otherwise, a long prefix at the start of a sequence: `prefix_head`
    over the T tokens; the memory keeps the last Lm of them. Not at the
    start (mem_end > 0), the outputs are NaN, Trax's error signal.
`step_head` costs O(Lm) for the selection plus O(Ks) attention, whatever the
number of tokens decoded so far; `prefix_head` is the layer's chunked LSH
attention over the prefix padded to a multiple of C.

Where this differs from Trax, on purpose:
  * n_buckets=None: Trax resolves the automatic count from the length it
    hashes, so the prefix (length Lm or T) and each decoded token (length 2:
    2 buckets) use different hash functions. Here both use
    `auto_n_buckets(max_length_for_buckets or Lm, C)` (the training length
    when `max_length_for_buckets` is set, as in the copy configs).
  * a multi-token call after the start reads its outputs at its own
    positions and rolls the buckets with the memory (Trax returns the first
    positions' outputs and leaves the buckets unrolled).
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax

import lsh_jax
from lsh_jax.core import chunked
from lsh_jax.core import hashing
from lsh_jax.core import masks
from lsh_jax.trax import heads as trax_heads
from lsh_jax.trax import kernels as trax_kernels


def n_buckets(spec):
  """The bucket count used while decoding (module docstring)."""
  if spec.n_buckets is not None:
    return spec.n_buckets
  length = spec.max_length_for_buckets or spec.predict_mem_len
  return lsh_jax.auto_n_buckets(length, spec.chunk_len)


def n_keys(spec):
  """Ks: how many memory positions a decoded token attends to."""
  return spec.n_hashes * spec.chunk_len * (1 + spec.n_chunks_before)


def _offsets(spec):
  """Round offsets of Trax's flat bucket ids: int32[R, 1]."""
  n_ids = hashing.n_buckets_total(n_buckets(spec))
  return n_ids * jnp.arange(spec.n_hashes, dtype=jnp.int32)[:, None]


def _roll_buckets(buckets, buckets_idx, q_start, drop_len):
  """Drops the oldest positions' buckets when the memory was rolled.

  buckets int32[R, Lm]. Trax's `roll_buckets`: the window of Lm starting at
  `buckets_idx - q_start` (clamped to `drop_len`, as `dynamic_slice` does)
  of the buckets followed by `drop_len` zeros.
  """
  extended = jnp.pad(buckets, ((0, 0), (0, drop_len)))
  shift = jnp.clip(buckets_idx - q_start, 0, drop_len)
  rolled = lax.dynamic_slice_in_dim(extended, shift, buckets.shape[1], axis=1)
  return jnp.where(buckets_idx > q_start, rolled, buckets)


def _attention_inputs(x, weights, spec):
  """(q [T, D], v [T, Dv], output map): the LSH layer projects its input
  x [T, Dm] and maps the attention's output through w_o; the pure layer's
  x is already (qk [T, D], v [T, Dv]) and its output is the attention's."""
  if spec.kind == 'pure':
    qk, v = x
    return qk, v, lambda o: o
  q, _, v, w_o = trax_kernels.project(x, weights, spec)
  return q, v, lambda o: o @ w_o


def _rows(x, start, size):
  """Rows start..start + size of every array of x (an array or a pair)."""
  return jax.tree_util.tree_map(
      lambda a: lax.dynamic_slice_in_dim(a, start, size), x)


def prefix_head(x, mask, weights, state, *, spec, q_start, q_len):
  """Several tokens at once, one head of one example.

  Args:
    x: float[T', Dm], the tokens (a long prefix) or the whole memory (a
      short one); the new tokens are x[q_start:q_start + q_len]. The pure
      layer: (qk [T', D], v [T', Dv]).
    mask: None (decoding has no padding input).
    weights, state: one head's weights, one pair's state (module docstring).
    spec: `trax_kernels.Spec`.
    q_start: int32[] position of the first new token.
    q_len: static, the number of new tokens.

  Returns:
    (out float[q_len, Dm], new state).
  """
  del mask
  buckets, buckets_idx, hash_key = state
  n_rounds, mem_len = spec.n_hashes, spec.predict_mem_len
  length = jax.tree_util.tree_leaves(x)[0].shape[0]
  padded = -(-length // spec.chunk_len) * spec.chunk_len
  x = jax.tree_util.tree_map(  # zeros, after the tokens
      lambda a: jnp.pad(a, ((0, padded - length), (0, 0))), x)
  q, v, output = _attention_inputs(x, weights, spec)
  count = n_buckets(spec)
  new_buckets = lsh_jax.hash_vectors(q, hash_key=hash_key, n_buckets=count,
                                     n_hashes=n_rounds)  # [R, L']
  o = lsh_jax.lsh_attention_from_buckets(
      q, v, new_buckets, chunk_len=spec.chunk_len,
      n_chunks_before=spec.n_chunks_before,
      n_chunks_after=spec.n_chunks_after, causal=True,
      n_ids=hashing.n_buckets_total(count))
  out = output(lax.dynamic_slice_in_dim(o, q_start, q_len))
  update = lax.dynamic_slice_in_dim(new_buckets + _offsets(spec), q_start,
                                    q_len, axis=1)[:, -mem_len:]
  buckets = _roll_buckets(buckets.reshape(n_rounds, mem_len), buckets_idx,
                          q_start, spec.predict_drop_len)
  buckets = lax.dynamic_update_slice_in_dim(buckets, update, q_start, axis=1)
  return out, (buckets.reshape(-1), buckets_idx + q_len, hash_key)


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


def step_head(x, mask, weights, state, *, spec, q_start):
  """One decoded token, one head of one example (Trax's q_len == 1 path).

  Args:
    x: float[Lm, Dm] the memory, the token at `q_start` (the pure layer:
      (qk [Lm, D], v [Lm, Dv])).
    mask: None.
    weights, state, spec: as in `prefix_head`.
    q_start: int32[] the token's position in the memory.

  Returns:
    (out float[1, Dm] (pure: [1, Dv]), new state).
  """
  del mask
  buckets, buckets_idx, hash_key = state
  n_rounds, mem_len = spec.n_hashes, spec.predict_mem_len
  buckets = _roll_buckets(buckets.reshape(n_rounds, mem_len), buckets_idx,
                          q_start, spec.predict_drop_len)
  q, _, _ = _attention_inputs(_rows(x, q_start, 1), weights, spec)  # [1, D]
  q_buckets = lsh_jax.hash_vectors(q, hash_key=hash_key,
                                   n_buckets=n_buckets(spec),
                                   n_hashes=n_rounds) + _offsets(spec)  # [R, 1]
  buckets = lax.dynamic_update_slice_in_dim(buckets, q_buckets, q_start,
                                            axis=1)
  kv_pos = select_keys(buckets, q_buckets, q_start,
                       min(n_keys(spec), mem_len))  # [Ks]
  k, v, output = _attention_inputs(
      jax.tree_util.tree_map(lambda a: a[kv_pos], x), weights, spec)  # [Ks, D]
  dots = q @ chunked.normalize_keys(k).T  # [1, Ks]
  dots = masks.mask_logits(dots, jnp.reshape(q_start, (1,)), kv_pos,
                           causal=True)
  probs = jnp.exp(dots - jax.nn.logsumexp(dots, axis=-1, keepdims=True))
  out = output(probs @ v)
  return out, (buckets.reshape(-1), jnp.asarray(q_start + 1,
                                                buckets_idx.dtype), hash_key)


def _append(mem, mem_end, x, drop_len):
  """Trax's short-call memory update: roll if full, write x at mem_end.

  mem and x are arrays [B, Lm, ...] and [B, T, ...] or matching tuples of
  them (the pure layer's (qk, v)).

  Returns:
    (mem, q_start int32[]).
  """
  tree = jax.tree_util.tree_map
  mem_len = jax.tree_util.tree_leaves(mem)[0].shape[1]
  n_new = jax.tree_util.tree_leaves(x)[0].shape[1]
  roll = mem_end + n_new > mem_len
  drop = lambda m: jnp.concatenate(
      [m[:, drop_len:], jnp.zeros_like(m[:, :drop_len])], axis=1)
  mem = lax.cond(roll, lambda m: tree(drop, m), lambda m: m, mem)
  q_start = jnp.where(roll, mem_end - drop_len, mem_end)
  mem = tree(lambda m, new: lax.dynamic_update_slice_in_dim(
      m, new.astype(m.dtype), q_start, axis=1), mem, x)
  return mem, q_start


def use_memory(x, mem_end, mem, *, spec):
  """Trax's `_use_predict_mem`: the memory update of one call.

  Args:
    x: float[B, T, Dm] the new tokens; mem_end: int32[]; mem: float[B, Lm, Dm]
      (or matching tuples, as `_append`).
    spec: `trax_kernels.Spec` with predict_mem_len and predict_drop_len.

  Returns:
    (inputs: what the heads read, the memory [B, Lm, Dm] or a long prefix
    [B, T, Dm] (NaN when not at the start); the new memory; q_start int32[]
    the first new token's position in `inputs`; the new mem_end int32[]).
  """
  tree = jax.tree_util.tree_map
  mem_end = jnp.asarray(mem_end, jnp.int32)
  n_new = jax.tree_util.tree_leaves(x)[0].shape[1]
  mem_len = spec.predict_mem_len
  if n_new <= spec.predict_drop_len and n_new < mem_len:
    mem, q_start = _append(mem, mem_end, x, spec.predict_drop_len)
    return mem, mem, q_start, q_start + n_new
  # A long prefix: only at the start of a sequence.
  inputs = tree(lambda a: jnp.where(mem_end == 0, a, jnp.nan).astype(a.dtype),
                x)
  if n_new >= mem_len:
    keep = lambda a, m: a[:, n_new - mem_len:].astype(m.dtype)
  else:
    keep = lambda a, m: jnp.pad(
        a, ((0, 0), (0, mem_len - n_new)) + ((0, 0),) * (a.ndim - 2)
    ).astype(m.dtype)
  mem = tree(keep, x, mem)
  return inputs, mem, jnp.zeros((), jnp.int32), jnp.int32(min(n_new, mem_len))


@functools.partial(jax.jit, static_argnames=('spec',))
def call(x, weights, state, *, spec):
  """The layer in predict mode on T new tokens.

  Args:
    x: float[B, T, Dm] the new tokens; the pure layer (spec.kind 'pure'):
      (qk float[P, T, D], v float[P, T, Dv]).
    weights: per-head weights, leading axis N (`trax_kernels`); pure: ().
    state: Trax's predict state (module docstring).
    spec: `trax_kernels.Spec` with predict_mem_len and predict_drop_len.

  Returns:
    (out float[B, T, Dm] (pure: [P, T, Dv]), new state).
  """
  mem_end, mem, head_state = state
  pure = spec.kind == 'pure'
  n_new = jax.tree_util.tree_leaves(x)[0].shape[1]
  inputs, mem, q_start, new_end = use_memory(
      tuple(x) if pure else (x,), mem_end, tuple(mem), spec=spec)
  if n_new == 1:
    head_fn = functools.partial(step_head, spec=spec, q_start=q_start)
  else:
    head_fn = functools.partial(prefix_head, spec=spec, q_start=q_start,
                                q_len=n_new)
  out, new_head_state, _, _ = trax_heads.forward_and_or_backward(
      head_fn, inputs if pure else inputs[0], None, weights, head_state,
      n_heads=spec.n_heads, n_parallel_heads=spec.n_parallel_heads)
  return (out.astype(trax_kernels.out_dtype(x)),
          (new_end.astype(jnp.int32), mem, new_head_state))
