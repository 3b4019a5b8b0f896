"""The hash rounds: one round from sort to undo-sort, and all R of them.

`attend_round(h, ...)` sorts q, keys and v by round h's permutation, adds
the halo of neighbouring chunks (which may belong to rounds h - 1 and h + 1,
docs/algorithm.md §3), attends within chunks and puts the results back in
original order. `attend_rounds` runs every round in one of two ways (the
schedule, `lsh_jax.core.schedule.round_schedule`, picks): all at once with
`jax.vmap`, combining the [R, L, Dv] results (`combine_rounds`); or one
after another (`attend_rounds_in_turn`), each added to a running combine,
so that no [R, L, Dv] stack exists in either pass.

The round has its own VJP (`_sorted_attention`): the backward pass gathers
the sorted inputs again from the unsorted q, keys and v (the same arrays in
every round) and the round's permutation, instead of keeping each round's
sorted copies ([M, C, D] each, three per round) between the passes; its
gradients go back to original order by the inverse permutation (a gather)
plus a scatter-add of the few halo rows.
"""
import functools

import jax
import jax.numpy as jnp

from lsh_jax.core import chunked
from lsh_jax.core import combine
from lsh_jax.core import duplicates
from lsh_jax.core import sorting

__all__ = ['NO_CORRECTION', 'attend_round', 'attend_rounds',
           'attend_rounds_in_turn']

# The flags of the duplicate-count correction, (allow_duplicate_attention,
# attend_across_buckets); this value changes nothing (docs/algorithm.md).
NO_CORRECTION = (True, True)


def attend_round(round_index: jax.Array | int, *, q: jax.Array,
                 keys: jax.Array, v: jax.Array, mask: jax.Array | None,
                 sticker: jax.Array, undo: jax.Array, chunk_len: int,
                 n_chunks_before: int, n_chunks_after: int, causal: bool,
                 dropout_multiplier: jax.Array | None = None,
                 chunks_per_block: int | None = None,
                 buckets: jax.Array | None = None,
                 correction: tuple[bool, bool] = NO_CORRECTION,
                 ) -> tuple[jax.Array, jax.Array]:
  """Steps 2-4 of docs/algorithm.md for round `round_index`.

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
    buckets: int[R, L] every round's bucket ids; needed only with
      `correction`'s attend_across_buckets False.
    correction: (allow_duplicate_attention, attend_across_buckets), see
      `lsh_jax.core.duplicates`; the default changes nothing.

  Returns:
    (o float[L, Dv], lse float[L]): round h's output and log-sum-exp
    normaliser per position, in original order.
  """
  layout = _round_layout(round_index, sticker, undo, mask, chunk_len,
                         n_chunks_before, n_chunks_after)
  bias = _round_bias(round_index, sticker, undo, buckets, layout[2],
                     chunk_len, n_chunks_before, n_chunks_after, correction)
  return _sorted_attention(
      q, keys, v, dropout_multiplier, *layout, bias,
      n_chunks_before, n_chunks_after, causal, chunks_per_block)


def _round_layout(round_index, sticker, undo, mask, chunk_len,
                  n_chunks_before, n_chunks_after):
  """Round h's (perm [L], inverse [L], pos_ext [E, C], valid_ext [E, C])."""
  n_rounds, length = sticker.shape
  n_chunks = length // chunk_len
  perm, inverse = sticker[round_index], undo[round_index]
  ids_before, ids_after = chunked.halo_chunk_ids(
      round_index, n_rounds, n_chunks, n_chunks_before, n_chunks_after)
  flat_positions = sticker.reshape(n_rounds * n_chunks, chunk_len)
  # Original positions of the extended chunks: halo before, own, halo after.
  pos_ext = jnp.concatenate([flat_positions[ids_before],
                             perm.reshape(n_chunks, chunk_len),
                             flat_positions[ids_after]], axis=0)  # [E, C]
  valid_ext = None if mask is None else mask[pos_ext]
  return perm, inverse, pos_ext, valid_ext


