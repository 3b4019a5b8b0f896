"""Sorting tokens by bucket, and undoing the sort (SPEC.md §2 and §4).

Names follow Trax: a leading `s` marks arrays in sorted order (`sq`, `sv`),
`sticker` maps sorted slots to positions and `undo_sort` is its inverse.
Both permutations are gathers whose gradient is a gather by the other one
(no scatter in the backward pass).
"""
import jax
import jax.numpy as jnp


def _sort_round(buckets):
  """One round: int[L] buckets -> (sticker int32[L], undo_sort int32[L])."""
  # A stable sort by bucket is a sort by the key (bucket, position); unlike
  # Trax's `L * bucket + position` key it cannot overflow int32 at long L.
  sticker = jnp.argsort(buckets, stable=True).astype(jnp.int32)
  positions = jnp.arange(buckets.shape[0], dtype=jnp.int32)
  undo_sort = jnp.zeros_like(sticker).at[sticker].set(
      positions, unique_indices=True)
  return sticker, undo_sort


def sort_buckets(buckets):
  """Per round, positions in (bucket, position) order and the inverse.

  Args:
    buckets: int[R, L] bucket ids (with or without round offsets).

  Returns:
    (sticker, undo_sort), both int32[R, L]: `sticker[h, i]` is the position
    in sorted slot i of round h; `undo_sort[h]` is the inverse permutation.
  """
  buckets = jax.lax.stop_gradient(jnp.asarray(buckets))
  return jax.vmap(_sort_round)(buckets)


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


def undo_sort(x_sorted, undo, sticker):
  """Returns one round's values to original order (SPEC.md §4).

  Args:
    x_sorted: [L, ...] values in sorted order (`so` [L, Dv] or `slse` [L]).
    undo: int32[L] the round's `undo_sort` permutation.
    sticker: int32[L] the round's `sticker` (used by the gradient).

  Returns:
    [L, ...] values in original order.
  """
  return permute(x_sorted, undo, sticker)
