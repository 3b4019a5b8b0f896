"""The course lab's teaching helpers, reproduced as the lab wrote them.

The NLP specialisation's "Reformer Efficient Attention" lab builds LSH
attention from these small functions; their quirks are deliberate (see
docs/algorithm.md, "The lab's helpers"): `our_simple_attend` normalises keys
only for shared QK, `dotandv` attends within chunks with raw dot products and
no masks. Plain NumPy, float64. `our_softmax`, `our_hash_vectors` and
`sort_buckets` are shared with the reference pipeline (`spec`).
"""
import numpy as np

from lsh_jax.reference.spec import _check_chunking
from lsh_jax.reference.spec import length_normalized
from lsh_jax.reference.spec import logsumexp
from lsh_jax.reference.spec import our_hash_vectors  # noqa: F401  (the lab's)
from lsh_jax.reference.spec import our_softmax
from lsh_jax.reference.spec import sort_buckets  # noqa: F401  (the lab's)

__all__ = ['dotandv', 'our_simple_attend']


def our_simple_attend(q, k=None, v=None, mask_fn=None, q_info=None,
                      kv_info=None, passthrough=False):
  """The lab's dense attention.

  Args:
    q: float[Lq, D] queries.
    k: float[Lv, D] keys, or None for shared QK (then k = q, normalised).
    v: float[Lv, Dv] values.
    mask_fn: called as mask_fn(dots, q_info[:, None], kv_info[None, :]).
    q_info: int[Lq] query metadata (default: positions).
    kv_info: int[Lv] key metadata (default: positions, or q_info if shared).
    passthrough: see `our_softmax`.

  Returns:
    (out float[Lq, Dv], lse float[Lq]).
  """
  q = np.asarray(q, np.float64)
  v = np.asarray(v, np.float64)
  share_qk = k is None
  if q_info is None:
    q_info = np.arange(q.shape[-2])
  if kv_info is None:
    kv_info = q_info if share_qk else np.arange(v.shape[-2])
  if share_qk:
    # Only shared keys are normalised; the lab's example passes k = q
    # explicitly, so its keys are not.
    k = length_normalized(q)
  k = np.asarray(k, np.float64) / np.sqrt(q.shape[-1])
  dots = q @ k.T  # [Lq, Lv]
  if mask_fn is not None:
    dots = mask_fn(dots, np.asarray(q_info)[:, None],
                   np.asarray(kv_info)[None, :])
  probs, lse = our_softmax(dots, passthrough)
  return probs @ v, lse.reshape(-1)


def dotandv(sq, sv, undo_sort, kv_chunk_len, n_hashes, seqlen, passthrough):
  """The lab's chunked attention: raw dots within each chunk, no masks.

  Args:
    sq: float[R * L, D] sorted queries.
    sv: float[R * L, Dv] sorted values.
    undo_sort: int[R * L] from `sort_buckets`.
    kv_chunk_len: C.
    n_hashes: R.
    seqlen: L.
    passthrough: see `our_softmax`.

  Returns:
    float[L, Dv] (rounds combined as in docs/algorithm.md §5).
  """
  _check_chunking(seqlen, kv_chunk_len)
  sq = np.asarray(sq, np.float64)
  sv = np.asarray(sv, np.float64)
  chunks_q = sq.reshape(-1, kv_chunk_len, sq.shape[-1])  # [R*M, C, D]
  chunks_v = sv.reshape(-1, kv_chunk_len, sv.shape[-1])  # [R*M, C, Dv]
  # No key normalisation, no 1/sqrt(D), no masks, no adjacent chunks.
  dots = chunks_q @ np.swapaxes(chunks_q, -1, -2)  # [R*M, C, C]
  probs, slse = our_softmax(dots, passthrough)  # slse [R*M, C, 1]
  so = (probs @ chunks_v).reshape(-1, sv.shape[-1])  # [R*L, Dv]
  slse = slse.reshape(-1)  # [R*L]
  o = so[undo_sort]
  lse = slse[undo_sort]
  if n_hashes > 1:
    o = o.reshape(n_hashes, seqlen, -1)  # [R, L, Dv]
    lse = lse.reshape(n_hashes, seqlen, 1)  # [R, L, 1]
    weights = np.exp(lse - logsumexp(lse, axis=0, keepdims=True))
    o = np.sum(o * weights, axis=0)
  return o