def _round_bias(round_index, sticker, undo, buckets, pos_ext, chunk_len,
                n_chunks_before, n_chunks_after, correction):
  """Round h's duplicate-count correction float[M, C, W*C], or None."""
  if tuple(correction) == NO_CORRECTION:
    return None
  n_rounds, length = sticker.shape
  n_chunks = length // chunk_len
  n_windows = 1 + n_chunks_before + n_chunks_after
  ids_before, ids_after = chunked.halo_chunk_ids(
      round_index, n_rounds, n_chunks, n_chunks_before, n_chunks_after)
  chunk_ext = jnp.concatenate([
      ids_before, round_index * n_chunks + jnp.arange(n_chunks,
                                                       dtype=jnp.int32),
      ids_after])  # [E] flat chunk of each extended chunk
  chunk_ext = jnp.broadcast_to(chunk_ext[:, None], pos_ext.shape)  # [E, C]
  # Each query chunk's window, in the order `chunked` lays its keys out.
  window = lambda x: jnp.concatenate(
      [x[w:w + n_chunks] for w in range(n_windows)], axis=1)  # [M, W*C]
  allow_duplicate, across_buckets = correction
  return duplicates.round_logit_bias(
      round_index, table=duplicates.flat_chunks(undo, chunk_len),
      buckets=buckets, q_pos=sticker[round_index].reshape(n_chunks, -1),
      k_pos=window(pos_ext), k_chunk=window(chunk_ext),
      n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after,
      allow_duplicate=allow_duplicate, across_buckets=across_buckets)


def _rows(x, positions):
  """x[positions] for in-bounds int32 positions of any shape."""
  return x.at[positions].get(mode='promise_in_bounds')


def _sorted_inputs(q, keys, v, perm, pos_ext):
  return _rows(q, perm), _rows(keys, pos_ext), _rows(v, pos_ext)


def _attend_and_unsort(q, keys, v, multiplier, perm, inverse, pos_ext,
                       valid_ext, bias, n_chunks_before, n_chunks_after,
                       causal, block):
  """((o [L, Dv], lse [L]) in original order, slse [L] in sorted order)."""
  sq, k_ext, v_ext = _sorted_inputs(q, keys, v, perm, pos_ext)
  so, slse = chunked.chunked_attend(
      sq, perm, k_ext, v_ext, pos_ext, valid_ext,
      n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after,
      causal=causal, dropout_multiplier=multiplier, chunks_per_block=block,
      logit_bias=bias)
  return (sorting.undo_sort(so, inverse, perm),
          sorting.undo_sort(slse, inverse, perm)), slse


@functools.partial(jax.custom_vjp, nondiff_argnums=(9, 10, 11, 12))
def _sorted_attention(q, keys, v, multiplier, perm, inverse, pos_ext,
                      valid_ext, bias, n_chunks_before, n_chunks_after,
                      causal, block):
  """Sort, attend in chunks, undo the sort: (o [L, Dv], lse [L])."""
  return _attend_and_unsort(q, keys, v, multiplier, perm, inverse, pos_ext,
                            valid_ext, bias, n_chunks_before, n_chunks_after,
                            causal, block)[0]


def _sorted_attention_fwd(q, keys, v, multiplier, perm, inverse, pos_ext,
                          valid_ext, bias, n_chunks_before, n_chunks_after,
                          causal, block):
  outputs, slse = _attend_and_unsort(
      q, keys, v, multiplier, perm, inverse, pos_ext, valid_ext, bias,
      n_chunks_before, n_chunks_after, causal, block)
  # q, keys and v are the same arrays in every round: a loop over rounds
  # keeps them once, not a sorted copy per round.
  return outputs, (q, keys, v, multiplier, perm, inverse, pos_ext, valid_ext,
                   bias, slse)


