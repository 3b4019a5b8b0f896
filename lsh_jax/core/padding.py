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
import jax.numpy as jnp

__all__ = [
    'needs_preparing', 'pad_to_chunks', 'padded_length', 'prepare', 'strip',
]


def padded_length(length, chunk_len):
  """The smallest multiple of `chunk_len` that is >= `length`."""
  return -(-length // chunk_len) * chunk_len


def needs_preparing(length, chunk_len, mask):
  """Whether `prepare` changes anything: a mask to clear, or padding."""
  return mask is not None or length % chunk_len != 0


def pad_to_chunks(arrays, mask, *, chunk_len, axis=0):
  """Appends masked positions along `axis` up to a multiple of `chunk_len`.

  The one padding rule of the package: the entry points use it on [L, ...]
  arrays (`prepare`), the Trax layers on [B, L, ...] ones (axis=1).

  Args:
    arrays: arrays sharing the length axis `axis`, or None (passed through);
      padded with zeros.
    mask: bool of the arrays' shape up to `axis` included (True = real
      token), or None (all real).
    chunk_len: C.
    axis: the length axis.

  Returns:
    (the arrays, the mask), padded; unchanged when the length is already a
    multiple of C (the mask then stays None if it was).
  """
  length = arrays[0].shape[axis]
  extra = padded_length(length, chunk_len) - length
  if extra == 0:
    return tuple(arrays), mask
  if mask is None:
    mask = jnp.ones(arrays[0].shape[:axis + 1], bool)

  def pad(a):
    if a is None:
      return None
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, extra)
    return jnp.pad(a, widths)  # zeros; False for the mask

  return tuple(pad(a) for a in arrays), pad(mask)


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
  (q, v), mask = pad_to_chunks((q, v), mask, chunk_len=chunk_len)
  extra = q.shape[0] - length
  if buckets is not None and extra:
    last = jnp.max(buckets, axis=1, keepdims=True)  # [R, 1]
    buckets = jnp.concatenate(
        [buckets, jnp.broadcast_to(last, (buckets.shape[0], extra))], axis=1)
  return q, v, mask, buckets


def strip(out, length):
  """The first `length` positions of out [Lp, ...]."""
  return out if out.shape[0] == length else out[:length]
