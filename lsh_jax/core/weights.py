"""The effective attention matrix of LSH attention, and its candidate sets.

`lsh_attention` never builds an [L, L] matrix: each round attends within
chunks, and the rounds are combined by their log-sum-exps
(docs/algorithm.md §5).
Because the output is linear in the values, the matrix it applies is the
output for one-hot values: with `v = eye(L)`, row i of the output is row i
of the effective matrix (each round's within-chunk probabilities scattered
back to original positions, weighted by the round weights). So
`attention_weights` runs the real pipeline, not a re-implementation, and
`attention_weights(q, ...) @ v == lsh_attention(q, v, ...)`.

`candidate_counts` says which keys each query's window held in each round,
from the sort alone (NumPy, no attention computed): the support that the
effective matrix may use.
"""
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from lsh_jax.core import attention
from lsh_jax.core import hashing
from lsh_jax.core import validation

__all__ = [
    'attention_weights', 'candidate_counts', 'candidate_union',
    'DEFAULT_MAX_BYTES', 'window_positions',
]

# attention_weights refuses lengths whose float32 [L, L] matrix is larger:
# 1 GiB, L up to 16384. The caller may raise it with `max_bytes`.
DEFAULT_MAX_BYTES = 2**30
# Value columns per `lsh_attention` call: every round holds an [L, block]
# output, so the working memory stays about R * L * block * 4 bytes.
_BLOCK_ELEMENTS = 2**24


