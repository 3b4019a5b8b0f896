"""Argument checks that run before tracing.

Every public entry point calls these on static facts (shapes, dtypes, Python
numbers), so a bad argument gives a `ValueError` that names the argument and
what was expected instead of a reshape or tracer error from deep inside XLA.
They also work on tracers, since shapes and dtypes are static under `jit`
and `vmap`.
"""
import operator

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    'check_attention_args', 'check_buckets', 'check_chunking',
    'check_dense_args', 'check_dense_size', 'check_dropout', 'check_flag',
    'check_head_features', 'check_key', 'check_lsh_settings', 'check_mask',
    'check_matrix',
    'check_n_buckets', 'check_n_buckets_given', 'check_non_negative_int',
    'check_positive_int', 'check_rate',
]


def _as_int(name, value):
  if isinstance(value, bool):
    raise ValueError(f'{name} must be an int, got the bool {value!r}')
  try:
    return operator.index(value)
  except TypeError:
    raise ValueError(
        f'{name} must be an int, got {type(value).__name__} {value!r}'
    ) from None


def check_positive_int(name, value):
  value = _as_int(name, value)
  if value < 1:
    raise ValueError(f'{name} must be >= 1, got {value}')
  return value


def check_non_negative_int(name, value):
  value = _as_int(name, value)
  if value < 0:
    raise ValueError(f'{name} must be >= 0, got {value}')
  return value


def check_n_buckets(n_buckets):
  """Returns `n_buckets` as an int or a tuple of ints (hashable, for jit)."""
  if isinstance(n_buckets, (list, tuple)):
    if not n_buckets:
      raise ValueError('n_buckets must be an even int or a non-empty list of '
                       'even ints, got an empty list')
    factors = tuple(_as_int('n_buckets factor', f) for f in n_buckets)
    for factor in factors:
      if factor < 2 or factor % 2:
        raise ValueError(f'every n_buckets factor must be an even int >= 2, '
                         f'got {list(factors)}')
    return factors
  value = _as_int('n_buckets', n_buckets)
  if value < 2 or value % 2:
    raise ValueError(f'n_buckets must be an even int >= 2, got {value}')
  return value


def check_flag(name, value):
  """A True/False argument (NumPy bools too): bool, else ValueError."""
  if value is True or value is False or type(value).__name__ == 'bool_':
    return bool(value)
  raise ValueError(f'{name} must be True or False, got {value!r}')


def check_n_buckets_given(n_buckets, fn_name):
  """`check_n_buckets` for a function without the automatic choice (it does
  not know chunk_len): None is an error that names the alternative."""
  if n_buckets is None:
    raise ValueError(f'{fn_name} needs n_buckets; for the automatic choice '
                     'pass auto_n_buckets(length, chunk_len)')
  return check_n_buckets(n_buckets)


def check_matrix(name, array, *, floating=True):
  """Checks a [length, depth] array."""
  shape = np.shape(array)
  if len(shape) != 2:
    raise ValueError(f'{name} must be a 2-D array [length, depth], got shape '
                     f'{tuple(shape)}; use jax.vmap for batches and heads')
  dtype = jnp.result_type(array)
  if floating and not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f'{name} must have a floating dtype, got {dtype}')
  if shape[0] < 1 or shape[1] < 1:
    raise ValueError(f'{name} must have length and depth >= 1, got shape '
                     f'{tuple(shape)}')


def check_mask(mask, length):
  if mask is None:
    return
  shape = np.shape(mask)
  if tuple(shape) != (length,):
    raise ValueError(f'mask must have shape ({length},) to match q, got '
                     f'{tuple(shape)}')
  dtype = jnp.result_type(mask)
  if dtype != jnp.bool_:
    raise ValueError(f'mask must be boolean (True = real token), got {dtype}')


def check_chunking(chunk_len, n_chunks_before, n_chunks_after):
  """Checks the chunk settings; any length works (the public entry points
  pad to a multiple of chunk_len themselves, `lsh_jax.core.padding`)."""
  check_positive_int('chunk_len', chunk_len)
  check_non_negative_int('n_chunks_before', n_chunks_before)
  check_non_negative_int('n_chunks_after', n_chunks_after)


def check_lsh_settings(*, n_hashes, n_buckets, chunk_len, n_chunks_before,
                       n_chunks_after, allow_duplicate_attention,
                       attend_across_buckets, n_parallel_heads):
  """An LSH attention module's settings (the Flax and Equinox modules'),
  checked: a dict of them by name, normalised (ints, bools; n_buckets and
  n_parallel_heads may stay None)."""
  check_chunking(chunk_len, n_chunks_before, n_chunks_after)
  return dict(
      n_hashes=check_positive_int('n_hashes', n_hashes),
      n_buckets=None if n_buckets is None else check_n_buckets(n_buckets),
      chunk_len=chunk_len, n_chunks_before=n_chunks_before,
      n_chunks_after=n_chunks_after,
      allow_duplicate_attention=check_flag('allow_duplicate_attention',
                                           allow_duplicate_attention),
      attend_across_buckets=check_flag('attend_across_buckets',
                                       attend_across_buckets),
      n_parallel_heads=(None if n_parallel_heads is None else
                        check_positive_int('n_parallel_heads',
                                           n_parallel_heads)))


