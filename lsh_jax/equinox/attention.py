"""Reformer's LSH self-attention as an Equinox module.

Equinox's conventions (`equinox.nn.MultiheadAttention`): the module takes
one sequence x [T, F] and `jax.vmap` makes batches; randomness comes from
the keyword-only `key`; `inference=True` (or `eqx.nn.inference_mode`)
turns dropout off. The computation is `lsh_jax.flax.LSHSelfAttention`'s on
one sequence, with the same arguments and parameters laid out as
`eqx.nn.Linear` holds them:

  qk_proj      F -> N * H, the shared query/key projection (Flax's `qk`
               kernel [F, N, H] is `qk_proj.weight.T.reshape(F, N, H)`)
  value_proj   F -> N * Hv
  output_proj  N * Hv -> out_features, summing the heads

Hash keys: a call with `key` hashes with a key split from it (training:
fresh rotations every step, as Trax re-hashes); without, with the fixed
`hash_key` drawn at construction (evaluation: the same outputs call to
call). Head n hashes with `jax.random.split(hash key, N)[n]`, as the Flax
module does for one sequence. `hash_key` is a key array, not an inexact
one: `eqx.filter_grad` and optimisers filtering with `eqx.is_inexact_array`
leave it alone.

Shapes: x [T, F] (F = in_features), N heads of depth H = qk_features / N,
values Hv = v_features / N.
"""
from typing import Optional, Union

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray

import lsh_jax
from lsh_jax.core import hashing
from lsh_jax.core import validation

__all__ = ['LSHSelfAttention']


