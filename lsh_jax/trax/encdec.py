"""Drop-in for Trax 1.4.1's `EncDecAttention` (importing this loads Trax).

Inputs: queries' input float[B, Lq, Dm] (the decoder), keys' and values'
input float[B, Lk, Dk] (the encoder), plus mask bool[B, Lk] (True = real
key) when `masked=True` (Trax's default). Output: float[B, Lq, Dm].
Weights per head, Trax's: (w_q [Dm, D], w_k [Dk, D], w_v [Dk, Dv],
w_o [Dv, Dm]); no state.

Computed by `lsh_jax.trax.kernels.encdec_head` (dense attention,
`lsh_jax.core.local.attend`), vmapped over heads and batch under one
`jax.jit`, attention and output dropout as Trax draws them.

Deliberate difference: padding keys are masked and the other keys
attended by their logits. Trax 1.4.1 offsets its key info by one before
its mask function, so it subtracts 1e9 from *every* logit (2e9 from
padding): in float32 the real keys' logits and their logsumexp all round
to -1e9, so every real key gets weight 1 and Trax's masked layer outputs
the sum of the real keys' values (docs/trax_family.md).
"""
import gin
import jax
import jax.numpy as jnp
import numpy as np
from trax.layers.research import efficient_attention

from lsh_jax.trax import kernels as trax_kernels
from lsh_jax.trax import layers as trax_layers

__all__ = ['EncDecAttention']


@gin.configurable(module='lsh_jax', denylist=['mode'])
class EncDecAttention(efficient_attention.EncDecAttention):
  """Encoder-decoder attention, drop-in for Trax's `EncDecAttention`."""

  def __init__(self, n_heads=2, d_qk=64, d_v=64, masked=True, mode='train',
               attention_dropout=0.0, output_dropout=0.0,
               n_parallel_heads=None, use_python_loop=False,
               use_reference_code=False):
    # Decoding needs nothing special here: mode='predict' runs as 'eval'.
    common = trax_layers._check_common(  # pylint: disable=protected-access
        n_heads=n_heads, d_qk=d_qk, d_v=d_v, causal=False, mode=mode,
        chunk_len=None, n_chunks_before=0, n_chunks_after=0,
        attention_dropout=attention_dropout, output_dropout=output_dropout,
        n_parallel_heads=n_parallel_heads,
        modes=('train', 'eval', 'predict'))
    super().__init__(
        n_heads=n_heads, d_qk=d_qk, d_v=d_v, masked=masked, mode=mode,
        attention_dropout=attention_dropout, output_dropout=output_dropout,
        n_parallel_heads=n_parallel_heads, use_python_loop=use_python_loop,
        use_reference_code=use_reference_code)
    self._spec = trax_kernels.Spec(kind='encdec', bias=False,
                                   share_qk=False, **common)

  def forward(self, inputs):
    output, new_state, _, _ = self.forward_and_or_backward(
        inputs, self.weights, self.state, self.rng)
    self.state = new_state
    return output

  def _unpack(self, inputs):
    """inputs -> (q_in [B, Lq, Dm], kv_in [B, Lk, Dk], mask or None)."""
    n_in = 3 if self._masked else 2
    if not isinstance(inputs, (tuple, list)) or len(inputs) != n_in:
      raise ValueError(f'EncDecAttention with masked={self._masked} takes '
                       f'{n_in} inputs (decoder activations, encoder '
                       f'activations{", mask" * (n_in == 3)})')
    q_in, kv_in = jnp.asarray(inputs[0]), jnp.asarray(inputs[1])
    if q_in.ndim != 3 or kv_in.ndim != 3 or q_in.shape[0] != kv_in.shape[0]:
      raise ValueError(f'the decoder and encoder activations must be float '
                       f'arrays [batch, length, depth] with one batch size, '
                       f'got shapes {q_in.shape} and {kv_in.shape}')
    mask = None
    if self._masked:
      mask = jnp.asarray(inputs[2])
      if mask.shape != kv_in.shape[:2]:
        raise ValueError(f'mask must have the encoder shape {kv_in.shape[:2]}'
                         f' (batch, encoder length), got {mask.shape}')
      mask = mask.astype(jnp.bool_)
    return q_in, kv_in, mask

  def forward_and_or_backward(self, inputs, weights, state, rng,
                              output_grad=None, compute_output=True,
                              update_state=True):
    """Trax's batched entry point: (output, new_state, inputs_grad,
    weights_grad), each None when not asked for."""
    q_in, kv_in, mask = self._unpack(inputs)
    if rng is None:
      if self._spec.attention_dropout or self._spec.output_dropout:
        raise ValueError('rng is required when dropout rates are > 0')
      rng = jax.random.PRNGKey(0)  # unused: nothing is random
    if output_grad is not None:
      output_grad = jnp.asarray(output_grad)
    out, new_state, x_grad, w_grad = trax_kernels.run(
        (q_in, kv_in), mask, tuple(weights), tuple(state), rng, output_grad,
        spec=self._spec, update_state=update_state)
    inputs_grad = None
    if output_grad is not None:
      inputs_grad = tuple(x_grad)
      if self._masked:
        inputs_grad += (np.zeros(mask.shape, jax.dtypes.float0),)
    return (out if compute_output else None,
            new_state if update_state else None, inputs_grad, w_grad)
