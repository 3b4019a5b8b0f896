"""Sorting tokens by bucket and undoing the sort (docs/algorithm.md §2, §4).

Names follow Trax: a leading `s` marks arrays in sorted order (`sq`, `sv`),
`sticker` maps sorted slots to positions and `undo_sort` is its inverse.
Both permutations are gathers whose gradient is a gather by the other one
(no scatter in the backward pass).
"""
import jax
import jax.numpy as jnp

__all__ = ['permute', 'sort_buckets', 'undo_sort']


_INT32_MAX = 2**31 - 1


def _inverse(perm):
  """The inverse of a permutation int32[L]."""
  positions = jnp.arange(perm.shape[0], dtype=jnp.int32)
  return jnp.zeros_like(perm).at[perm].set(positions, unique_indices=True)


def _sort_round(buckets, n_ids):
  """One round: int[L] buckets -> (sticker int32[L], undo_sort int32[L])."""
  length = buckets.shape[0]
  if n_ids is not None and n_ids * length <= _INT32_MAX:
    # The key L * bucket + position is unique, so sorting keys alone (no
    # index payload, no stability needed) gives the (bucket, position)
    # order; XLA sorts one int32 operand ~4x faster than an argsort.
    positions = jnp.arange(length, dtype=jnp.int32)
    keys = jnp.sort(buckets.astype(jnp.int32) * length + positions)
    sticker = keys % length
  else:
    # Keys could overflow int32: a stable argsort by bucket gives the same
    # (bucket, position) order.
    sticker = jnp.argsort(buckets, stable=True).astype(jnp.int32)
  return sticker, _inverse(sticker)


def sort_buckets(buckets: jax.Array, *, n_ids: int | None = None,
                 ) -> tuple[jax.Array, jax.Array]:
  """Per round, positions in (bucket, position) order and the inverse.

  Args:
    buckets: int[R, L] bucket ids (with or without round offsets).
    n_ids: a static bound on the bucket ids (all ids < n_ids), or None.
      Only speed depends on it: with a bound, one packed int32 key is sorted.

  Returns:
    (sticker, undo_sort), both int32[R, L]: `sticker[h, i]` is the position
    in sorted slot i of round h; `undo_sort[h]` is the inverse permutation.
  """
  buckets = jax.lax.stop_gradient(jnp.asarray(buckets))
  return jax.vmap(lambda b: _sort_round(b, n_ids))(buckets)


@jax.custom_vjp
def permute(x, perm, inverse):
  """`x[perm]` along axis 0, with gradient `g[inverse]`.

  Args:
    x: [L, ...] values.
    perm: int[L] a permutation of range(L).
    inverse: int[L] its inverse permutation.

  Returns:
    [L, ...] the permuted values.
  """
  # A permutation is in bounds and has unique indices: telling XLA so spares
  # the clamping and lets it skip the scatter-add in any transpose.
  return x.at[perm].get(mode='promise_in_bounds', unique_indices=True)


def _permute_fwd(x, perm, inverse):
  return permute(x, perm, inverse), (perm, inverse)


def _permute_bwd(residuals, g):
  perm, inverse = residuals
  # out[i] = x[perm[i]]  =>  dx[j] = g[inverse[j]]: a gather, not a scatter.
  return permute(g, inverse, perm), None, None


permute.defvjp(_permute_fwd, _permute_bwd)


def undo_sort(x_sorted: jax.Array, undo: jax.Array,
              sticker: jax.Array) -> jax.Array:
  """Returns one round's values to original order (docs/algorithm.md §4).

  Args:
    x_sorted: [L, ...] values in sorted order (`so` [L, Dv] or `slse` [L]).
    undo: int32[L] the round's `undo_sort` permutation.
    sticker: int32[L] the round's `sticker` (used by the gradient).

  Returns:
    [L, ...] values in original order.
  """
  return permute(x_sorted, undo, sticker)
