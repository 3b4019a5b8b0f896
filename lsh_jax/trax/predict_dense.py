"""Incremental decoding (`mode='predict'`) of the dense `SelfAttention`.

Pure JAX (no Trax import): Trax 1.4.1's `SelfAttention._use_predict_mem`
and `_incremental_forward_unbatched` written for today's JAX (Trax's own
calls `lax.cond` with keywords JAX removed), one jit-compiled `call` per
step.

Shapes: B batch, N heads, T tokens given in one call, Lm = predict_mem_len,
Dm model depth, C = chunk_len.

State, Trax's layout: (mem_end int32[], (mem float[B, Lm, Dm],), ()) -- the
layer's inputs so far, the next one at `mem_end`; the dense layer keeps no
per-head state. The memory update is the LSH layer's (`trax_predict.
use_memory`): short calls append (dropping the oldest `predict_drop_len`
positions when full), a long prefix is only taken at the start.

Each new token attends to every memory position up to its own (causal; with
shared QK it avoids itself as in training), not only to its chunk window,
as in Trax (`lsh_jax.core.decoding.dense_decode`, which the Flax modules'
decode=True runs too). A long prefix (T > C, at the start) runs the layer's
chunked attention over the prefix, padded with zeros to a multiple of C
when it is not one (Trax requires a multiple; the padding is in the future
of every real token, so the causal mask hides it).
"""
import functools

import jax

from lsh_jax.core import decoding
from lsh_jax.trax import heads as trax_heads
from lsh_jax.trax import kernels as trax_kernels
from lsh_jax.trax import predict as trax_predict

__all__ = ['call', 'head']


def head(x, mask, weights, state, *, spec, q_start, q_len, chunked):
  """The new tokens' attention, one head of one example.

  Args:
    x: float[Lm', Dm] the memory (or the long prefix, Lm' = T).
    mask: None (decoding has no padding input).
    weights: one head's weights (`trax_kernels`); state: () (none).
    spec: `trax_kernels.Spec` (kind 'dense').
    q_start: int32[] the first new token's position in x.
    q_len: static T.
    chunked: static, whether x is a long prefix to attend in chunks.

  Returns:
    (out float[T, Dm], state).
  """
  del mask
  w_o = weights[2 if spec.share_qk else 3]  # trax_kernels.project's order
  project = lambda rows: trax_kernels.project(rows, weights, spec)[:3]
  o = decoding.dense_decode(
      x, project=project, q_start=q_start, q_len=q_len,
      chunk_len=spec.chunk_len if chunked else None,
      n_chunks_before=spec.n_chunks_before,
      n_chunks_after=spec.n_chunks_after)
  return o @ w_o, state


@functools.partial(jax.jit, static_argnames=('spec',))
def call(x, weights, state, *, spec):
  """The layer in predict mode on T new tokens.

  Args:
    x: float[B, T, Dm] the new tokens.
    weights: per-head weights, leading axis N (`trax_kernels`).
    state: Trax's predict state (module docstring).
    spec: `trax_kernels.Spec` with predict_mem_len and predict_drop_len.

  Returns:
    (out float[B, T, Dm], new state).
  """
  mem_end, (mem,), head_state = state
  n_new = x.shape[1]
  long_prefix = not (n_new <= spec.predict_drop_len and
                     n_new < spec.predict_mem_len)
  inputs, mem, q_start, new_end = trax_predict.use_memory(x, mem_end, mem,
                                                          spec=spec)
  head_fn = functools.partial(
      head, spec=spec, q_start=q_start, q_len=n_new,
      chunked=(long_prefix and spec.chunk_len is not None and
               n_new > spec.chunk_len))
  out, _, _, _ = trax_heads.forward_and_or_backward(
      head_fn, inputs, None, weights, head_state, n_heads=spec.n_heads,
      n_parallel_heads=spec.n_parallel_heads)
  return out.astype(x.dtype), (new_end, (mem,), head_state)
