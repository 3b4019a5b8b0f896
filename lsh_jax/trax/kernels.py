"""The Trax layers' computation as pure JAX functions (no Trax import).

Shapes (the package glossary): B batch, N heads, L length, Dm model depth
(d_model), D = d_qk, Dv = d_v, P = B * N (example, head) pairs.
Weights per head, as Trax stores them (leading axis N):
  LSH and shared-QK dense: (w_q [Dm, D], w_v [Dm, Dv], w_o [Dv, Dm]),
    with bias also (b_q [D], b_v [Dv]);
  dense, separate keys: (w_q, w_k [Dm, D], w_v, w_o), with bias also
    (b_q, b_k, b_v).
LSH state per (example, head) pair (leading axis P): (buckets
int32[R * Lb], hash key uint32[2]), where buckets are Trax's flat ids with
round offsets, `bucket + h * ids_per_round`, zero-padded to
Lb = max_length_for_buckets (or L). The dense layer has no state.

`lsh_attend` and `dense_head` compute one head of one example with
lsh_jax's functions; `run` vmaps them over heads and batch (`trax_heads`)
under one `jax.jit`. For the LSH layer the projections are taken out of the
loop over pairs (`trax_projected`; its per-pair reference, with the
projections inside the loop as Trax's layer has them, is `lsh_head` in
tests/trax_testing.py).
"""
import dataclasses
import functools
from typing import Optional, Tuple, Union

import jax
import jax.numpy as jnp

import lsh_jax
from lsh_jax.core import hashing
from lsh_jax.core import local as trax_dense
from lsh_jax.trax import heads as trax_heads
from lsh_jax.trax import projected as trax_projected

__all__ = [
    'bucket_ids', 'dense_head', 'encdec_head', 'lsh_attend', 'out_dtype',
    'project', 'pure_head', 'run', 'Spec',
]


@dataclasses.dataclass(frozen=True)
class Spec:
  """A layer's static configuration (hashable: a `jit` static argument)."""
  kind: str  # 'lsh', 'dense', 'pure' (PureLSHSelfAttention) or 'encdec'
  n_heads: int
  causal: bool
  chunk_len: Optional[int]
  n_chunks_before: int
  n_chunks_after: int
  bias: bool
  attention_dropout: float
  output_dropout: float
  n_parallel_heads: Optional[int]
  share_qk: bool = True
  n_hashes: int = 1
  n_buckets: Union[int, Tuple[int, ...], None] = None
  max_length_for_buckets: Optional[int] = None
  predict_mem_len: Optional[int] = None  # mode='predict' only
  predict_drop_len: Optional[int] = None
  allow_duplicate_attention: bool = True  # LSH only, see lsh_attention
  attend_across_buckets: bool = True


def project(x, weights, spec):
  """x [L, Dm] -> (q [L, D], k [L, D] or None, v [L, Dv], w_o [Dv, Dm])."""
  names = ('q', 'v') if spec.share_qk else ('q', 'k', 'v')
  kernels = dict(zip(names, weights))
  w_o = weights[len(names)]
  projected = {name: x @ kernel for name, kernel in kernels.items()}
  if spec.bias:
    biases = weights[len(names) + 1:]
    projected = {name: projected[name] + b for name, b in zip(names, biases)}
  return projected['q'], projected.get('k'), projected['v'], w_o


def bucket_ids(spec, length, masked):
  """(n_buckets, ids per round): automatic n_buckets resolved for `length`,
  ids counting the padding id when `masked` (Trax's offset unit)."""
  n_buckets = spec.n_buckets
  if n_buckets is None:
    n_buckets = lsh_jax.auto_n_buckets(length, spec.chunk_len)
  return n_buckets, hashing.n_buckets_total(n_buckets) + int(masked)


