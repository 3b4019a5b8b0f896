"""Positional encodings of Trax 1.4.1's ReformerLM, as NNX modules.

  PositionalEncoding          pos_type=None (Trax's default): learned,
                              initialised to interleaved sines and cosines
  SinCosPositionalEncoding    pos_type='sin-cos': fixed [sin | cos]
  AxialPositionalEncoding     pos_type='axial': Trax's axial embeddings

Each adds its encoding of positions start, ..., start + T - 1 to x [B, T, Dm]
(`start` > 0 is for decoding a token at a time). Dropout follows Trax: the
learned encoding is dropped per feature (one mask for the whole batch, as
Trax's `dropout_broadcast_dims=(-2,)` on its [1, T, Dm] table gives), the
axial one per (example, feature); the sin-cos encoding has none (Trax's
`PositionalEncoder` passes it no rate). `key=None` means no dropout.
"""
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lsh_jax.core import validation
from lsh_jax.flax import dropout as dropout_lib

__all__ = [
    'AxialPositionalEncoding', 'PositionalEncoding',
    'SinCosPositionalEncoding', 'sinusoids',
]


def _check_length(name, length, start, max_len):
  if isinstance(start, int) and start + length > max_len:
    raise ValueError(f'the sequence (length {length}, from position {start}) '
                     f'is longer than {name} ({max_len})')


def sinusoids(max_len: int, depth: int) -> np.ndarray:
  """Trax's PositionalEncoding table: float32[max_len, depth], interleaved."""
  table = np.zeros((max_len, depth), np.float32)
  position = np.arange(max_len)[:, None]
  div_term = np.exp(np.arange(0, depth, 2) * -(np.log(10000.0) / depth))
  table[:, 0::2] = np.sin(position * div_term)
  table[:, 1::2] = np.cos(position * div_term)[:, :depth // 2]
  return table


class PositionalEncoding(nnx.Module):
  """Learned positions (`embedding` [max_len, Dm]), Trax's default.

  Initialised to Trax's sinusoids and trained like any parameter.
  """

  def __init__(self, max_len: int, d_model: int, *, dropout: float = 0.0):
    self.max_len = validation.check_positive_int('max_len', max_len)
    self.embedding = nnx.Param(jnp.asarray(sinusoids(max_len, d_model)))
    self.dropout = dropout

  def __call__(self, x, *, start=0, key=None):
    _check_length('max_len', x.shape[-2], start, self.max_len)
    table = jax.lax.dynamic_slice_in_dim(self.embedding[...], start,
                                         x.shape[-2])
    table = dropout_lib.dropout(table, self.dropout, key, (-2,))
    return x + table.astype(x.dtype)


class SinCosPositionalEncoding(nnx.Module):
  """Fixed sines then cosines (Trax's `SinCosPositionalEncoding`); no params.

  Trax, in training, starts the positions at a random offset in [0, 2048)
  every other step; this module always starts at `start` (Trax's eval).
  """

  def __call__(self, x, *, start=0, key=None):
    del key  # no dropout, as in Trax's PositionalEncoder
    depth = x.shape[-1]
    position = (jnp.arange(x.shape[-2]) + start)[:, None]
    div_term = jnp.exp(jnp.arange(0, depth, 2) *
                       -(jnp.log(10000.0) / depth))
    table = jnp.concatenate([jnp.sin(position * div_term),
                             jnp.cos(position * div_term)], axis=-1)
    return x + table[:, :depth].astype(x.dtype)


class AxialPositionalEncoding(nnx.Module):
  """Trax's axial embeddings: `axes[k]` [shape[k], d_embs[k]].

  Position p, written in the mixed radix `shape` as (i_0, ..., i_K-1),
  gets the concatenation of axes[0][i_0], ..., axes[K-1][i_K-1] (sum of
  d_embs = Dm). Any length up to prod(shape) (Trax needs exactly that
  length); initialised from N(0, 1) as Trax does.
  """

  def __init__(self, shape: Sequence[int], d_embs: Sequence[int],
               d_model: int, *, dropout: float = 0.0, rngs: nnx.Rngs):
    shape, d_embs = tuple(shape), tuple(d_embs)
    if not shape or len(shape) != len(d_embs):
      raise ValueError('pos_axial_shape and pos_d_axial_embs must be '
                       f'non-empty and of the same length, got {shape} and '
                       f'{d_embs}')
    for name, values in (('pos_axial_shape', shape),
                         ('pos_d_axial_embs', d_embs)):
      for value in values:
        validation.check_positive_int(name, value)
    if sum(d_embs) != d_model:
      raise ValueError(f'pos_d_axial_embs {d_embs} must sum to d_model '
                       f'({d_model})')
    self.shape, self.dropout = shape, dropout
    self.axes = nnx.List([
        nnx.Param(jax.random.normal(rngs.params(), (size, depth)))
        for size, depth in zip(shape, d_embs)])

  def table(self) -> jax.Array:
    """float[prod(shape), Dm]: every position's encoding."""
    parts = []
    for k, axis in enumerate(self.axes):
      view = [1] * len(self.shape) + [axis.shape[-1]]
      view[k] = self.shape[k]
      parts.append(jnp.broadcast_to(axis[...].reshape(view),
                                    self.shape + (axis.shape[-1],)))
    table = jnp.concatenate(parts, axis=-1)
    return table.reshape(math.prod(self.shape), -1)

  def __call__(self, x, *, start=0, key=None):
    _check_length('prod(pos_axial_shape)', x.shape[-2], start,
                  math.prod(self.shape))
    table = jax.lax.dynamic_slice_in_dim(self.table(), start, x.shape[-2])
    if key is not None and self.dropout:  # per (example, feature)
      table = dropout_lib.dropout(
          jnp.broadcast_to(table, x.shape), self.dropout, key, (-2,))
    return x + table.astype(x.dtype)