def check_key(name, key):
  """Checks that `key` is one PRNG key: a typed key array of shape () or a
  raw uint32 key of rank 1 (`jax.random.PRNGKey`)."""
  shape = tuple(np.shape(key))
  try:
    dtype = jnp.result_type(key)
  except TypeError:
    dtype = None
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    if shape != ():
      raise ValueError(f'{name} must be a single PRNG key, got a key array of '
                       f'shape {shape}; use jax.vmap for one key per example')
    return
  if dtype != jnp.uint32 or len(shape) != 1:
    kind = type(key).__name__ if dtype is None else f'{dtype}{list(shape)}'
    raise ValueError(f'{name} must be a PRNG key (jax.random.key(seed) or '
                     f'jax.random.PRNGKey(seed)), got {kind}; use jax.vmap '
                     f'for one key per example')


def check_head_features(num_heads, in_features, qk_features, v_features,
                        out_features):
  """A self-attention module's widths, checked, defaults resolved.

  qk_features defaults to in_features, v_features to qk_features,
  out_features to in_features; qk and v widths must split into num_heads.

  Returns:
    (num_heads, in_features, qk_features, v_features, out_features, H, Hv)
    with H, Hv the per-head depths.
  """
  num_heads = check_positive_int('num_heads', num_heads)
  in_features = check_positive_int('in_features', in_features)
  qk_features = check_positive_int(
      'qk_features', in_features if qk_features is None else qk_features)
  v_features = check_positive_int(
      'v_features', qk_features if v_features is None else v_features)
  out_features = check_positive_int(
      'out_features', in_features if out_features is None else out_features)
  depths = []
  for name, features in (('qk_features', qk_features),
                         ('v_features', v_features)):
    if features % num_heads:
      raise ValueError(f'{name} ({features}) must be divisible by num_heads '
                       f'({num_heads})')
    depths.append(features // num_heads)
  return (num_heads, in_features, qk_features, v_features, out_features,
          *depths)


def check_rate(name, rate):
  """A dropout rate: a float in [0, 1) (NaN fails the range check)."""
  try:
    rate = float(rate)
  except (TypeError, ValueError):
    raise ValueError(
        f'{name} must be a float in [0, 1), got {rate!r}') from None
  if not 0.0 <= rate < 1.0:
    raise ValueError(f'{name} must be in [0, 1), got {rate}')
  return rate


def check_dropout(rate, dropout_key):
  """The attention-dropout rate, and its key when the rate is > 0."""
  rate = check_rate('attention_dropout', rate)
  if rate > 0.0:
    if dropout_key is None:
      raise ValueError('dropout_key is required when attention_dropout > 0')
    check_key('dropout_key', dropout_key)
  return rate


def _check_q_v_mask(q, v, mask):
  """q float[L, D], v float[L, Dv] and mask bool[L] or None."""
  check_matrix('q', q)
  check_matrix('v', v)
  length = np.shape(q)[0]
  if np.shape(v)[0] != length:
    raise ValueError(f'v must have the same length as q ({length}), got '
                     f'shape {tuple(np.shape(v))}')
  check_mask(mask, length)


def check_attention_args(q, v, mask, chunk_len, n_chunks_before,
                         n_chunks_after, attention_dropout, dropout_key):
  """Checks the arguments shared by every LSH entry point."""
  _check_q_v_mask(q, v, mask)
  check_chunking(chunk_len, n_chunks_before, n_chunks_after)
  return check_dropout(attention_dropout, dropout_key)


def check_dense_args(q, v, k, mask):
  """Checks `full_attention`'s arguments (k float[L, D] or None)."""
  _check_q_v_mask(q, v, mask)
  if k is not None:
    check_matrix('k', k)
    if np.shape(k) != np.shape(q):
      raise ValueError(f'k must have the shape of q {tuple(np.shape(q))}, '
                       f'got {tuple(np.shape(k))}')


def check_buckets(buckets, length):
  """Checks precomputed bucket ids int[R, L]."""
  shape = tuple(np.shape(buckets))
  if len(shape) != 2 or shape[1] != length or shape[0] < 1:
    raise ValueError(f'buckets must have shape [n_hashes, {length}], got '
                     f'{shape}')
  dtype = jnp.result_type(buckets)
  if not jnp.issubdtype(dtype, jnp.integer):
    raise ValueError(f'buckets must be integers, got {dtype}')


def _format_bytes(n_bytes):
  for unit in ('bytes', 'KiB', 'MiB', 'GiB', 'TiB'):
    if n_bytes < 1024 or unit == 'TiB':
      return f'{n_bytes:.0f} {unit}' if unit == 'bytes' else (
          f'{n_bytes:.1f} {unit}')
    n_bytes /= 1024


def check_dense_size(name, length, max_bytes, itemsize=4):
  """Raises ValueError if a dense [length, length] matrix exceeds max_bytes."""
  needed = length * length * itemsize
  if needed > max_bytes:
    raise ValueError(
        f'{name} has length {length}: its dense [L, L] attention matrix '
        f'would take {_format_bytes(needed)}, above max_bytes='
        f'{_format_bytes(max_bytes)}. attention_weights is meant for small '
        f'and medium lengths; use lsh_attention for long sequences, or pass '
        f'a larger max_bytes')
