"""Any sequence length: pad to a multiple of the chunk length, mask, strip.

Chunked attention needs L to be a multiple of C. The public entry points
accept any L >= 1: they append `padded_length(L, C) - L` masked positions
(zeros in q and v, False in the mask), run the usual computation and cut
the padding off again. The real positions' outputs are exactly what the
padded, masked computation gives (docs/algorithm.md §3: padding keys get no
probability); they are not what some unpadded computation would give,
because none exists for such L.

Where the buckets are given (`lsh_attention_from_buckets`), appended
positions take their round's largest bucket id: with the (bucket,
position) sort they come after every real token, as hashed padding (the
extra id `prod(factors)`) does, and any bound `n_ids` on the ids still
holds.

Masked positions are also cleared (q = v = 0): their contents cannot
reach real outputs through a NaN or an inf (0 * inf is NaN even where
the probability is exactly 0).
"""
import functools

import jax
import jax.numpy as jnp


def padded_length(length, chunk_len):
  """The smallest multiple of `chunk_len` that is >= `length`."""
  return -(-length // chunk_len) * chunk_len


def needs_preparing(length, chunk_len, mask):
  """Whether `prepare` changes anything: a mask to clear, or padding."""
  return mask is not None or length % chunk_len != 0


@functools.partial(jax.jit, static_argnames=('chunk_len',))
def prepare(q, v, mask, buckets=None, *, chunk_len):
  """Clears masked positions and pads to a multiple of `chunk_len`.

  Args:
    q: float[L, D]; v: float[L, Dv]; mask: bool[L] or None.
    buckets: int[R, L] or None.
    chunk_len: C.

  Returns:
    (q [Lp, D], v [Lp, Dv], mask bool[Lp] or None, buckets [R, Lp] or None)
    with Lp = padded_length(L, C); the mask is None only if it was None and
    no padding was needed.
  """
  length = q.shape[0]
  if mask is not None:
    q = jnp.where(mask[:, None], q, jnp.zeros((), q.dtype))
    v = jnp.where(mask[:, None], v, jnp.zeros((), v.dtype))
  extra = padded_length(length, chunk_len) - length
  if extra == 0:
    return q, v, mask, buckets
  if mask is None:
    mask = jnp.ones(length, bool)
  q = jnp.pad(q, ((0, extra), (0, 0)))
  v = jnp.pad(v, ((0, extra), (0, 0)))
  mask = jnp.pad(mask, (0, extra), constant_values=False)
  if buckets is not None:
    last = jnp.max(buckets, axis=1, keepdims=True)  # [R, 1]
    buckets = jnp.concatenate(
        [buckets, jnp.broadcast_to(last, (buckets.shape[0], extra))], axis=1)
  return q, v, mask, buckets


def strip(out, length):
  """The first `length` positions of out [Lp, ...]."""
  return out if out.shape[0] == length else out[:length]
