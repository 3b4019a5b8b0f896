"""Incremental decoding (`mode='predict'`) of the LSH layers: Trax's algorithm.

Pure JAX (no Trax import): the computation behind
`lsh_jax.trax.LSHSelfAttention(mode='predict')` and
`lsh_jax.trax.PureLSHSelfAttention(mode='predict')`, Trax 1.4.1's
`_use_predict_mem` and `_incremental_forward_unbatched` written for today's
JAX, one jit-compiled `call` per step. The algorithm itself, per (example,
head) pair, is `lsh_jax.core.decoding` (which the Flax modules' decode=True
runs too); this module maps Trax's weights and state layout onto it.

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

import lsh_jax
from lsh_jax.core import decoding
from lsh_jax.trax import heads as trax_heads
from lsh_jax.trax import kernels as trax_kernels

__all__ = ['call', 'n_buckets', 'prefix_head', 'step_head', 'use_memory']


def n_buckets(spec):
  """The bucket count used while decoding (module docstring)."""
  if spec.n_buckets is not None:
    return spec.n_buckets
  length = spec.max_length_for_buckets or spec.predict_mem_len
  return lsh_jax.auto_n_buckets(length, spec.chunk_len)


def _attention_inputs(weights, spec):
  """rows -> (q [., D], v [., Dv]) and the output map: the LSH layer
  projects its input rows x [., Dm] and maps the attention's output
  through w_o; the pure layer's rows are already (qk, v) and its output is
  the attention's."""
  if spec.kind == 'pure':
    return lambda rows: rows, lambda o: o
  w_o = weights[2]  # after (w_q, w_v): trax_kernels.project's order
  def project(rows):
    q, _, v, _ = trax_kernels.project(rows, weights, spec)
    return q, v
  return project, lambda o: o @ w_o


def _settings(spec):
  """The core decoding functions' settings from the layer's spec."""
  return dict(n_buckets=n_buckets(spec), n_hashes=spec.n_hashes,
              chunk_len=spec.chunk_len,
              n_chunks_before=spec.n_chunks_before,
              drop_len=spec.predict_drop_len)


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
  project, output = _attention_inputs(weights, spec)
  o, buckets, buckets_idx = decoding.lsh_prefix(
      x, buckets.reshape(spec.n_hashes, spec.predict_mem_len), buckets_idx,
      hash_key, project=project, q_start=q_start, q_len=q_len,
      n_chunks_after=spec.n_chunks_after, **_settings(spec))
  return output(o), (buckets.reshape(-1), buckets_idx, hash_key)


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
  project, output = _attention_inputs(weights, spec)
  o, buckets, buckets_idx = decoding.lsh_step(
      x, buckets.reshape(spec.n_hashes, spec.predict_mem_len), buckets_idx,
      hash_key, project=project, q_start=q_start, **_settings(spec))
  return output(o), (buckets.reshape(-1), buckets_idx, hash_key)


def use_memory(x, mem_end, mem, *, spec):
  """Trax's `_use_predict_mem` (`lsh_jax.core.decoding.use_memory`).

  Args:
    x: float[B, T, Dm] the new tokens; mem_end: int32[]; mem: float[B, M, Dm]
      (or matching tuples: the pure layer's (qk, v)).
    spec: `trax_kernels.Spec` with predict_mem_len and predict_drop_len.

  Returns:
    (inputs: what the heads read, the memory [B, Lm, Dm] or a long prefix
    [B, T, Dm] (NaN when not at the start); the new memory; q_start int32[]
    the first new token's position in `inputs`; the new mem_end int32[]).
  """
  return decoding.use_memory(x, mem_end, mem, drop_len=spec.predict_drop_len)


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
