"""(Example, head) pairs: jax.nn's [B, T, N, ...] as [P, T, ...], attended.

Pair p = b * N + n, the order of `multihead.head_keys`. Shared by the
one-device `lsh_self_attention` (its `lax.map` over pairs) and the
sequence-parallel head exchange, so both run each pair's attention with
the same program.
"""
import jax
import jax.numpy as jnp

from lsh_jax.core import attention

__all__ = ['attend_pairs', 'flat_keys', 'from_pairs', 'pair_mask', 'to_pairs']


def to_pairs(x: jax.Array) -> jax.Array:
  """[B, T, N, ...] -> [P, T, ...], pair p = b * N + n (`head_keys`' order)."""
  x = jnp.swapaxes(x, 1, 2)  # [B, N, T, ...]
  return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def flat_keys(keys: jax.Array) -> jax.Array:
  """Per-pair keys [B, N] (raw: uint32[B, N, 2]) -> [P] (raw: [P, 2])."""
  return keys.reshape((keys.shape[0] * keys.shape[1],) + keys.shape[2:])


def from_pairs(x: jax.Array, batch: int, heads: int) -> jax.Array:
  """[P, T, ...] -> [B, T, N, ...]: the inverse of `to_pairs`."""
  return jnp.swapaxes(x.reshape((batch, heads) + x.shape[1:]), 1, 2)


def pair_mask(mask: jax.Array, heads: int) -> jax.Array:
  """bool[B, T] -> bool[P, T]: each example's mask for each of its heads."""
  return jnp.repeat(mask, heads, axis=0)


def attend_pairs(query, value, keys, mask, dropout_keys, *, n_parallel_heads,
                 **static):
  """`lsh_attention` on each (example, head) pair, pairs on the leading axis.

  Args:
    query: float[P, T, H]; value: float[P, T, Hv].
    keys: the pairs' hash keys [P] (raw: uint32[P, 2]).
    mask: bool[P, T] or None.
    dropout_keys: keys [P] or None.
    n_parallel_heads: pairs per step of a `lax.map` (None: all at once).
    **static: `lsh_attention`'s static settings, already checked.

  Returns:
    float[P, T, Hv].
  """
  def one_head(args):  # q [T, H], v [T, Hv]
    q, v, hash_key, mask, dropout_key = args
    # Arguments are checked already: the entry point's own checks only see
    # tracers here and add no work to the compiled program.
    return attention.lsh_attention(q, v, hash_key=hash_key, mask=mask,
                                   dropout_key=dropout_key, **static)

  args = (query, value, keys, mask, dropout_keys)
  n = query.shape[0]
  at_once = n_parallel_heads or n
  if at_once >= n:
    return jax.vmap(one_head)(args)
  return jax.lax.map(one_head, args,
                     batch_size=None if at_once == 1 else at_once)