def _sorted_attention_bwd(n_chunks_before, n_chunks_after, causal, block,
                          residuals, grads):
  (q, keys, v, multiplier, perm, inverse, pos_ext, valid_ext, bias,
   slse) = residuals
  return _round_backward(
      q, keys, v, multiplier, perm, inverse, pos_ext, valid_ext, slse,
      *grads, n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after,
      causal=causal, block=block, bias=bias) + (None,) * 6


def _round_backward(q, keys, v, multiplier, perm, inverse, pos_ext, valid_ext,
                    slse, g_o, g_lse, *, n_chunks_before, n_chunks_after,
                    causal, block, g_lse_adds_delta=False, bias=None):
  """Gradients (dq [L, D], dkeys [L, D], dv [L, Dv]) of one round.

  g_o [L, Dv] and g_lse [L] are the cotangents of the round's o and lse in
  original order (see `chunked.chunked_attend_backward` for
  `g_lse_adds_delta`).
  """
  sq, k_ext, v_ext = _sorted_inputs(q, keys, v, perm, pos_ext)
  d_sq, d_k_ext, d_v_ext = chunked.chunked_attend_backward(
      sq, perm, k_ext, v_ext, pos_ext, valid_ext, slse,
      _rows(g_o, perm), _rows(g_lse, perm),
      n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after,
      causal=causal, dropout_multiplier=multiplier, chunks_per_block=block,
      g_slse_adds_delta=g_lse_adds_delta, logit_bias=bias)
  unsort = functools.partial(_unsort_extended, perm=perm, inverse=inverse,
                             pos_ext=pos_ext, n_before=n_chunks_before)
  return (sorting.undo_sort(d_sq, inverse, perm), unsort(d_k_ext),
          unsort(d_v_ext))


_sorted_attention.defvjp(_sorted_attention_fwd, _sorted_attention_bwd)


def _unsort_extended(d_ext, *, perm, inverse, pos_ext, n_before):
  """Gradient of x[pos_ext]: [E, C, ...] -> [L, ...] in original order.

  The round's own chunks are a permutation (undone by a gather with the
  inverse); the halo rows are added at their positions.
  """
  length = inverse.shape[0]
  n_chunks = length // d_ext.shape[1]
  own = d_ext[n_before:n_before + n_chunks].reshape(length, *d_ext.shape[2:])
  grad = sorting.undo_sort(own, inverse, perm)
  if d_ext.shape[0] == n_chunks:
    return grad
  halo = jnp.concatenate([d_ext[:n_before], d_ext[n_before + n_chunks:]])
  halo_pos = jnp.concatenate([pos_ext[:n_before],
                              pos_ext[n_before + n_chunks:]])
  return grad.at[halo_pos.reshape(-1)].add(
      halo.reshape(-1, *d_ext.shape[2:]), mode='promise_in_bounds')


def attend_rounds(*, in_turn, **inputs):
  """All R rounds combined (§2-5): `attend_rounds_in_turn` if `in_turn`,
  else every `attend_round` at once (`jax.vmap`) and `combine_rounds`.

  Args:
    in_turn: bool, the schedule (`schedule.round_schedule`).
    **inputs: `attend_round`'s keyword arguments.

  Returns:
    float[L, Dv] the combined output.
  """
  if in_turn:
    # One round at a time, combined as it finishes: memory of one round's
    # intermediates instead of R, in the backward pass too.
    return attend_rounds_in_turn(**inputs)
  n_rounds = inputs['sticker'].shape[0]
  o, lse = jax.vmap(functools.partial(attend_round, **inputs))(
      jnp.arange(n_rounds, dtype=jnp.int32))  # [R, L, Dv], [R, L]
  return combine.combine_rounds(o, lse)


