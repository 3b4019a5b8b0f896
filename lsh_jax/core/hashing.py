"""Angular LSH: random rotations and bucket ids (docs/algorithm.md §1).

One hash round is `_hash_round`; `hash_vectors` vmaps it over the rounds'
slices of one rotation array, drawn with the same shape and key as Trax's
`hash_vecs` so that the same key gives the same buckets.
"""
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from lsh_jax.core import validation

__all__ = [
    'auto_n_buckets', 'bucket_factors', 'Buckets', 'hash_vectors',
    'hash_with_rotations', 'n_buckets_total', 'NBuckets', 'random_rotations',
]

# An even int, or a sequence of even factors (their product is the count).
Buckets = int | Sequence[int]
# Where the automatic count is allowed (resolved by `auto_n_buckets`).
NBuckets = int | Sequence[int] | None

# Tokens hashed per step for long inputs (see `hash_with_rotations`).
_TOKENS_PER_BLOCK = 4096


def bucket_factors(n_buckets):
  """The bucket factors of `n_buckets` (an even int or a sequence of them)."""
  if isinstance(n_buckets, (list, tuple)):
    return tuple(int(f) for f in n_buckets)
  return (int(n_buckets),)


def n_buckets_total(n_buckets):
  """Number of bucket ids per round, not counting the padding id."""
  return math.prod(bucket_factors(n_buckets))


def auto_n_buckets(length: int,
                   chunk_len: int) -> int | tuple[int, int]:
  """Trax's automatic bucket count for a sequence of `length` tokens.

  About two buckets per chunk, so that a bucket fits in a chunk on average;
  above 128 buckets the count is factorised into two factors to keep the
  rotation matrix small.

  Returns:
    An even int, or a tuple of two even ints.

  Example:

  >>> from lsh_jax import auto_n_buckets
  >>> auto_n_buckets(1024, 64)  # 16 chunks: two buckets a chunk
  32
  >>> auto_n_buckets(65536, 64)  # 2048 buckets, in two factors
  (64, 32)
  """
  n = 2 * max(1, length // chunk_len)
  if n <= 128:
    return n
  first = 2**math.ceil(math.log2(math.sqrt(n)))
  return (first, 2 * (n // (2 * first)))


def random_rotations(key: ArrayLike, depth: int, n_buckets: Buckets,
                     n_hashes: int) -> jax.Array:
  """Draws the random rotations: float32[D, R, sum(factors) // 2].

  A plain draw, `jax.random`-style: the PRNG key comes first, positional.

  The shape and order of this draw are part of the contract
  (docs/algorithm.md §1).
  """
  rot_size = sum(bucket_factors(n_buckets))
  return jax.random.normal(key, (depth, n_hashes, rot_size // 2), jnp.float32)


def _signed_argmax(rotated):
  """argmax(concat([r, -r], -1), -1) without building the concatenation.

  Ties resolve as argmax over the concatenation would: the first occurrence,
  so the `r` half wins a tie with the `-r` half. Written as plain max/min
  reductions (the top score, then the first index that reaches it), which
  XLA:CPU vectorises and fuses; its argmax/argmin are variadic reductions
  that run ~3x slower here.
  """
  half = rotated.shape[-1]
  top = jnp.maximum(jnp.max(rotated, -1), -jnp.min(rotated, -1))[..., None]
  index = jnp.arange(half, dtype=jnp.int32)
  beyond = jnp.int32(2 * half)  # larger than any index
  first_positive = jnp.min(jnp.where(rotated == top, index, beyond), -1)
  first_negative = jnp.min(jnp.where(-rotated == top, index + half, beyond),
                           -1)
  return jnp.minimum(first_positive, first_negative)


def _hash_round(vecs, rotation, factors):
  """Buckets of one round: vecs [L, D], rotation [D, sum(factors) // 2] -> [L]."""
  rotated = vecs @ rotation  # [L, sum(factors) // 2]
  buckets = jnp.zeros(vecs.shape[:1], jnp.int32)
  start, stride = 0, 1
  for factor in factors:
    part = rotated[:, start:start + factor // 2]
    buckets = buckets + stride * _signed_argmax(part).astype(jnp.int32)
    start += factor // 2
    stride *= factor
  return buckets


def hash_with_rotations(vecs: ArrayLike, rotations: ArrayLike,
                        n_buckets: Buckets,
                        mask: ArrayLike | None = None) -> jax.Array:
  """Bucket ids for given rotations.

  Args:
    vecs: float[L, D] vectors to hash (the shared queries/keys).
    rotations: float[D, R, sum(factors) // 2], see `random_rotations`.
    n_buckets: an even int, or a sequence of even factors.
    mask: bool[L], True for real tokens, or None.

  Returns:
    int32[R, L] bucket ids without round offsets; padding tokens get the
    extra id `prod(factors)`.
  """
  factors = bucket_factors(n_buckets)
  vecs = jax.lax.stop_gradient(vecs)
  length = vecs.shape[0]

  def hash_block(vecs):
    hash_round = lambda rotation: _hash_round(vecs, rotation, factors)
    return jax.vmap(hash_round, in_axes=1)(rotations)  # [R, rows]

  block = _TOKENS_PER_BLOCK
  if length <= block or length % block:
    buckets = hash_block(vecs)
  else:
    # Token blocks keep the rotated scores [R, block, F] cache-sized while
    # the reductions read them (at 64K x 4 the whole [R, L, F] is 48 MiB).
    buckets = jax.lax.map(hash_block, vecs.reshape(-1, block, vecs.shape[1]))
    buckets = jnp.moveaxis(buckets, 0, 1).reshape(-1, length)  # [R, L]
  if mask is not None:
    buckets = jnp.where(mask[None, :], buckets, n_buckets_total(n_buckets))
  return buckets


def hash_vectors(vecs: ArrayLike, *, hash_key: ArrayLike, n_buckets: Buckets,
                 n_hashes: int, mask: ArrayLike | None = None) -> jax.Array:
  """Hashes `vecs` into buckets, `n_hashes` independent rounds.

  Args:
    vecs: float[L, D].
    hash_key: a PRNG key; the rotations are
      `random_rotations(hash_key, D, ...)`.
    n_buckets: an even int or a sequence of even factors (required: without
      chunk_len there is no automatic count; pass
      `auto_n_buckets(L, chunk_len)` for it).
    n_hashes: number of rounds R >= 1.
    mask: bool[L], True for real tokens, or None.

  Returns:
    int32[R, L] bucket ids, no round offsets; padding tokens get the id
    `prod(factors)`.

  Example (three rounds of four buckets):

  >>> import jax
  >>> from lsh_jax import hash_vectors
  >>> vecs = jax.random.normal(jax.random.key(0), (10, 4))
  >>> b = hash_vectors(vecs, hash_key=jax.random.key(1), n_buckets=4,
  ...                  n_hashes=3)
  >>> b.shape, str(b.dtype), bool(((b >= 0) & (b < 4)).all())
  ((3, 10), 'int32', True)
  """
  validation.check_matrix('vecs', vecs)
  length, depth = vecs.shape
  n_buckets = validation.check_n_buckets_given(n_buckets, 'hash_vectors')
  validation.check_positive_int('n_hashes', n_hashes)
  validation.check_mask(mask, length)
  validation.check_key('hash_key', hash_key)
  rotations = random_rotations(hash_key, depth, n_buckets, n_hashes)
  return hash_with_rotations(vecs, rotations, n_buckets, mask)
