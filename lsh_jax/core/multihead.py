"""Multi-head LSH self-attention in jax.nn's layout.

`lsh_self_attention` takes activations `[B, T, N, H]` (batch, length,
heads, depth: the layout of `jax.nn.dot_product_attention` and of Flax's
attention) or `[T, N, H]`, and runs `lsh_attention` on every (example,
head) pair, each hashed with its own key. One head's `[T, H]` and `[T, Hv]`
slices are `lsh_attention`'s `[L, D]` and `[L, Dv]` (the package glossary).

Hash keys, per (example, head): `head_keys(hash_key, B, N)[b, n]`, which is
`jax.random.split(hash_key, B * N)[b * N + n]`. A `[T, N, H]` input is one
example, so head n uses `jax.random.split(hash_key, N)[n]`: the same keys as
the first example of a batch. One head reproduced by hand:

    keys = lsh_jax.core.head_keys(hash_key, B, N)
    out[b, :, n] == lsh_attention(query[b, :, n], value[b, :, n],
                                  hash_key=keys[b, n], mask=mask[b],
                                  **settings)

Attention dropout keys are derived from `dropout_key` the same way.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from lsh_jax.core import attention
from lsh_jax.core import hashing
from lsh_jax.core import pairs as pairs_lib
from lsh_jax.core import sequence_parallel
from lsh_jax.core import validation

__all__ = ['head_keys', 'lsh_self_attention', 'pair_keys']

_STATIC = ('n_buckets', 'n_hashes', 'chunk_len', 'n_chunks_before',
           'n_chunks_after', 'causal', 'attention_dropout',
           'allow_duplicate_attention', 'attend_across_buckets',
           'n_parallel_heads', 'layout')


def head_keys(key: jax.Array, batch: int, heads: int) -> jax.Array:
  """One PRNG key per (example, head), split from `key` (`jax.random.split`
  style: the key comes first, positional).

  Args:
    key: one PRNG key (typed, `jax.random.key`, or raw, `PRNGKey`).
    batch: B; heads: N.

  Returns:
    Keys [B, N] (raw keys: uint32[B, N, 2]); entry [b, n] is
    `jax.random.split(key, B * N)[b * N + n]`.
  """
  keys = jax.random.split(key, batch * heads)
  return keys.reshape((batch, heads) + keys.shape[1:])


def _check_inputs(query, value, mask):
  """Checks the multi-head shapes; returns whether the input is batched."""
  q_shape, v_shape = tuple(np.shape(query)), tuple(np.shape(value))
  if len(q_shape) not in (3, 4):
    raise ValueError(f'query must be a 4-D array [batch, length, heads, '
                     f'depth] or a 3-D array [length, heads, depth], got '
                     f'shape {q_shape}')
  for name, array, shape in (('query', query, q_shape),
                             ('value', value, v_shape)):
    dtype = jnp.result_type(array)
    if not jnp.issubdtype(dtype, jnp.floating):
      raise ValueError(f'{name} must have a floating dtype, got {dtype}')
    if len(shape) == len(q_shape) and min(shape) < 1:
      raise ValueError(f'{name} must have every dimension >= 1, got shape '
                       f'{shape}')
  if len(v_shape) != len(q_shape) or v_shape[:-1] != q_shape[:-1]:
    expected = q_shape[:-1] + ('depth',)
    raise ValueError(f'value must have shape {_show(expected)} to match '
                     f'query (same batch, length and heads), got shape '
                     f'{v_shape}')
  batched = len(q_shape) == 4
  if mask is not None:
    length = q_shape[-3]
    allowed = [(length,)] + ([(q_shape[0], length)] if batched else [])
    m_shape = tuple(np.shape(mask))
    if m_shape not in allowed:
      shapes = ' or '.join(map(_show, allowed))
      raise ValueError(f'mask must have shape {shapes} (one flag per token, '
                       f'shared by the heads), got {m_shape}')
    dtype = jnp.result_type(mask)
    if dtype != jnp.bool_:
      raise ValueError(f'mask must be boolean (True = real token), got '
                       f'{dtype}')
  return batched


def pair_keys(key: jax.Array, batch: int, heads: int) -> jax.Array:
  """The hash key of each (example, head): [B, N] keys.

  `key` is one PRNG key, split by `head_keys`, or already one key per pair
  ([B, N] typed keys or uint32[B, N, 2] raw keys, as a Trax LSH layer's
  state holds them), returned as it is.
  """
  if _is_per_pair(key, batch, heads):
    return key
  return head_keys(key, batch, heads)


def _is_per_pair(key, batch, heads):
  dtype = jnp.result_type(key)
  typed = jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
  return np.shape(key) == ((batch, heads) if typed else (batch, heads, 2))


def _check_hash_key(key, batch, heads):
  """One PRNG key, or one per (example, head) (`pair_keys`)."""
  try:
    is_per_pair = _is_per_pair(key, batch, heads)
  except TypeError:
    is_per_pair = False
  if is_per_pair:
    validation.check_key('hash_key', key[0, 0])
    return
  try:
    validation.check_key('hash_key', key)
  except ValueError as error:
    raise ValueError(f'{error}; or one key per (example, head): keys of shape '
                     f'({batch}, {heads}), raw uint32[{batch}, {heads}, 2]'
                     ) from None


def _show(shape):
  return '(' + ', '.join(map(str, shape)) + (',)' if len(shape) == 1 else ')')


def lsh_self_attention(
    query: jax.typing.ArrayLike,
    value: jax.typing.ArrayLike,
    *,
    hash_key: jax.Array,
    n_buckets: hashing.NBuckets = None,
    n_hashes: int,
    chunk_len: int,
    n_chunks_before: int = 1,
    n_chunks_after: int = 0,
    causal: bool = False,
    mask: jax.typing.ArrayLike | None = None,
    attention_dropout: float = 0.0,
    dropout_key: jax.Array | None = None,
    allow_duplicate_attention: bool = True,
    attend_across_buckets: bool = True,
    n_parallel_heads: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    sequence_axis: str | None = None,
    batch_axis: str | tuple[str, ...] | None = None,
) -> jax.Array:
  """LSH self-attention over batch and heads, jax.nn's layout.

  Queries and keys are shared (Reformer): `query` is hashed, sorted and
  attended exactly as `lsh_attention` does for each (example, head) pair,
  with the hash key `head_keys(hash_key, B, N)[b, n]` (module docstring),
  or `hash_key[b, n]` when it holds one key per pair.

  Args:
    query: float[B, T, N, H] or float[T, N, H], shared queries/keys.
    value: float[B, T, N, Hv] or float[T, N, Hv] (the same leading axes).
    hash_key: one PRNG key; every (example, head) hashes with its own key
      split from it. Or one key per (example, head), [B, N] typed keys or
      uint32[B, N, 2] raw keys (a [T, N, H] input: [1, N]), used as they
      are (`pair_keys`; e.g. the keys a Trax LSH layer's state holds).
    n_buckets, n_hashes, chunk_len, n_chunks_before, n_chunks_after,
      causal, attention_dropout: as in `lsh_attention` (n_buckets None:
      `auto_n_buckets(T, chunk_len)`).
    mask: bool[B, T] or bool[T] (True = real token), shared by the heads;
      a [T] mask is shared by the examples too.
    dropout_key: PRNG key for attention dropout, required when the rate is
      > 0; split per (example, head) like `hash_key`.
    allow_duplicate_attention, attend_across_buckets: as in
      `lsh_attention` (False: the Reformer paper's exact multi-round
      attention, per-bucket candidates; docs/paper.md).
    n_parallel_heads: how many (example, head) pairs are computed at once
      (Trax's name): k runs the B * N pairs k at a time, one step after
      another (`lax.map` with batch_size k; the attention's memory of k
      pairs); None (default) chooses by backend: 1 on CPU, where XLA runs a
      loop step's small matmuls on one thread and one pair per step was
      1.3x faster than all pairs vmapped (B 2, 8 heads, 4K x 4,
      forward+backward), all pairs at once on GPU and TPU. The results do
      not depend on it.
    mesh, sequence_axis: sequence parallelism: T is sharded over the mesh
      axis `sequence_axis` (D devices), and the pairs are exchanged so that
      each device attends whole sequences of B * N / D pairs
      (`lsh_jax.core.sequence_parallel`, docs/scaling.md); the result is
      bit-identical to one device and sharded like the query. Inside or
      outside `jax.jit`. When both are None and the query carries a
      NamedSharding whose T axis is sharded, they are read from it.
    batch_axis: the mesh axis (or axes) B is sharded over in a
      sequence-parallel call (a data x sequence mesh); None: read from the
      query's sharding if it has one, else B is not sharded.

  Returns:
    float[B, T, N, Hv] (or [T, N, Hv]) in the inputs' dtype; zeros at
    masked positions. Differentiable in `query` and `value`.

  Raises:
    ValueError, before tracing, naming the argument and what was expected
    (for sequence parallelism also: B * N (or B / batch-axis size * N)
    not divisible by the sequence axis's size, naming the sizes).

  Example (jax.nn's [B, T, N, H] layout; constant values):

  >>> import jax, jax.numpy as jnp
  >>> from lsh_jax import lsh_self_attention
  >>> query = jax.random.normal(jax.random.key(0), (2, 16, 3, 4))
  >>> value = jnp.ones((2, 16, 3, 5))
  >>> out = lsh_self_attention(query, value, hash_key=jax.random.key(1),
  ...                          n_hashes=2, chunk_len=8)
  >>> out.shape, bool(jnp.allclose(out, 1.0))
  ((2, 16, 3, 5), True)
  """
  batched = _check_inputs(query, value, mask)
  layout = sequence_parallel.resolve_layout(
      query, mesh=mesh, sequence_axis=sequence_axis, batch_axis=batch_axis,
      batched=batched)
  length = np.shape(query)[-3]
  _check_hash_key(hash_key, *(np.shape(query)[::2] if batched
                               else (1, np.shape(query)[1])))
  validation.check_chunking(chunk_len, n_chunks_before, n_chunks_after)
  if dropout_key is not None:
    validation.check_key('dropout_key', dropout_key)
  rate = validation.check_dropout(attention_dropout, dropout_key)
  if n_buckets is None:
    n_buckets = hashing.auto_n_buckets(length, chunk_len)
  static = dict(
      n_buckets=validation.check_n_buckets(n_buckets),
      n_hashes=validation.check_positive_int('n_hashes', n_hashes),
      chunk_len=chunk_len, n_chunks_before=n_chunks_before,
      n_chunks_after=n_chunks_after, causal=bool(causal),
      attention_dropout=rate,
      allow_duplicate_attention=validation.check_flag(
          'allow_duplicate_attention', allow_duplicate_attention),
      attend_across_buckets=validation.check_flag(
          'attend_across_buckets', attend_across_buckets),
      n_parallel_heads=_pairs_at_once(n_parallel_heads), layout=layout)
  if not batched:  # one example: the keys of a batch's first example
    mask = None if mask is None else jnp.asarray(mask)[None]
    return _lsh_self_attention(jnp.asarray(query)[None],
                               jnp.asarray(value)[None], hash_key, mask,
                               dropout_key, **static)[0]
  return _lsh_self_attention(query, value, hash_key, mask, dropout_key,
                             **static)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _lsh_self_attention(query, value, hash_key, mask, dropout_key, *,
                        n_parallel_heads, layout, **static):
  batch, _, heads, _ = query.shape
  hash_keys = pair_keys(hash_key, batch, heads)  # [B, N]
  dropout_keys = (None if dropout_key is None
                  else head_keys(dropout_key, batch, heads))
  if layout is not None:
    return sequence_parallel.head_exchange_attention(
        query, value, hash_keys, mask, dropout_keys, layout=layout,
        n_parallel_heads=n_parallel_heads, **static)

  def one_head(q, v, hash_key, mask, dropout_key):  # q [T, H], v [T, Hv]
    # Arguments are checked already: the entry point's own checks only see
    # tracers here and add no work to the compiled program.
    return attention.lsh_attention(q, v, hash_key=hash_key, mask=mask,
                                   dropout_key=dropout_key, **static)

  pairs = batch * heads
  at_once = n_parallel_heads or pairs
  if at_once >= pairs:
    mask_axis = None if mask is None or mask.ndim == 1 else 0
    drop_axis = None if dropout_keys is None else 0
    # query [B, T, N, H]: batch is axis 0, then heads are axis 1 of each
    # example's [T, N, H]; outputs go back to the same places.
    per_example = jax.vmap(one_head, in_axes=(1, 1, 0, None, drop_axis),
                           out_axes=1)
    return jax.vmap(per_example, in_axes=(0, 0, 0, mask_axis, drop_axis))(
        query, value, hash_keys, mask, dropout_keys)  # [B, T, N, Hv]
  if mask is not None:
    mask = jnp.broadcast_to(mask, (batch, mask.shape[-1]))
  out = pairs_lib.attend_pairs(
      pairs_lib.to_pairs(query), pairs_lib.to_pairs(value),
      pairs_lib.flat_keys(hash_keys),
      None if mask is None else pairs_lib.pair_mask(mask, heads),
      None if dropout_keys is None else pairs_lib.flat_keys(dropout_keys),
      n_parallel_heads=n_parallel_heads, **static)
  return pairs_lib.from_pairs(out, batch, heads)


def _pairs_at_once(n_parallel_heads):
  """`n_parallel_heads` checked, None resolved for the default backend."""
  if n_parallel_heads is not None:
    return validation.check_positive_int('n_parallel_heads',
                                         n_parallel_heads)
  return 1 if jax.default_backend() == 'cpu' else None