def attend_rounds_in_turn(*, q, keys, v, mask, sticker, undo, chunk_len,
                          n_chunks_before, n_chunks_after, causal,
                          dropout_multiplier=None, chunks_per_block=None,
                          buckets=None, correction=NO_CORRECTION):
  """All R rounds one after another, each combined as it finishes (§2-5).

  The same arguments as `attend_round`, less the round index. Equals
  `combine_rounds` of every round's `attend_round` to a few float32 ulps
  (`combine.add_round`), in memory of one round: the forward pass keeps a
  running combine [L, Dv], not R round outputs; the backward pass keeps only
  the rounds' lse ([R, L], sorted and unsorted) and the output, and takes
  each round's gradients in turn.

  Returns:
    float[L, Dv] the combined output.
  """
  return _rounds_in_turn(q, keys, v, dropout_multiplier, sticker, undo, mask,
                         buckets, chunk_len, n_chunks_before, n_chunks_after,
                         causal, chunks_per_block, tuple(correction))


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9, 10, 11, 12, 13))
def _rounds_in_turn(q, keys, v, multiplier, sticker, undo, mask, buckets,
                    chunk_len, n_chunks_before, n_chunks_after, causal, block,
                    correction):
  """`attend_rounds_in_turn` with positional arguments: out [L, Dv]."""
  return _rounds_in_turn_fwd(q, keys, v, multiplier, sticker, undo, mask,
                             buckets, chunk_len, n_chunks_before,
                             n_chunks_after, causal, block, correction)[0]


def _layout_and_bias(h, sticker, undo, mask, buckets, chunk_len,
                     n_chunks_before, n_chunks_after, correction):
  """Round h's `_round_layout` plus its correction bias (or None)."""
  layout = _round_layout(h, sticker, undo, mask, chunk_len, n_chunks_before,
                         n_chunks_after)
  return layout + (_round_bias(h, sticker, undo, buckets, layout[2],
                               chunk_len, n_chunks_before, n_chunks_after,
                               correction),)


def _rounds_in_turn_fwd(q, keys, v, multiplier, sticker, undo, mask, buckets,
                        chunk_len, n_chunks_before, n_chunks_after, causal,
                        block, correction):
  def one_round(state, h):
    (o, lse), slse = _attend_and_unsort(
        q, keys, v, multiplier,
        *_layout_and_bias(h, sticker, undo, mask, buckets, chunk_len,
                          n_chunks_before, n_chunks_after, correction),
        n_chunks_before, n_chunks_after, causal, block)
    return combine.add_round(state, o, lse), (lse, slse)

  state, (lse, slse) = jax.lax.scan(
      one_round, combine.no_rounds(*v.shape, v.dtype),
      jnp.arange(sticker.shape[0], dtype=jnp.int32))
  out = combine.finish_rounds(state, lse)
  return out, (q, keys, v, multiplier, sticker, undo, mask, buckets, lse,
               slse, out)


def _rounds_in_turn_bwd(chunk_len, n_chunks_before, n_chunks_after, causal,
                        block, correction, residuals, g):
  (q, keys, v, multiplier, sticker, undo, mask, buckets, lse, slse,
   out) = residuals
  weights, g_lse = combine.finish_rounds_backward(lse, out, g)  # [R, L] each

  def one_round(grads, h):
    # The correction is recomputed from the sort, not kept per round.
    *layout, bias = _layout_and_bias(h, sticker, undo, mask, buckets,
                                     chunk_len, n_chunks_before,
                                     n_chunks_after, correction)
    round_grads = _round_backward(
        q, keys, v, multiplier, *layout,
        slse[h], g * weights[h][:, None], g_lse[h],
        n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after,
        causal=causal, block=block, g_lse_adds_delta=True, bias=bias)
    return tuple(a + b for a, b in zip(grads, round_grads)), None

  (d_q, d_keys, d_v), _ = jax.lax.scan(
      one_round, (jnp.zeros_like(q), jnp.zeros_like(keys), jnp.zeros_like(v)),
      jnp.arange(sticker.shape[0], dtype=jnp.int32))
  return d_q, d_keys, d_v, None, None, None, None, None


_rounds_in_turn.defvjp(_rounds_in_turn_fwd, _rounds_in_turn_bwd)
