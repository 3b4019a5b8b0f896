"""Dropout with a mask shared along some axes, as Trax's `Dropout` draws it."""
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

__all__ = ['dropout']


def dropout(x: jax.Array, rate: float, key: Optional[jax.Array],
            shared_axes: Sequence[int] = ()) -> jax.Array:
  """x with entries dropped at `rate` and the rest scaled by 1 / (1 - rate).

  The keep mask has size 1 along `shared_axes` (Trax's `shared_axes`, e.g.
  (-2,): one mask per example and feature, shared along the length).
  `key=None` or rate 0 returns x unchanged (evaluation).
  """
  if key is None or not rate:
    return x
  shape = list(x.shape)
  for axis in shared_axes:
    shape[axis] = 1
  keep = 1.0 - rate
  flags = jax.random.bernoulli(key, keep, tuple(shape))
  return jnp.where(flags, x / jnp.asarray(keep, x.dtype), 0)
