"""Drop-ins for Trax 1.4.1's weightless LSH layers (importing this loads Trax).

`PureLSHSelfAttention` takes queries/keys and values computed outside,
one row per (example, head) pair, and returns the attention per pair:

  inputs: qk float[B * N, L, D], v float[B * N, L, Dv], plus mask bool[B, L]
    (True = real token) when `masked=True`; pair p = example * N + head.
  output: float[B * N, L, Dv].
  state: per pair (buckets int32[R * Lb], hash key uint32[2]), as
    `LSHSelfAttention` (Trax's layout); no weights.

It computes with `lsh_jax.trax.kernels.pure_head` (the LSH layer's
attention without its projections), all pairs vmapped under one `jax.jit`
(`n_parallel_heads` pairs per block; Trax's own layer supports only one).
As in Trax, no output dropout is applied (`output_dropout` is accepted and
ignored); attention dropout is. Any length L >= 1: a length that is not a
multiple of chunk_len is padded with masked positions, as in
`lsh_jax.trax.LSHSelfAttention`. mode='predict' (causal, not masked)
decodes as Trax's layer does (`lsh_jax.trax.predict`): state
(mem_end int32[], (qk float[P, Lm, D], v float[P, Lm, Dv]),
(buckets int32[P, R * Lm], buckets_idx int32[P], hash key uint32[P, 2])),
Trax's layout.

`PureLSHSelfAttentionWrapper` is Trax's (projections, the pure layer, merge
heads, output dense) with lsh_jax's pure layer as the default
`pure_lsh_implementation` (Trax's has no default). `MixedLSHSelfAttention`
is Trax's, with lsh_jax's pure layer for sequences longer than
`std_length` (Trax's dense `DotProduct(Causal)Attention` below it).
All three are gin-configurable as `lsh_jax.<ClassName>` (`mode` excluded).
"""
import gin
import jax
import jax.numpy as jnp
import numpy as np
from trax.layers.research import efficient_attention

from lsh_jax.core import padding
from lsh_jax.trax import kernels as trax_kernels
from lsh_jax.trax import layers as trax_layers
from lsh_jax.trax import predict as trax_predict

__all__ = [
    'MixedLSHSelfAttention', 'PureLSHSelfAttention',
    'PureLSHSelfAttentionWrapper',
]


