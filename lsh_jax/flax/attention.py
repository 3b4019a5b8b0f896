"""Flax NNX self-attention modules: LSH (Reformer) and its dense twin.

Both modules hold the same parameters: one shared query/key projection
`qk` ([F, N, H] kernel), a value projection `value` ([F, N, Hv]) and an
output projection `out` ([N, Hv, out_features]) summing the heads, as in
Reformer (docs/algorithm.md §0, §6). So the weights of a trained
`LSHSelfAttention` load into a `SelfAttention` (exact attention with the
same shared-QK conventions) or into an `LSHSelfAttention` with other
`n_hashes`:

    nnx.update(other, nnx.state(trained, nnx.Param))

Randomness (NNX rng streams):
  'hash'     hash keys; falls back to 'default' when the Rngs has no 'hash'
             stream. Training (`deterministic=False`): a fresh key per call,
             as Trax re-hashes every step. Evaluation (`deterministic=True`,
             e.g. after `model.eval()`): the fixed key `hash_key` drawn at
             construction, so outputs are reproducible call to call. An
             explicit `rngs=` argument to `__call__` overrides both.
  'dropout'  attention dropout and output dropout, only when
             `deterministic=False` and a rate is > 0.

Shapes, in the package glossary (`lsh_jax`): x [B, T, F] or [T, F]
(F = in_features); N heads of depth H = qk_features / N (values
Hv = v_features / N).
"""
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import lsh_jax
from lsh_jax import core
from lsh_jax.core import chunked
from lsh_jax.core import dense
from lsh_jax.core import hashing
from lsh_jax.core import validation
from lsh_jax.flax import decoding

__all__ = ['default_kernel_init', 'LSHSelfAttention', 'SelfAttention']

default_kernel_init = nnx.initializers.lecun_normal()


def _key_from(rngs, stream):
  """One key from an Rngs (its `stream`), an RngStream or a key."""
  if isinstance(rngs, nnx.Rngs):
    return rngs[stream]()
  if isinstance(rngs, nnx.RngStream):
    return rngs()
  return rngs