def pure_head(x, mask, weights, state, *, spec, dropout_key, update_state):
  """One (example, head) pair of `PureLSHSelfAttention`: no weights.

  x is the pair's (qk [L, D], v [L, Dv]); weights is ().

  Returns:
    (o [L, Dv], new state).
  """
  del weights
  qk, v = x
  return lsh_attend(qk, v, mask, state, spec=spec, dropout_key=dropout_key,
                    update_state=update_state)


def lsh_attend(q, v, mask, state, *, spec, dropout_key, update_state):
  """LSH attention of one head: q [L, D], v [L, Dv] -> (o [L, Dv], state).

  With `update_state`, hashes with a key split from the state's key and
  returns the new state (Trax's order: the first half is stored, the second
  hashes); otherwise reads the buckets back from `state` (the backward pass).
  """
  length = q.shape[0]
  n_rounds = spec.n_hashes
  n_buckets, n_ids = bucket_ids(spec, length, mask is not None)
  offsets = n_ids * jnp.arange(n_rounds, dtype=jnp.int32)[:, None]  # [R, 1]
  if update_state:
    stored_key, hash_key = jax.random.split(state[1])
    buckets = lsh_jax.hash_vectors(q, hash_key=hash_key, n_buckets=n_buckets,
                                   n_hashes=n_rounds, mask=mask)
    flat = (buckets + offsets).reshape(-1)
    if spec.max_length_for_buckets:
      pad = n_rounds * (spec.max_length_for_buckets - length)
      flat = jnp.concatenate([flat, jnp.zeros(pad, jnp.int32)])
    state = (flat, stored_key)
  else:
    buckets = state[0][:n_rounds * length].reshape(n_rounds, length) - offsets
  o = lsh_jax.lsh_attention_from_buckets(
      q, v, buckets, chunk_len=spec.chunk_len,
      n_chunks_before=spec.n_chunks_before,
      n_chunks_after=spec.n_chunks_after, causal=spec.causal, mask=mask,
      attention_dropout=spec.attention_dropout, dropout_key=dropout_key,
      n_ids=n_ids, allow_duplicate_attention=spec.allow_duplicate_attention,
      attend_across_buckets=spec.attend_across_buckets)
  return o, state


def dense_head(x, mask, weights, state, *, spec, dropout_key, update_state):
  """One head of the dense `SelfAttention` on one example.

  Separate keys (Trax's default), chunked or not: `trax_dense.attend`,
  Trax's `attend` (padded queries computed as in Trax). Shared QK:
  `lsh_jax.full_attention`, or with chunks or attention dropout
  `lsh_attention_from_buckets` with every token in bucket 0 (one round: the
  sort is the identity, so only the chunk windows limit attention).

  Returns:
    (out [L, Dm] before output dropout, state unchanged).
  """
  del update_state
  q, k, v, w_o = project(x, weights, spec)
  length = x.shape[0]
  if k is not None:
    positions = jnp.arange(length, dtype=jnp.int32)
    o = trax_dense.attend(
        q, trax_dense.scale_keys(k), v, q_pos=positions, kv_pos=positions,
        kv_valid=mask, causal=spec.causal, exclude_self=False,
        chunk_len=spec.chunk_len, n_chunks_before=spec.n_chunks_before,
        n_chunks_after=spec.n_chunks_after,
        dropout_rate=spec.attention_dropout, dropout_key=dropout_key)
  elif spec.chunk_len is None and not spec.attention_dropout:
    o = lsh_jax.full_attention(q, v, causal=spec.causal, mask=mask)
  else:
    chunked = spec.chunk_len is not None
    o = lsh_jax.lsh_attention_from_buckets(
        q, v, jnp.zeros((1, length), jnp.int32),
        chunk_len=spec.chunk_len if chunked else length,
        n_chunks_before=spec.n_chunks_before if chunked else 0,
        n_chunks_after=spec.n_chunks_after if chunked else 0,
        causal=spec.causal, mask=mask,
        attention_dropout=spec.attention_dropout, dropout_key=dropout_key)
  return o @ w_o, state