@gin.configurable(module='lsh_jax', denylist=['mode'])
class PureLSHSelfAttention(efficient_attention.PureLSHSelfAttention):
  """Weightless LSH attention, drop-in for Trax's `PureLSHSelfAttention`."""

  def __init__(self, n_heads=2, d_qk=64, d_v=64, share_qk='unused',
               causal=False, masked=False, chunk_len=128, n_chunks_before=1,
               n_chunks_after=0, n_hashes=1, n_buckets=None, mode='train',
               predict_mem_len=2048, predict_drop_len=256,
               attention_dropout=0.0, output_dropout=0.0,
               max_length_for_buckets=None, bias=False, n_parallel_heads=1,
               use_python_loop=False, use_reference_code=False):
    common = trax_layers._check_common(  # pylint: disable=protected-access
        n_heads=n_heads, d_qk=d_qk, d_v=d_v, causal=causal, mode=mode,
        chunk_len=chunk_len, n_chunks_before=n_chunks_before,
        n_chunks_after=n_chunks_after, attention_dropout=attention_dropout,
        output_dropout=output_dropout, n_parallel_heads=n_parallel_heads,
        modes=trax_layers.LSH_MODES)
    if chunk_len is None:
      raise ValueError('chunk_len must be a positive int, got None')
    if mode == 'predict':
      predict_mem_len, predict_drop_len = trax_layers.check_predict(
          causal=causal, masked=masked, chunk_len=chunk_len,
          n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after,
          predict_mem_len=predict_mem_len, predict_drop_len=predict_drop_len)
    n_hashes, n_buckets, max_length_for_buckets = trax_layers.check_hash_args(
        n_hashes, n_buckets, max_length_for_buckets)
    super().__init__(
        n_heads=n_heads, d_qk=d_qk, d_v=d_v, share_qk=share_qk, causal=causal,
        masked=masked, chunk_len=chunk_len, n_chunks_before=n_chunks_before,
        n_chunks_after=n_chunks_after, n_hashes=n_hashes,
        n_buckets=list(n_buckets) if isinstance(n_buckets, tuple)
        else n_buckets, mode=mode, predict_mem_len=predict_mem_len,
        predict_drop_len=predict_drop_len,
        attention_dropout=attention_dropout, output_dropout=output_dropout,
        max_length_for_buckets=max_length_for_buckets, bias=bias,
        n_parallel_heads=n_parallel_heads, use_python_loop=use_python_loop,
        use_reference_code=use_reference_code)
    # The kernels see pairs as examples of one head; Trax applies no output
    # dropout in this layer.
    self._spec = trax_kernels.Spec(
        kind='pure', bias=False, n_hashes=n_hashes, n_buckets=n_buckets,
        max_length_for_buckets=max_length_for_buckets,
        predict_mem_len=predict_mem_len if mode == 'predict' else None,
        predict_drop_len=predict_drop_len if mode == 'predict' else None,
        **dict(common, n_heads=1, output_dropout=0.0))

  def forward(self, inputs):
    output, new_state, _ = self.forward_and_or_backward(
        inputs, self.state, self.rng, compute_output=True, update_state=True)
    self.state = new_state
    return output

  def _unpack(self, inputs):
    """inputs -> (qk [P, L, D], v [P, L, Dv], mask [B, L] or None)."""
    n_in = 3 if self._masked else 2
    if not isinstance(inputs, (tuple, list)) or len(inputs) != n_in:
      raise ValueError(f'PureLSHSelfAttention with masked={self._masked} '
                       f'takes {n_in} inputs (qk, v{", mask" * (n_in == 3)})'
                       f', got {inputs!r:.80}')
    qk, v = jnp.asarray(inputs[0]), jnp.asarray(inputs[1])
    if (qk.ndim != 3 or v.ndim != 3 or qk.shape[:2] != v.shape[:2] or
        qk.shape[0] % self._n_heads):
      raise ValueError(
          f'qk and v must be float arrays [batch * n_heads, length, depth] '
          f'with n_heads={self._n_heads}, got shapes {qk.shape} and '
          f'{v.shape}')
    mask = None
    if self._masked:
      mask = jnp.asarray(inputs[2])
      expected = (qk.shape[0] // self._n_heads, qk.shape[1])
      if mask.shape != expected:
        raise ValueError(f'mask must have shape {expected} (batch, length), '
                         f'got {mask.shape}')
      mask = mask.astype(jnp.bool_)
    return qk, v, mask

  def forward_and_or_backward(self, inputs, state, rng, output_grad=None,
                              compute_output=True, update_state=True):
    """Trax's batched entry point for this layer.

    Returns:
      (output or None, new_state or None, inputs_grad or None): Trax's
      triple; inputs_grad is (d qk, d v) (and a float0 zero for the mask).
    """
    qk, v, mask = self._unpack(inputs)
    if self._incremental:
      if output_grad is not None or not update_state:
        raise ValueError("mode='predict' has no backward pass (decoding "
                         "only); train with mode='train'")
      out, new_state = trax_predict.call(
          (qk, v), (), trax_layers.as_tuples(state), spec=self._spec)
      return out, new_state, None
    batch, length = qk.shape[0] // self._n_heads, qk.shape[1]
    pair_mask = None if mask is None else jnp.repeat(mask, self._n_heads,
                                                     axis=0)
    if output_grad is not None:
      output_grad = jnp.asarray(output_grad)
    (qk, v, output_grad), pair_mask = padding.pad_to_chunks(
        (qk, v, output_grad), pair_mask, chunk_len=self._chunk_len, axis=1)
    # pylint: disable-next=protected-access
    check_length = trax_layers.LSHSelfAttention._check_length
    check_length(self, length, qk.shape[1], state, update_state)
    if rng is None:
      if self._spec.attention_dropout:
        raise ValueError('rng is required when dropout rates are > 0')
      rng = jax.random.PRNGKey(0)  # unused: nothing is random
    out, new_state, x_grad, _ = trax_kernels.run(
        (qk, v), pair_mask, (), tuple(state), rng, output_grad,
        spec=self._spec, update_state=update_state)
    inputs_grad = None
    if output_grad is not None:
      inputs_grad = tuple(g[:, :length] for g in x_grad)
      if self._masked:
        inputs_grad += (np.zeros((batch, length), jax.dtypes.float0),)
    return (out[:, :length] if compute_output else None,
            new_state if update_state else None, inputs_grad)


@gin.configurable(module='lsh_jax', denylist=['mode'])
class PureLSHSelfAttentionWrapper(
    efficient_attention.PureLSHSelfAttentionWrapper):
  """Trax's wrapper; `pure_lsh_implementation` defaults to lsh_jax's."""

  def __init__(self, n_heads=1, d_qk=64, d_v=64, causal=False, masked=False,
               output_dropout=0.0, attention_dropout=0.0,
               pure_lsh_implementation=None, bias=True, mode='train',
               num_weights=3, sparsity=16, weights_format='model',
               rotary_position_emb=False, **pure_lsh_implementation_kwargs):
    super().__init__(
        n_heads=n_heads, d_qk=d_qk, d_v=d_v, causal=causal, masked=masked,
        output_dropout=output_dropout, attention_dropout=attention_dropout,
        pure_lsh_implementation=(pure_lsh_implementation or
                                 PureLSHSelfAttention),
        bias=bias, mode=mode, num_weights=num_weights, sparsity=sparsity,
        weights_format=weights_format,
        rotary_position_emb=rotary_position_emb,
        **pure_lsh_implementation_kwargs)


@gin.configurable(module='lsh_jax', denylist=['mode'])
class MixedLSHSelfAttention(efficient_attention.MixedLSHSelfAttention):
  """Trax's mixed layer with lsh_jax's `PureLSHSelfAttention` for long
  sequences (same arguments; Trax's dense attention up to std_length)."""

  def __init__(self, n_heads=1, d_qk=64, d_v=64, causal=False, masked=False,
               std_length=None, mode='train', output_dropout=0.0,
               attention_dropout=0.0, force_no_dropout=False,
               **pure_lsh_implementation_kwargs):
    kwargs = dict(n_heads=n_heads, d_qk=d_qk, d_v=d_v, causal=causal,
                  masked=masked, mode=mode)
    super().__init__(std_length=std_length, output_dropout=output_dropout,
                     attention_dropout=attention_dropout,
                     force_no_dropout=force_no_dropout,
                     **kwargs, **pure_lsh_implementation_kwargs)
    if force_no_dropout:
      attention_dropout = output_dropout = 0.0
    self._lsha = PureLSHSelfAttention(
        output_dropout=output_dropout, attention_dropout=attention_dropout,
        **kwargs, **pure_lsh_implementation_kwargs)
    # Trax's base constructor leaves the class without registered sublayers
    # (weights ()); only the attribute is replaced.