class SelfAttention(nnx.Module):
  """Multi-head self-attention with shared queries and keys, exact (dense).

  The dense twin of `LSHSelfAttention`: the same parameters, and the
  attention `lsh_jax.full_attention` computes per head (length-normalised
  keys, a token attends to itself only when nothing else is visible,
  causal and padding masks), with attention dropout on the [T, T]
  probabilities of each (example, head) when training.

  Args:
    num_heads: N.
    in_features: F, the last axis of the input.
    qk_features: N * H, the shared query/key width (default in_features).
    v_features: N * Hv, the value width (default qk_features).
    out_features: the output width (default in_features).
    causal: a token does not attend to later tokens.
    dropout_rate: output dropout rate ('dropout' stream; the mask is
      shared over batch and length, one flag per feature, as Trax does).
    use_bias: biases in the three projections.
    kernel_init, bias_init: initialisers of the projections.
    deterministic: default mode (False: training), overridden per call or
      by `model.eval()` / `model.train()`.
    decode: default for the call's `decode` (incremental decoding with the
      cache of `init_cache`; lsh_jax.flax.decoding).
    dtype: computation dtype (default: inferred from inputs and params).
    param_dtype: parameter dtype.
    rngs: `nnx.Rngs` for the parameters ('params') and, when a rate is
      > 0, dropout ('dropout').

  Example (identical tokens: every position gets the same output):

  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from lsh_jax.flax import SelfAttention
  >>> layer = SelfAttention(2, 8, causal=True, rngs=nnx.Rngs(0))
  >>> y = layer(jnp.ones((3, 10, 8)))
  >>> y.shape, bool(jnp.allclose(y, y[:, :1]))
  ((3, 10, 8), True)
  """

  def __init__(self, num_heads: int, in_features: int, *,
               qk_features: Optional[int] = None,
               v_features: Optional[int] = None,
               out_features: Optional[int] = None, causal: bool = False,
               attention_dropout: float = 0.0, dropout_rate: float = 0.0,
               use_bias: bool = True,
               kernel_init: Callable = default_kernel_init,
               bias_init: Callable = nnx.initializers.zeros_init(),
               deterministic: Optional[bool] = False, decode: bool = False,
               dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    (num_heads, in_features, qk_features, v_features, out_features, depth,
     v_depth) = validation.check_head_features(
         num_heads, in_features, qk_features, v_features, out_features)
    self.num_heads, self.in_features = num_heads, in_features
    self.qk_features, self.v_features = qk_features, v_features
    self.out_features, self.causal = out_features, bool(causal)
    self.attention_dropout = validation.check_rate('attention_dropout',
                                                   attention_dropout)
    self.dropout_rate = validation.check_rate('dropout_rate', dropout_rate)
    self.deterministic, self.decode = deterministic, decode
    self.dtype = dtype
    self.cache = nnx.data(None)  # init_cache makes it
    common = dict(use_bias=use_bias, kernel_init=kernel_init,
                  bias_init=bias_init, dtype=dtype, param_dtype=param_dtype,
                  rngs=rngs)
    self.qk = nnx.LinearGeneral(in_features, (num_heads, depth), **common)
    self.value = nnx.LinearGeneral(in_features, (num_heads, v_depth),
                                   **common)
    self.out = nnx.LinearGeneral((num_heads, v_depth), out_features,
                                 axis=(-2, -1), **common)
    self.dropout_rngs = (rngs['dropout'].fork() if max(
        self.attention_dropout, self.dropout_rate) > 0 else nnx.data(None))

  def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None, *,
               deterministic: Optional[bool] = None,
               rngs: Union[nnx.Rngs, nnx.RngStream, None] = None,
               decode: Optional[bool] = None) -> jax.Array:
    """Self-attention over x [B, T, F] (or [T, F]).

    Args:
      x: float[B, T, in_features] or float[T, in_features].
      mask: bool[B, T] or bool[T], True for real tokens (not Flax's
        [B, N, T, T] attention mask: padding is a property of tokens here).
      deterministic: overrides the module's mode for this call.
      rngs: overrides the module's streams for this call.
      decode: overrides the module's `decode`: x are the next tokens of the
        sequence in the cache (`init_cache`); no mask, no dropout, the fixed
        `hash_key`.

    Returns:
      float[B, T, out_features] (or [T, out_features]); zeros (plus the
      output bias) at masked positions.
    """
    self._check_input(x)
    if self.decode if decode is None else decode:
      return decoding.decode(self, x, mask)
    deterministic = self.deterministic if deterministic is None else (
        deterministic)
    deterministic = bool(deterministic)
    qk, value = self.qk(x), self.value(x)  # [B, T, N, H], [B, T, N, Hv]
    drop_rngs = rngs if rngs is not None else self.dropout_rngs
    attention_key = None
    if not deterministic and self.attention_dropout > 0:
      attention_key = self._dropout_key(drop_rngs)
    out = self.attend(qk, value, mask, deterministic=deterministic, rngs=rngs,
                      dropout_key=attention_key)
    return self._output_dropout(self.out(out), deterministic, drop_rngs)

  def _output_dropout(self, out, deterministic, drop_rngs):
    """Output dropout: one flag per feature, shared over batch and length."""
    if deterministic or not self.dropout_rate > 0:
      return out
    keep = 1.0 - self.dropout_rate
    flags = jax.random.bernoulli(self._dropout_key(drop_rngs), keep,
                                 (out.shape[-1],))
    return jnp.where(flags, out / jnp.asarray(keep, out.dtype), 0)

  def init_cache(self, input_shape: Sequence[int], dtype=jnp.float32, *,
                 drop_len: Optional[int] = None) -> None:
    """Makes the cache for `decode=True`, as `nnx.MultiHeadAttention` does.

    Args:
      input_shape: (B, Lm, in_features) or (Lm, in_features): calls then take
        [B, T, F] (or [T, F]) and the cache keeps the last Lm positions
        (Trax's `predict_mem_len`).
      dtype: the cache's dtype.
      drop_len: positions dropped when the cache is full (Trax's
        `predict_drop_len`): default chunk_len (chunked modules), Lm // 2
        (dense), at most Lm.

    Raises:
      ValueError: a module that cannot decode (causal=False, LSH with
        n_chunks_after > 0) or bad sizes.
    """
    decoding.init_cache(self, input_shape, dtype, drop_len)

  def attend(self, qk, value, mask, *, deterministic, rngs, dropout_key):
    """Dense shared-QK attention per (example, head): [..., T, N, Hv]."""
    del deterministic, rngs  # dense attention draws no hash
    batched = qk.ndim == 4
    if not batched:
      qk, value = qk[None], value[None]
      mask = None if mask is None else jnp.asarray(mask)[None]
    batch, length, heads = qk.shape[:3]
    if dropout_key is None:
      keys = jnp.zeros((batch, heads), jnp.uint32)  # unused placeholders
    else:  # one [T, T] keep mask per (example, head), keys as head_keys
      keys = core.head_keys(dropout_key, batch, heads)

    def one_head(q, v, m, key):
      multiplier = None if dropout_key is None else (
          chunked.dropout_multiplier(key, self.attention_dropout, length,
                                     length, q.dtype))
      return dense.dense_attention(
          q, None, v, m, causal=self.causal, dropout_multiplier=multiplier)

    mask_axis = None if mask is None or jnp.ndim(mask) == 1 else 0
    per_example = jax.vmap(one_head, in_axes=(1, 1, None, 0), out_axes=1)
    out = jax.vmap(per_example, in_axes=(0, 0, mask_axis, 0))(
        qk, value, mask, keys)
    return out if batched else out[0]

  def _check_input(self, x):
    shape = tuple(np.shape(x))
    if len(shape) not in (2, 3) or shape[-1] != self.in_features:
      raise ValueError(f'x must have shape [batch, length, {self.in_features}]'
                       f' or [length, {self.in_features}] (in_features), got '
                       f'{shape}')

  def _dropout_key(self, rngs):
    if rngs is None:
      raise ValueError('deterministic is False and a dropout rate is > 0, '
                       'but no rngs: pass rngs=nnx.Rngs(dropout=...) to the '
                       'constructor or the call, or call with '
                       'deterministic=True')
    return _key_from(rngs, 'dropout')