class LSHSelfAttention(eqx.Module):
  """LSH self-attention with shared queries and keys, one sequence.

  Args:
    num_heads, in_features, qk_features, v_features, out_features,
      n_hashes, n_buckets, chunk_len, n_chunks_before, n_chunks_after,
      causal, attention_dropout, dropout_rate, use_bias,
      allow_duplicate_attention, attend_across_buckets, n_parallel_heads:
      as in `lsh_jax.flax.LSHSelfAttention` (N heads of depth
      H = qk_features / N over F = in_features).
    inference: default for the call's `inference` (True: no dropout).
    dtype: the parameters' dtype (default float32, float64 under x64).
    key: PRNG key for the parameters and the fixed `hash_key`.
  """

  qk_proj: eqx.nn.Linear
  value_proj: eqx.nn.Linear
  output_proj: eqx.nn.Linear
  hash_key: PRNGKeyArray
  num_heads: int = eqx.field(static=True)
  in_features: int = eqx.field(static=True)
  qk_features: int = eqx.field(static=True)
  v_features: int = eqx.field(static=True)
  out_features: int = eqx.field(static=True)
  n_hashes: int = eqx.field(static=True)
  n_buckets: Union[int, tuple, None] = eqx.field(static=True)
  chunk_len: int = eqx.field(static=True)
  n_chunks_before: int = eqx.field(static=True)
  n_chunks_after: int = eqx.field(static=True)
  causal: bool = eqx.field(static=True)
  attention_dropout: float = eqx.field(static=True)
  dropout_rate: float = eqx.field(static=True)
  allow_duplicate_attention: bool = eqx.field(static=True)
  attend_across_buckets: bool = eqx.field(static=True)
  n_parallel_heads: Optional[int] = eqx.field(static=True)
  inference: bool

  def __init__(self, num_heads: int, in_features: int, *,
               qk_features: Optional[int] = None,
               v_features: Optional[int] = None,
               out_features: Optional[int] = None, n_hashes: int = 2,
               n_buckets: hashing.NBuckets = None,
               chunk_len: int = 64, n_chunks_before: int = 1,
               n_chunks_after: int = 0, causal: bool = False,
               attention_dropout: float = 0.0, dropout_rate: float = 0.0,
               use_bias: bool = True, allow_duplicate_attention: bool = True,
               attend_across_buckets: bool = True,
               n_parallel_heads: Optional[int] = None,
               inference: bool = False, dtype=None, key: PRNGKeyArray):
    (num_heads, in_features, qk_features, v_features, out_features, _,
     _) = validation.check_head_features(
         num_heads, in_features, qk_features, v_features, out_features)
    self.attention_dropout = validation.check_rate('attention_dropout',
                                                   attention_dropout)
    self.dropout_rate = validation.check_rate('dropout_rate', dropout_rate)
    for name, value in validation.check_lsh_settings(
        n_hashes=n_hashes, n_buckets=n_buckets, chunk_len=chunk_len,
        n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after,
        allow_duplicate_attention=allow_duplicate_attention,
        attend_across_buckets=attend_across_buckets,
        n_parallel_heads=n_parallel_heads).items():
      setattr(self, name, value)
    qk_key, v_key, out_key, self.hash_key = jax.random.split(key, 4)
    linear = lambda n_in, n_out, k: eqx.nn.Linear(
        n_in, n_out, use_bias=use_bias, dtype=dtype, key=k)
    self.qk_proj = linear(in_features, qk_features, qk_key)
    self.value_proj = linear(in_features, v_features, v_key)
    self.output_proj = linear(v_features, out_features, out_key)
    self.num_heads, self.in_features = num_heads, in_features
    self.qk_features, self.v_features = qk_features, v_features
    self.out_features, self.causal = out_features, bool(causal)
    self.inference = inference

  def __call__(self, x: Float[Array, 'T F'],
               mask: Optional[Bool[Array, ' T']] = None, *,
               key: Optional[PRNGKeyArray] = None,
               inference: Optional[bool] = None) -> Float[Array, 'T out']:
    """Self-attention over one sequence.

    Args:
      x: float[T, in_features] (`jax.vmap` for batches).
      mask: bool[T] or None, True for real tokens.
      key: draws the hash rotations and dropout; None: the fixed
        `hash_key` (then dropout must be off).
      inference: overrides the module's `inference` (True: no dropout).

    Returns:
      float[T, out_features]; the output bias at masked positions.
    """
    shape = tuple(np.shape(x))
    if len(shape) != 2 or shape[-1] != self.in_features:
      raise ValueError(f'x must have shape [length, {self.in_features}] '
                       f'(in_features): one sequence, jax.vmap for batches; '
                       f'got {shape}')
    inference = self.inference if inference is None else inference
    dropping = not inference and max(self.attention_dropout,
                                     self.dropout_rate) > 0
    if key is None:
      if dropping:
        raise ValueError('dropout is on (inference=False and a rate > 0): '
                         'pass key=..., or call with inference=True')
      hash_key, attention_key, output_key = self.hash_key, None, None
    else:
      hash_key, attention_key, output_key = jax.random.split(key, 3)
    length = shape[0]
    heads = lambda y: y.reshape(length, self.num_heads, -1)  # [T, N, .]
    qk = heads(jax.vmap(self.qk_proj)(x))
    value = heads(jax.vmap(self.value_proj)(x))
    attention_rate = self.attention_dropout if dropping else 0.0
    out = lsh_jax.lsh_self_attention(
        qk, value, hash_key=hash_key, n_buckets=self.n_buckets,
        n_hashes=self.n_hashes, chunk_len=self.chunk_len,
        n_chunks_before=self.n_chunks_before,
        n_chunks_after=self.n_chunks_after, causal=self.causal, mask=mask,
        attention_dropout=attention_rate,
        dropout_key=attention_key if attention_rate else None,
        allow_duplicate_attention=self.allow_duplicate_attention,
        attend_across_buckets=self.attend_across_buckets,
        n_parallel_heads=self.n_parallel_heads)  # [T, N, Hv]
    out = jax.vmap(self.output_proj)(out.reshape(length, -1))
    if dropping and self.dropout_rate > 0:
      keep = 1.0 - self.dropout_rate
      flags = jax.random.bernoulli(output_key, keep, (out.shape[-1],))
      out = jnp.where(flags, out / jnp.asarray(keep, out.dtype), 0)
    return out