def attention_weights(q: ArrayLike, *, hash_key: ArrayLike,
                      n_buckets: hashing.NBuckets = None, n_hashes: int,
                      chunk_len: int, n_chunks_before: int = 1,
                      n_chunks_after: int = 0, causal: bool = False,
                      mask: ArrayLike | None = None,
                      max_bytes: int = DEFAULT_MAX_BYTES,
                      allow_duplicate_attention: bool = True,
                      attend_across_buckets: bool = True) -> jax.Array:
  """The [L, L] attention matrix that `lsh_attention` applies.

  Row i holds, for every key position j, the probability that query i gives
  key j after all rounds are combined: each round's within-chunk
  probabilities, scattered back to original positions and weighted by the
  round weights `softmax_h(lse)` of docs/algorithm.md §5. So, for any values v,
  `attention_weights(q, hash_key=k, ...) @ v` equals
  `lsh_attention(q, v, hash_key=k, ...)` to float32 precision, and every
  valid row sums to 1.

  Computed by running `lsh_attention` on one-hot values (the output is
  linear in v), a block of columns at a time; memory and time are O(L^2):
  meant for small and medium L (inspection, plots, tests), not for training.

  Args:
    q: float[L, D] shared queries/keys.
    hash_key: PRNG key for the hash rotations, as in `lsh_attention`.
    n_buckets, n_hashes, chunk_len, n_chunks_before, n_chunks_after, causal,
      mask, allow_duplicate_attention, attend_across_buckets: as in
      `lsh_attention` (no attention dropout: the matrix is the deterministic
      one). With allow_duplicate_attention=False each row is the softmax
      over the query's union of candidates (docs/paper.md).
    max_bytes: refuse lengths whose float32 [L, L] matrix is larger than
      this (default 1 GiB, i.e. L <= 16384) with a ValueError.

  Returns:
    float[L, L] (float32, or wider if q is): rows are queries, columns keys.
    Rows of padded queries (mask False) are zero. Float32 caveat
    (docs/algorithm.md §5): a query whose only unmasked candidate is itself
    (causal position 0) has logits near -1e5, and its row sums to 1 only
    within ~1e-2; every other valid row sums to 1 within float32 rounding.

  Example (each row is a probability distribution over the keys):

  >>> import jax, jax.numpy as jnp
  >>> from lsh_jax import attention_weights
  >>> q = jax.random.normal(jax.random.key(0), (12, 4))
  >>> w = attention_weights(q, hash_key=jax.random.key(1), n_hashes=2,
  ...                       chunk_len=4)
  >>> w.shape, bool(jnp.allclose(w.sum(axis=-1), 1.0))
  ((12, 12), True)
  """
  validation.check_matrix('q', q)
  length = np.shape(q)[0]
  validation.check_dense_size('q', length, max_bytes)
  dtype = jnp.promote_types(jnp.result_type(q), jnp.float32)
  n_rounds = validation.check_positive_int('n_hashes', n_hashes)
  block = max(1, min(length, _BLOCK_ELEMENTS // (n_rounds * length)))
  columns = []
  for start in range(0, length, block):
    # One-hot values for columns start .. start + block - 1: the same shape
    # every time (the last block may run past L), so one compilation.
    eye = jnp.eye(length, block, k=-start, dtype=dtype)  # [L, block]
    out = attention.lsh_attention(
        q, eye, hash_key=hash_key, n_buckets=n_buckets, n_hashes=n_hashes,
        chunk_len=chunk_len, n_chunks_before=n_chunks_before,
        n_chunks_after=n_chunks_after, causal=causal, mask=mask,
        allow_duplicate_attention=allow_duplicate_attention,
        attend_across_buckets=attend_across_buckets)
    columns.append(out[:, :min(block, length - start)])
  return columns[0] if len(columns) == 1 else jnp.concatenate(columns, 1)


def window_positions(sticker, *, chunk_len, n_chunks_before, n_chunks_after):
  """The key positions each sorted chunk's window holds (docs/algorithm.md §3).

  Args:
    sticker: int[R, L] sorted positions per round (`sort_buckets`).
    chunk_len: C.
    n_chunks_before, n_chunks_after: the look-adjacent window.

  Returns:
    (query_pos int[R * M, C], key_pos int[R * M, W * C]): flat chunk f's
    query positions and, in window order, the positions of the key chunks
    f - before, ..., f + after (modulo R * M: windows wrap across rounds).
  """
  sticker = np.asarray(sticker)
  n_rounds, length = sticker.shape
  flat = sticker.reshape(-1, chunk_len)  # [R * M, C]
  n_flat = flat.shape[0]
  offsets = np.arange(-n_chunks_before, n_chunks_after + 1)  # [W]
  window = (np.arange(n_flat)[:, None] + offsets[None, :]) % n_flat
  return flat, flat[window].reshape(n_flat, -1)  # [R*M, W*C]


def candidate_counts(sticker, *, chunk_len, n_chunks_before=1,
                     n_chunks_after=0):
  """How often each key sits in each query's window, per round.

  Derived from the sort alone (no logits): entry [h, i, j] counts the copies
  of position j in the window of query i's chunk in round h. A count of 2
  happens when a window reaching into a neighbouring round holds j again.
  Masks are not applied: causal and padding keys still count, and so does
  the query itself (exclude-self is a penalty, not a removal).

  Args:
    sticker: int[R, L] sorted positions per round (`sort_buckets`).
    chunk_len, n_chunks_before, n_chunks_after: the window.

  Returns:
    int32[R, L, L].
  """
  sticker = np.asarray(sticker)
  n_rounds, length = sticker.shape
  query_pos, key_pos = window_positions(
      sticker, chunk_len=chunk_len, n_chunks_before=n_chunks_before,
      n_chunks_after=n_chunks_after)
  n_chunks = length // chunk_len
  counts = np.zeros((n_rounds, length, length), np.int32)
  rounds = np.repeat(np.arange(n_rounds), n_chunks)  # [R * M]
  np.add.at(counts, (rounds[:, None, None], query_pos[:, :, None],
                     key_pos[:, None, :]), 1)
  return counts


def candidate_union(sticker, *, chunk_len, n_chunks_before=1,
                    n_chunks_after=0):
  """Whether key j sat in query i's window in any round: bool[L, L].

  `candidate_counts(...).sum(0) > 0` without the [R, L, L] counts.
  """
  sticker = np.asarray(sticker)
  length = sticker.shape[1]
  query_pos, key_pos = window_positions(
      sticker, chunk_len=chunk_len, n_chunks_before=n_chunks_before,
      n_chunks_after=n_chunks_after)
  union = np.zeros((length, length), bool)
  union[query_pos[:, :, None], key_pos[:, None, :]] = True
  return union