class LSHSelfAttention(SelfAttention):
  """Reformer's LSH self-attention as an NNX module.

  `SelfAttention`'s projections and arguments, with the attention of
  `lsh_jax.lsh_self_attention` (per (example, head) hash keys split from
  one key per call; see the module docstring for the 'hash' stream).

  Args (besides `SelfAttention`'s):
    n_hashes: hash rounds R.
    n_buckets: even int, list of even factors, or None (automatic from
      the length and chunk_len).
    chunk_len: C.
    n_chunks_before, n_chunks_after: neighbouring chunks each chunk sees.
    attention_dropout: dropout rate on the attention probabilities.
    allow_duplicate_attention, attend_across_buckets: as in
      `lsh_jax.lsh_attention` (False: the Reformer paper's exact
      multi-round attention, per-bucket candidates; docs/paper.md).
    n_parallel_heads: (example, head) pairs computed at once, as in
      `lsh_jax.lsh_self_attention` (None: 1 on CPU, all on accelerators).
    mesh, sequence_axis, batch_axis: sequence parallelism, as in
      `lsh_jax.lsh_self_attention`: x [B, T, F] sharded along T over
      `sequence_axis` (and B over `batch_axis`) stays sharded through the
      projections; only the attention exchanges heads (docs/scaling.md).
      None: read from the activations' sharding when they carry one.

  Example (identical tokens: every position gets the same output; the
  hash keys come from the 'hash' stream, here Rngs' default):

  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from lsh_jax.flax import LSHSelfAttention
  >>> layer = LSHSelfAttention(2, 8, n_hashes=2, chunk_len=4,
  ...                          rngs=nnx.Rngs(0))
  >>> y = layer(jnp.ones((2, 12, 8)))
  >>> y.shape, bool(jnp.allclose(y, y[:, :1]))
  ((2, 12, 8), True)
  """

  def __init__(self, num_heads: int, in_features: int, *,
               n_hashes: int = 2,
               n_buckets: hashing.NBuckets = None,
               chunk_len: int = 64, n_chunks_before: int = 1,
               n_chunks_after: int = 0, rngs: nnx.Rngs,
               allow_duplicate_attention: bool = True,
               attend_across_buckets: bool = True,
               n_parallel_heads: Optional[int] = None,
               mesh: Optional[jax.sharding.Mesh] = None,
               sequence_axis: Optional[str] = None,
               batch_axis: Union[str, Sequence[str], None] = None, **kwargs):
    super().__init__(num_heads, in_features, rngs=rngs, **kwargs)
    # Static configuration, not state: a Mesh is not an array.
    self.layout = nnx.static(dict(mesh=mesh, sequence_axis=sequence_axis,
                                  batch_axis=batch_axis))
    for name, value in validation.check_lsh_settings(
        n_hashes=n_hashes, n_buckets=n_buckets, chunk_len=chunk_len,
        n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after,
        allow_duplicate_attention=allow_duplicate_attention,
        attend_across_buckets=attend_across_buckets,
        n_parallel_heads=n_parallel_heads).items():
      setattr(self, name, value)
    stream = rngs['hash']  # 'default' when the Rngs has no 'hash' stream
    self.hash_key = nnx.Variable(stream())  # evaluation's fixed key
    self.hash_rngs = stream.fork()  # training's fresh keys

  def attend(self, qk, value, mask, *, deterministic, rngs, dropout_key):
    if rngs is not None:
      hash_key = _key_from(rngs, 'hash')
    elif deterministic:
      hash_key = self.hash_key[...]
    else:
      hash_key = self.hash_rngs()
    return lsh_jax.lsh_self_attention(
        qk, value, hash_key=hash_key, n_buckets=self.n_buckets,
        n_hashes=self.n_hashes, chunk_len=self.chunk_len,
        n_chunks_before=self.n_chunks_before,
        n_chunks_after=self.n_chunks_after, causal=self.causal, mask=mask,
        attention_dropout=self.attention_dropout if dropout_key is not None
        else 0.0, dropout_key=dropout_key,
        allow_duplicate_attention=self.allow_duplicate_attention,
        attend_across_buckets=self.attend_across_buckets,
        n_parallel_heads=self.n_parallel_heads, **self.layout)
