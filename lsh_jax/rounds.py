"""One hash round from sort to undo-sort, given its round index.

`attend_round(h, ...)` sorts q, keys and v by round h's permutation, adds
the halo of neighbouring chunks (which may belong to rounds h - 1 and
h + 1, SPEC.md §3), attends within chunks and puts the results back in
original order. `lsh_attention` applies it to every round with `jax.vmap`,
or one round after another with `lax.map` when memory is tight.
"""
import jax.numpy as jnp

from lsh_jax import chunked
from lsh_jax import sorting


def attend_round(round_index, *, q, keys, v, mask, sticker, undo, chunk_len,
                 n_chunks_before, n_chunks_after, causal,
                 dropout_multiplier=None, chunks_per_block=None):
  """Steps 2-4 of SPEC.md for round `round_index`.

  Args:
    round_index: int32 scalar h.
    q: float[L, D] queries, unsorted.
    keys: float[L, D] `normalize_keys(q)`, unsorted.
    v: float[L, Dv] values, unsorted.
    mask: bool[L] True for real tokens, or None.
    sticker: int32[R, L] every round's sorted positions (`sort_buckets`):
      the halo reaches into the neighbouring rounds.
    undo: int32[R, L] every round's inverse permutation.
    chunk_len, n_chunks_before, n_chunks_after, causal, dropout_multiplier,
      chunks_per_block: see `chunked.chunked_attend`.

  Returns:
    (o float[L, Dv], lse float[L]): round h's output and log-sum-exp
    normaliser per position, in original order.
  """
  n_rounds, length = sticker.shape
  n_chunks = length // chunk_len
  perm, inverse = sticker[round_index], undo[round_index]
  ids_before, ids_after = chunked.halo_chunk_ids(
      round_index, n_rounds, n_chunks, n_chunks_before, n_chunks_after)
  flat_positions = sticker.reshape(n_rounds * n_chunks, chunk_len)
  halo_before = flat_positions[ids_before]  # [before, C]
  halo_after = flat_positions[ids_after]  # [after, C]

  def extend(x):
    """x [L, ...] unsorted -> [E, C, ...]: halo before, own chunks, after."""
    own = sorting.permute(x, perm, inverse)
    own = own.reshape(n_chunks, chunk_len, *x.shape[1:])
    return jnp.concatenate([x[halo_before], own, x[halo_after]], axis=0)

  pos_ext = jnp.concatenate(
      [halo_before, perm.reshape(n_chunks, chunk_len), halo_after], axis=0)
  so, slse = chunked.chunked_attend(
      sorting.permute(q, perm, inverse), perm, extend(keys), extend(v),
      pos_ext, None if mask is None else extend(mask),
      n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after,
      causal=causal, dropout_multiplier=dropout_multiplier,
      chunks_per_block=chunks_per_block)
  return (sorting.undo_sort(so, inverse, perm),
          sorting.undo_sort(slse, inverse, perm))