def encdec_head(x, mask, weights, state, *, spec, dropout_key, update_state):
  """One head of `EncDecAttention` on one example.

  x is (queries' input [Lq, Dm], keys' and values' input [Lk, Dk]); mask
  bool[Lk] (True = real key) or None; weights (w_q [Dm, D], w_k [Dk, D],
  w_v [Dk, Dv], w_o [Dv, Dm]). Dense attention, no causal or self mask,
  padding keys masked (`trax_dense.attend`).

  Returns:
    (out [Lq, Dm] before output dropout, state unchanged).
  """
  del update_state
  q_in, kv_in = x
  w_q, w_k, w_v, w_o = weights
  q, k, v = q_in @ w_q, kv_in @ w_k, kv_in @ w_v
  o = trax_dense.attend(
      q, trax_dense.scale_keys(k), v,
      q_pos=jnp.arange(q.shape[0], dtype=jnp.int32),
      kv_pos=jnp.arange(k.shape[0], dtype=jnp.int32), kv_valid=mask,
      causal=False, exclude_self=False, dropout_rate=spec.attention_dropout,
      dropout_key=dropout_key)
  return o @ w_o, state


# The loop's per-pair function of each kind. The LSH layer's loop runs the
# attention alone, its projections are whole-batch einsums around it
# (`trax_projected`); its per-pair form, `lsh_head` in tests/trax_testing.py,
# is the reference in tests/test_trax_projected.py.
_HEADS = {'lsh': pure_head, 'dense': dense_head, 'pure': pure_head,
          'encdec': encdec_head}


def out_dtype(x):
  """The dtype of the layer's output: that of its first input."""
  return jax.tree_util.tree_leaves(x)[0].dtype


@functools.partial(jax.jit, static_argnames=('spec', 'update_state'))
def run(x, mask, weights, state, rng, output_grad=None, *, spec,
        update_state=True):
  """The layer on a batch: forward pass, and backward pass if asked.

  Args:
    x: float[B, L, Dm]; mask: bool[B, L] or None.
    weights, state: as in the module docstring.
    rng: the layer's key, shared by all examples and heads: split into the
      attention-dropout key and the output-dropout key, as Trax does.
    output_grad: float[B, L, Dm] or None.
    spec: `Spec`.
    update_state: hash anew (forward) or use the state's buckets (backward).

  Returns:
    (out [B, L, Dm], new_state, x_grad or None, weights_grad or None).
  """
  dropout_key, output_key = jax.random.split(rng)
  head_fn = functools.partial(_HEADS[spec.kind], spec=spec,
                              dropout_key=dropout_key,
                              update_state=update_state)
  multiplier = None
  if spec.output_dropout:
    keep_prob = 1.0 - spec.output_dropout
    d_model = jax.tree_util.tree_leaves(x)[0].shape[-1]
    keep = jax.random.bernoulli(output_key, keep_prob, (d_model,))
    multiplier = keep.astype(out_dtype(x)) / keep_prob  # [Dm], every position
    if output_grad is not None:
      output_grad = output_grad * multiplier
  if spec.kind == 'lsh':
    # The same values as `lsh_head` in the loop (tests/test_trax_projected).
    out, new_state, x_grad, w_grad = trax_projected.run(
        head_fn, x, mask, weights, state, n_heads=spec.n_heads,
        n_parallel_heads=spec.n_parallel_heads, bias=spec.bias,
        output_grad=output_grad, update_state=update_state)
  else:
    out, new_state, x_grad, w_grad = trax_heads.forward_and_or_backward(
        head_fn, x, mask, weights, state, n_heads=spec.n_heads,
        n_parallel_heads=spec.n_parallel_heads, output_grad=output_grad,
        update_state=update_state)
  if multiplier is not None:
    out = out * multiplier
  return out, new_state, x_grad, w_grad
