"""Flax NNX local self-attention with separate keys: Trax's SelfAttention.

`LocalSelfAttention` computes what Trax 1.4.1's
`trax.layers.SelfAttention` (efficient_attention, `share_qk=False`)
computes: separate query and key projections, keys scaled by 1/sqrt(H),
a token may attend to itself, and with `chunk_len` each chunk of C queries
attends to its own chunk and `n_chunks_before` / `n_chunks_after`
neighbours (`lsh_jax.core.local.attend`, Trax's `attend`; windows wrap
around as Trax's `look_adjacent` does, which the causal mask hides).
`chunk_len=None` is dense attention over the whole sequence (Trax's
default). Padded *queries* are computed like any other (as in Trax); padded
keys are never attended to.

Parameters: `qk` holds the queries ([F, N, H] kernel; the name is the LSH
module's, so the three modules share one layout), `key` the keys
([F, N, H]), `value` ([F, N, Hv]) and `out` ([N, Hv, out_features]).
"""
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from lsh_jax import core
from lsh_jax.core import local
from lsh_jax.core import validation
from lsh_jax.flax import attention
from lsh_jax.flax import decoding

__all__ = ['LocalSelfAttention']


class LocalSelfAttention(attention.SelfAttention):
  """Chunked (local) or dense self-attention with separate keys.

  Args (besides `SelfAttention`'s, all keyword-only):
    chunk_len: C, or None for dense attention. Any length T works: the
      sequence is padded to a multiple of C inside (padding masked).
    n_chunks_before, n_chunks_after: neighbouring chunks each chunk sees.

  Example (identical tokens: every position gets the same output):

  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from lsh_jax.flax import LocalSelfAttention
  >>> layer = LocalSelfAttention(2, 8, chunk_len=4, n_chunks_before=1,
  ...                            causal=True, rngs=nnx.Rngs(0))
  >>> y = layer(jnp.ones((2, 10, 8)))
  >>> y.shape, bool(jnp.allclose(y, y[:, :1]))
  ((2, 10, 8), True)
  """

  def __init__(self, num_heads: int, in_features: int, *,
               chunk_len: Optional[int] = None, n_chunks_before: int = 0,
               n_chunks_after: int = 0, use_bias: bool = True,
               kernel_init: Callable = attention.default_kernel_init,
               bias_init: Callable = nnx.initializers.zeros_init(),
               dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs,
               **kwargs):
    projection = dict(use_bias=use_bias, kernel_init=kernel_init,
                      bias_init=bias_init, dtype=dtype,
                      param_dtype=param_dtype, rngs=rngs)
    super().__init__(num_heads, in_features, **projection, **kwargs)
    if chunk_len is not None:
      validation.check_chunking(chunk_len, n_chunks_before, n_chunks_after)
    elif n_chunks_before or n_chunks_after:
      raise ValueError('n_chunks_before and n_chunks_after need chunk_len '
                       f'(got {n_chunks_before}, {n_chunks_after} with '
                       'chunk_len=None, dense attention)')
    self.chunk_len = chunk_len
    self.n_chunks_before, self.n_chunks_after = n_chunks_before, n_chunks_after
    self.key = nnx.LinearGeneral(
        in_features, (num_heads, self.qk_features // num_heads), **projection)

  def __call__(self, x, mask=None, *, deterministic=None, rngs=None,
               decode=None):
    """Self-attention over x [B, T, F] (or [T, F]); see `SelfAttention`."""
    self._check_input(x)
    if self.decode if decode is None else decode:  # lsh_jax.flax.decoding
      return decoding.decode(self, x, mask)
    deterministic = bool(self.deterministic if deterministic is None
                         else deterministic)
    drop_rngs = rngs if rngs is not None else self.dropout_rngs
    attention_key = None
    if not deterministic and self.attention_dropout > 0:
      attention_key = self._dropout_key(drop_rngs)
    batched = x.ndim == 3
    if not batched:
      x = x[None]
      mask = None if mask is None else jnp.asarray(mask)[None]
    out = self._attend(self.qk(x), self.key(x), self.value(x), mask,
                       attention_key)
    out = self._output_dropout(self.out(out), deterministic, drop_rngs)
    return out if batched else out[0]

  def _attend(self, q, k, v, mask, dropout_key):
    """q, k [B, T, N, H], v [B, T, N, Hv], mask [B, T] or [T] -> [B, T, N, Hv]."""
    batch, length, heads = q.shape[:3]
    chunk = self.chunk_len
    padded = length if chunk is None else -(-length // chunk) * chunk
    valid = (jnp.ones((batch, length), bool) if mask is None else
             jnp.broadcast_to(jnp.asarray(mask, bool), (batch, length)))
    if padded != length:  # later keys: hidden by the causal mask or `valid`
      pad = lambda a: jnp.pad(a, [(0, 0), (0, padded - length)] +
                              [(0, 0)] * (a.ndim - 2))
      q, k, v, valid = pad(q), pad(k), pad(v), pad(valid)
    positions = jnp.arange(padded, dtype=jnp.int32)
    rate = 0.0 if dropout_key is None else self.attention_dropout
    keys = (jnp.zeros((batch, heads, 2), jnp.uint32) if dropout_key is None
            else core.head_keys(dropout_key, batch, heads))

    def one_head(q, k, v, kv_valid, key):
      return local.attend(
          q, local.scale_keys(k), v, q_pos=positions, kv_pos=positions,
          kv_valid=kv_valid, causal=self.causal, exclude_self=False,
          chunk_len=chunk, n_chunks_before=self.n_chunks_before,
          n_chunks_after=self.n_chunks_after, dropout_rate=rate,
          dropout_key=key)

    heads_fn = jax.vmap(one_head, in_axes=(1, 1, 1, None, 0), out_axes=1)
    out = jax.vmap(heads_fn)(q, k, v, valid, keys)
    return out[:, :length]
