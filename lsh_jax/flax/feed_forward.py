"""The Reformer's feed-forward block (Trax 1.4.1's `_FeedForward`), chunked.

  x [B, T, Dm] -> w1 -> dropout -> activation -> w2 -> dropout -> [B, T, Dm]

in Trax's order (the first dropout comes before the activation). Both
dropout masks are shared along the length (Trax's `shared_axes=[-2]`): one
per (example, feature), drawn once per call, so the chunked and unchunked
computations are the same function. With `chunk_size` > 0 the block runs
on chunks of that many positions in a loop whose body is rematerialised
(`jax.checkpoint`), so the [B, T, Dff] activations never exist for the whole
sequence, forward or backward (Trax's `Chunk` over a remat `Scan`).
"""
from typing import Callable, Union

import jax
import jax.numpy as jnp
from flax import nnx

from lsh_jax.core import validation
from lsh_jax.flax import dropout as dropout_lib

__all__ = ['activation_fn', 'ACTIVATIONS', 'fast_gelu', 'FeedForward', 'gelu']


def fast_gelu(x):
  """Trax's FastGelu: 0.5 x (1 + tanh(x 0.7978845608 (1 + 0.044715 x^2)))."""
  return 0.5 * x * (1 + jnp.tanh(x * 0.7978845608 * (1 + 0.044715 * x * x)))


def gelu(x):
  """Trax's Gelu: x / 2 (1 + erf(x / sqrt 2))."""
  return jax.nn.gelu(x, approximate=False)


# Trax's activation layers by name (`ff_activation=tl.Relu` -> 'Relu').
ACTIVATIONS = {
    'FastGelu': fast_gelu, 'Gelu': gelu, 'Relu': jax.nn.relu,
    'Elu': jax.nn.elu, 'Selu': jax.nn.selu, 'Sigmoid': jax.nn.sigmoid,
    'Tanh': jnp.tanh, 'Softplus': jax.nn.softplus,
    'LeakyRelu': lambda x: jnp.where(x >= 0, x, 0.01 * x),
}


def activation_fn(activation: Union[str, Callable]) -> Callable:
  """A Trax activation name (see ACTIVATIONS) or a callable -> callable."""
  if callable(activation):
    return activation
  if activation not in ACTIVATIONS:
    raise ValueError(f'ff_activation must be a callable or one of '
                     f'{sorted(ACTIVATIONS)}, got {activation!r}')
  return ACTIVATIONS[activation]


class FeedForward(nnx.Module):
  """w1 [Dm, Dff] and w2 [Dff, Dm] with biases, Trax's dropout and chunks."""

  def __init__(self, d_model: int, d_ff: int, *,
               activation: Union[str, Callable] = 'FastGelu',
               dropout: float = 0.0, chunk_size: int = 0,
               kernel_init: Callable = nnx.initializers.xavier_uniform(),
               rngs: nnx.Rngs):
    self.activation = activation_fn(activation)
    if not isinstance(chunk_size, int) or chunk_size < 0:
      raise ValueError(f'ff_chunk_size must be an int >= 0 (0: no chunks), '
                       f'got {chunk_size!r}')
    validation.check_positive_int('d_ff', d_ff)
    self.dropout, self.chunk_size = dropout, chunk_size
    self.w1 = nnx.Linear(d_model, d_ff, kernel_init=kernel_init, rngs=rngs)
    self.w2 = nnx.Linear(d_ff, d_model, kernel_init=kernel_init, rngs=rngs)

  def __call__(self, x: jax.Array, *, key=None) -> jax.Array:
    """x float[B, T, Dm] -> float[B, T, Dm]; `key=None`: no dropout."""
    if key is None or not self.dropout:
      hidden_keep = out_keep = None
    else:  # the masks, [B, 1, Dff] and [B, 1, Dm], shared by every chunk
      hidden_key, out_key = jax.random.split(key)
      shape = x.shape[:-2] + (1,)
      hidden_keep = dropout_lib.dropout(
          jnp.ones(shape + (self.w1.out_features,), x.dtype), self.dropout,
          hidden_key)
      out_keep = dropout_lib.dropout(
          jnp.ones(shape + (x.shape[-1],), x.dtype), self.dropout, out_key)

    def block(x):
      hidden = self.w1(x)
      if hidden_keep is not None:
        hidden = hidden * hidden_keep
      out = self.w2(self.activation(hidden))
      return out if out_keep is None else out * out_keep

    length, chunk = x.shape[-2], self.chunk_size
    if not chunk or chunk >= length:
      return block(x)
    n_chunks = -(-length // chunk)
    padded = jnp.pad(x, [(0, 0)] * (x.ndim - 2) +
                     [(0, n_chunks * chunk - length), (0, 0)])
    chunks = jnp.moveaxis(
        padded.reshape(x.shape[:-2] + (n_chunks, chunk, x.shape[-1])), -3, 0)
    out = jax.lax.map(jax.checkpoint(block), chunks)  # [M, ..., C, Dm]
    out = jnp.moveaxis(out, 0, -3).reshape(padded.shape)
    return out[..., :length, :]
