"""Drop-in Trax layers computing with lsh_jax (importing this loads Trax).

`LSHSelfAttention` and `SelfAttention` take exactly the constructor arguments
of Trax 1.4.1's `trax.layers.LSHSelfAttention` / `trax.layers.SelfAttention`,
with the same defaults, and reuse Trax's own weight and state creation, so a
model's weights and state move between the two unchanged. The computation is
`lsh_jax.trax.kernels.run`: lsh_jax's jit-compiled functions, vmapped over
heads and batch; no call into Trax's attention code.

Inputs: x float[B, L, d_model], plus mask bool[B, L] (True = real token)
when `masked=True`; NumPy or JAX arrays. Output: float[B, L, d_model].

Arguments Trax has and lsh_jax treats differently:
  n_parallel_heads: how many (example, head) pairs are computed at once, as
    in Trax: None (or >= batch * n_heads) vmaps all of them in one step; k
    runs blocks of k pairs, each vmapped, one after another in a
    `lax.fori_loop` -- the attention memory of k heads. Trax's LSH default
    is 1. LSHSelfAttention's q/v/output projections are computed for all
    pairs around the loop (`lsh_jax.trax.projected`).
  use_python_loop: accepted and ignored; blocks always run in one
    `lax.fori_loop` (Trax unrolls them in Python when True, a debug aid).
  use_reference_code: Trax switches to its readable per-head Python loop
    and plain autodiff. Here it turns off the custom backward pass: gradients
    come from JAX autodiff through the forward pass, which stores its
    intermediates (more memory, same values). The default custom backward
    recomputes the forward pass per block from the stored buckets and takes
    its vjp there (what reversible layers call; the Reformer memory saving).
  mode='predict' (causal=True, masked=False): incremental decoding with
    Trax's state layout and algorithm, one jit-compiled call per step:
    `lsh_jax.trax.predict` (LSH), `lsh_jax.trax.predict_dense` (dense).
Any length L >= 1 in train/eval: when L is not a multiple of chunk_len the
layer pads to the next multiple with masked positions (padding goes to its
own bucket and is never attended to) and strips the padding from the
output; the state then holds buckets for the padded length. Lengths that
are multiples run exactly as in Trax.
Deliberate difference (docs/algorithm.md §3): padding is masked at every
position; Trax 1.4.1 leaves padding at positions 0 and 1 visible.

Both classes are gin-configurable as `lsh_jax.LSHSelfAttention` and
`lsh_jax.SelfAttention` (`mode` excluded, as in Trax).
"""
import dataclasses

import gin
import jax
import jax.numpy as jnp
import numpy as np
from trax.layers.research import efficient_attention

import lsh_jax
from lsh_jax.core import padding
from lsh_jax.trax import kernels as trax_kernels
from lsh_jax.trax import predict as trax_predict
from lsh_jax.trax import predict_dense as trax_predict_dense
from lsh_jax.core import validation

__all__ = [
    'as_tuples', 'check_hash_args', 'check_predict', 'LSH_MODES',
    'LSHSelfAttention', 'SelfAttention',
]

_MODES = ('train', 'eval')
LSH_MODES = ('train', 'eval', 'predict')  # the layers that decode


def _check_common(*, n_heads, d_qk, d_v, causal, mode, chunk_len,
                  n_chunks_before, n_chunks_after, attention_dropout,
                  output_dropout, n_parallel_heads, modes=_MODES):
  """Checks the arguments both layers share; returns the clean values."""
  if mode not in modes:
    if mode == 'predict':
      raise ValueError("mode='predict' (incremental decoding) is not "
                       "supported by this layer; use mode='eval' here")
    names = ', '.join(repr(m) for m in modes)
    raise ValueError(f'mode must be one of {names}, got {mode!r}')
  for name, value in (('n_heads', n_heads), ('d_qk', d_qk), ('d_v', d_v)):
    validation.check_positive_int(name, value)
  if chunk_len is not None:
    validation.check_positive_int('chunk_len', chunk_len)
  validation.check_non_negative_int('n_chunks_before', n_chunks_before)
  validation.check_non_negative_int('n_chunks_after', n_chunks_after)
  if n_parallel_heads:
    n_parallel_heads = validation.check_positive_int('n_parallel_heads',
                                                     n_parallel_heads)
    if (n_parallel_heads % n_heads) and (n_heads % n_parallel_heads):
      raise ValueError(f'n_parallel_heads must be a multiple or a divisor of '
                       f'n_heads={n_heads}, got {n_parallel_heads}')
  train = mode == 'train'
  return dict(
      n_heads=n_heads, causal=bool(causal),
      n_parallel_heads=n_parallel_heads or None, chunk_len=chunk_len,
      n_chunks_before=n_chunks_before,
      n_chunks_after=n_chunks_after,
      attention_dropout=(validation.check_rate(
          'attention_dropout', attention_dropout) if train else 0.0),
      output_dropout=(validation.check_rate('output_dropout', output_dropout)
                      if train else 0.0))


class _Computation:
  """The forward and backward passes shared by both layers (a mixin)."""

  def _unpack(self, inputs):
    """inputs -> (x [B, L, Dm] jnp, mask [B, L] bool or None, single)."""
    single = not isinstance(inputs, (tuple, list))
    inputs = (inputs,) if single else tuple(inputs)
    n_in = 2 if self._masked else 1
    if len(inputs) != n_in:
      raise ValueError(f'{type(self).__name__} with masked={self._masked} '
                       f'takes {n_in} input(s), got {len(inputs)}')
    x = jnp.asarray(inputs[0])
    if x.ndim != 3 or not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f'x must be a float array [batch, length, d_model], '
                       f'got shape {x.shape} and dtype {x.dtype}')
    mask = None
    if self._masked:
      mask = jnp.asarray(inputs[1])
      if mask.shape != x.shape[:2]:
        raise ValueError(f'mask must have shape {x.shape[:2]} (batch, length)'
                         f', got {mask.shape}')
      if not (mask.dtype == jnp.bool_ or jnp.issubdtype(mask.dtype,
                                                        jnp.integer)):
        raise ValueError(f'mask must be boolean (True = real token), got '
                         f'{mask.dtype}')
      mask = mask.astype(jnp.bool_)
    return x, mask, single

  def _check_length(self, length, padded, state, update_state):
    """Hook for length checks against the state (LSH overrides it)."""

  def _pad(self, x, mask, output_grad):
    """Pads x [B, L, Dm] to a multiple of chunk_len with masked positions.

    Returns (x, mask or None, output_grad or None), padded; unchanged when
    there are no chunks or L is a multiple of chunk_len.
    """
    if output_grad is not None:
      output_grad = jnp.asarray(output_grad)
    if self._spec.chunk_len is None:
      return x, mask, output_grad
    (x, output_grad), mask = padding.pad_to_chunks(
        (x, output_grad), mask, chunk_len=self._spec.chunk_len, axis=1)
    return x, mask, output_grad

  def _predict(self, x, weights, state, output_grad, update_state):
    raise NotImplementedError  # only LSHSelfAttention has a predict mode

  def forward(self, inputs):
    output, new_state, _, _ = self.forward_and_or_backward(
        inputs, self.weights, self.state, self.rng, compute_output=True,
        update_state=True)
    self.state = new_state
    return output

  @property
  def has_backward(self):
    return not self._use_reference_code

  def backward(self, inputs, output, grad, weights, state, new_state, rng=None,
               **kwargs):
    """Custom backward pass: recompute the forward pass from `new_state`'s
    buckets block by block and take its vjp (Trax's contract)."""
    del output, state, kwargs
    _, _, inputs_grad, weights_grad = self.forward_and_or_backward(
        inputs, weights, new_state, rng, output_grad=grad,
        compute_output=False, update_state=False)
    return inputs_grad, weights_grad

  def forward_and_or_backward(self, inputs, weights, state, rng,
                              output_grad=None, compute_output=True,
                              update_state=True):
    """Trax's batched entry point (ReversibleHalfResidual calls it).

    Returns:
      (output or None, new_state or None, inputs_grad or None, weights_grad
      or None), as Trax's `forward_and_or_backward`.
    """
    x, mask, single = self._unpack(inputs)
    if getattr(self, '_incremental', False):
      return self._predict(x, weights, state, output_grad, update_state)
    length = x.shape[1]
    x, mask, output_grad = self._pad(x, mask, output_grad)
    self._check_length(length, x.shape[1], state, update_state)
    if rng is None:
      if self._spec.attention_dropout or self._spec.output_dropout:
        raise ValueError('rng is required when dropout rates are > 0')
      rng = jax.random.PRNGKey(0)  # unused: nothing is random
    out, new_state, x_grad, w_grad = trax_kernels.run(
        x, mask, tuple(weights), tuple(state), rng, output_grad,
        spec=self._spec, update_state=update_state)
    out = out[:, :length]
    inputs_grad = None
    if output_grad is not None:
      x_grad = x_grad[:, :length]
      inputs_grad = x_grad if single else (
          x_grad, np.zeros((x.shape[0], length), jax.dtypes.float0))
    return (out if compute_output else None,
            new_state if update_state else None, inputs_grad, w_grad)


def check_hash_args(n_hashes, n_buckets, max_length_for_buckets):
  """The LSH layers' hashing arguments, checked (ValueError naming the
  argument); factorised `n_buckets` come back as a tuple (hashable, for the
  kernels' static spec)."""
  n_hashes = validation.check_positive_int('n_hashes', n_hashes)
  if n_buckets is not None:
    n_buckets = validation.check_n_buckets(n_buckets)
  if max_length_for_buckets is not None:
    max_length_for_buckets = validation.check_positive_int(
        'max_length_for_buckets', max_length_for_buckets)
  return n_hashes, n_buckets, max_length_for_buckets


@gin.configurable(module='lsh_jax', denylist=['mode'])
class LSHSelfAttention(_Computation,
                       efficient_attention.LSHSelfAttention):
  """LSH self-attention, drop-in for `trax.layers.LSHSelfAttention`."""

  def __init__(self, n_heads=2, d_qk=64, d_v=64, share_qk='unused',
               causal=False, masked=False, chunk_len=128, n_chunks_before=1,
               n_chunks_after=0, n_hashes=1, n_buckets=None, mode='train',
               predict_mem_len=2048, predict_drop_len=256,
               attention_dropout=0.0, output_dropout=0.0,
               max_length_for_buckets=None, bias=False, n_parallel_heads=1,
               use_python_loop=False, use_reference_code=False,
               allow_duplicate_attention=True, attend_across_buckets=True):
    """Trax 1.4.1's arguments, plus two Trax 1.4.1 lacks (Trax up to 1.2
    had them): `allow_duplicate_attention=False` is the Reformer paper's
    exact multi-round attention and `attend_across_buckets=False` its
    per-bucket candidate sets (see `lsh_jax.lsh_attention`). The defaults
    compute exactly what Trax 1.4.1 computes."""
    allow_duplicate_attention = validation.check_flag(
        'allow_duplicate_attention', allow_duplicate_attention)
    attend_across_buckets = validation.check_flag(
        'attend_across_buckets', attend_across_buckets)
    common = _check_common(
        n_heads=n_heads, d_qk=d_qk, d_v=d_v, causal=causal, mode=mode,
        chunk_len=chunk_len, n_chunks_before=n_chunks_before,
        n_chunks_after=n_chunks_after, attention_dropout=attention_dropout,
        output_dropout=output_dropout, n_parallel_heads=n_parallel_heads,
        modes=LSH_MODES)
    if chunk_len is None:
      raise ValueError('chunk_len must be a positive int, got None')
    if mode == 'predict' and not (allow_duplicate_attention
                                  and attend_across_buckets):
      raise ValueError(
          "mode='predict' (incremental decoding) computes Trax 1.4.1's "
          'attention only: allow_duplicate_attention and '
          'attend_across_buckets must be True there, got '
          f'{allow_duplicate_attention} and {attend_across_buckets}')
    if mode == 'predict':
      predict_mem_len, predict_drop_len = check_predict(
          causal=causal, masked=masked, chunk_len=chunk_len,
          n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after,
          predict_mem_len=predict_mem_len, predict_drop_len=predict_drop_len)
    n_hashes, n_buckets, max_length_for_buckets = check_hash_args(
        n_hashes, n_buckets, max_length_for_buckets)
    super().__init__(
        n_heads=n_heads, d_qk=d_qk, d_v=d_v, share_qk=share_qk, causal=causal,
        masked=masked, chunk_len=chunk_len, n_chunks_before=n_chunks_before,
        n_chunks_after=n_chunks_after, n_hashes=n_hashes,
        n_buckets=list(n_buckets) if isinstance(n_buckets, tuple)
        else n_buckets, mode=mode, predict_mem_len=predict_mem_len,
        predict_drop_len=predict_drop_len,
        attention_dropout=attention_dropout, output_dropout=output_dropout,
        max_length_for_buckets=max_length_for_buckets, bias=bool(bias),
        n_parallel_heads=n_parallel_heads, use_python_loop=use_python_loop,
        use_reference_code=use_reference_code)
    self._spec = trax_kernels.Spec(
        kind='lsh', bias=bool(bias), n_hashes=n_hashes, n_buckets=n_buckets,
        max_length_for_buckets=max_length_for_buckets,
        predict_mem_len=predict_mem_len if mode == 'predict' else None,
        predict_drop_len=predict_drop_len if mode == 'predict' else None,
        allow_duplicate_attention=allow_duplicate_attention,
        attend_across_buckets=attend_across_buckets, **common)

  def _predict(self, x, weights, state, output_grad, update_state):
    """mode='predict': T new tokens in, their outputs and the new state."""
    if output_grad is not None or not update_state:
      raise ValueError("mode='predict' has no backward pass (decoding only); "
                       "train with mode='train'")
    out, new_state = trax_predict.call(x, tuple(weights), as_tuples(state),
                                       spec=self._spec)
    return out, new_state, None, None

  def _check_length(self, length, padded, state, update_state):
    max_length = self._max_length_for_buckets
    if max_length and padded > max_length:
      also = '' if padded == length else (
          f' (padded to {padded}, a multiple of chunk_len={self._chunk_len})')
      raise ValueError(f'input length {length}{also} exceeds '
                       f'max_length_for_buckets={max_length}')
    stored = np.shape(state[0])[-1]
    if not update_state and stored < self._n_hashes * padded:
      raise ValueError(f'the state holds buckets for {stored} ids, the input '
                       f'needs {self._n_hashes} x {padded}: run the forward '
                       f'pass on this input first')

  def hash_vectors(self, vecs, rng, mask=None):
    """Trax's flat bucket ids with round offsets: int32[R * L] (lsh_jax)."""
    n_buckets, n_ids = trax_kernels.bucket_ids(self._spec, vecs.shape[0],
                                               mask is not None)
    buckets = lsh_jax.hash_vectors(vecs, hash_key=rng, n_buckets=n_buckets,
                                   n_hashes=self._n_hashes, mask=mask)
    offsets = n_ids * jnp.arange(self._n_hashes, dtype=jnp.int32)[:, None]
    return (buckets + offsets).reshape(-1)

  def forward_unbatched(self, x, mask=None, *, weights, state, rng,
                        update_state):
    """One example, one head: (out [L, d_model], new state), as Trax's."""
    return _one_pair(self._spec, x, mask, weights, state, rng, update_state)


@gin.configurable(module='lsh_jax', denylist=['mode'])
class SelfAttention(_Computation, efficient_attention.SelfAttention):
  """Dense self-attention, drop-in for `trax.layers.SelfAttention`.

  Separate keys (Trax's default), chunked or not: `lsh_jax.core.local`,
  Trax's `attend` in pure JAX. Shared QK: `lsh_jax.full_attention`, or with
  chunks or attention dropout the one-bucket `lsh_attention_from_buckets`.
  """

  def __init__(self, n_heads=2, d_qk=64, d_v=64, share_qk=False,
               causal=False, masked=False, chunk_len=None, n_chunks_before=0,
               n_chunks_after=0, bias=False, mode='train',
               predict_mem_len=None, predict_drop_len=None,
               attention_dropout=0.0, output_dropout=0.0,
               n_parallel_heads=None, use_python_loop=False,
               use_reference_code=False):
    common = _check_common(
        n_heads=n_heads, d_qk=d_qk, d_v=d_v, causal=causal, mode=mode,
        chunk_len=chunk_len, n_chunks_before=n_chunks_before,
        n_chunks_after=n_chunks_after, attention_dropout=attention_dropout,
        output_dropout=output_dropout, n_parallel_heads=n_parallel_heads,
        modes=LSH_MODES)
    if chunk_len is None and (n_chunks_before or n_chunks_after):
      raise ValueError('n_chunks_before and n_chunks_after need chunk_len, '
                       f'got chunk_len=None and {n_chunks_before}, '
                       f'{n_chunks_after}')
    if mode == 'predict':
      predict_mem_len, predict_drop_len = _check_dense_predict(
          causal=causal, masked=masked, chunk_len=chunk_len,
          n_chunks_before=n_chunks_before, predict_mem_len=predict_mem_len,
          predict_drop_len=predict_drop_len)
    super().__init__(
        n_heads=n_heads, d_qk=d_qk, d_v=d_v, share_qk=bool(share_qk),
        causal=causal, masked=masked, chunk_len=chunk_len,
        n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after,
        bias=bool(bias), mode=mode, predict_mem_len=predict_mem_len,
        predict_drop_len=predict_drop_len,
        attention_dropout=attention_dropout, output_dropout=output_dropout,
        n_parallel_heads=n_parallel_heads, use_python_loop=use_python_loop,
        use_reference_code=use_reference_code)
    self._spec = trax_kernels.Spec(
        kind='dense', bias=bool(bias), share_qk=bool(share_qk),
        predict_mem_len=predict_mem_len if mode == 'predict' else None,
        predict_drop_len=predict_drop_len if mode == 'predict' else None,
        **common)

  def _predict(self, x, weights, state, output_grad, update_state):
    """mode='predict': T new tokens in, their outputs and the new state."""
    if output_grad is not None or not update_state:
      raise ValueError("mode='predict' has no backward pass (decoding only); "
                       "train with mode='train'")
    out, new_state = trax_predict_dense.call(
        x, tuple(weights), as_tuples(state), spec=self._spec)
    return out, new_state, None, None

  def forward_unbatched(self, x, mask=None, *, weights, state, rng,
                        update_state):
    """One example, one head: (out [L, d_model], state), as Trax's."""
    return _one_pair(self._spec, x, mask, weights, state, rng, update_state)


def as_tuples(tree):
  """Lists (a checkpoint's) as tuples, so jit sees one tree structure."""
  if isinstance(tree, (list, tuple)):
    return tuple(as_tuples(t) for t in tree)
  return tree


def _predict_lengths(chunk_len, n_chunks_before, predict_mem_len,
                     predict_drop_len):
  """(mem_len, drop_len), checked; None or 0 default as in Trax."""
  mem_len = validation.check_positive_int(
      'predict_mem_len', predict_mem_len or chunk_len * (1 + n_chunks_before))
  drop_len = validation.check_positive_int('predict_drop_len',
                                           predict_drop_len or chunk_len)
  if drop_len > mem_len:
    raise ValueError(f'predict_drop_len must be <= predict_mem_len='
                     f'{mem_len}, got {drop_len}')
  return mem_len, drop_len


def check_predict(*, causal, masked, chunk_len, n_chunks_before,
                  n_chunks_after, predict_mem_len, predict_drop_len):
  """Checks mode='predict' arguments; returns (mem_len, drop_len).

  None or 0 lengths default as in Trax: memory chunk_len * (1 +
  n_chunks_before), drop chunk_len.
  """
  if not causal:
    raise ValueError("mode='predict' needs causal=True (decoding sees only "
                     'earlier tokens), got causal=False')
  if masked:
    raise ValueError("mode='predict' needs masked=False (decoding has no "
                     'padding input; memory not yet written is in the '
                     'future, hidden by the causal mask)')
  if n_chunks_after:
    raise ValueError(f"mode='predict' needs n_chunks_after=0 (later chunks "
                     f'are not decoded yet), got {n_chunks_after}')
  return _predict_lengths(chunk_len, n_chunks_before, predict_mem_len,
                          predict_drop_len)


def _check_dense_predict(*, causal, masked, chunk_len, n_chunks_before,
                         predict_mem_len, predict_drop_len):
  """Checks the dense layer's mode='predict' arguments; (mem_len, drop_len).

  None or 0 lengths default as in Trax: memory chunk_len * (1 +
  n_chunks_before), drop chunk_len; without chunks both must be given.
  """
  if not causal:
    raise ValueError("mode='predict' needs causal=True (decoding sees only "
                     'earlier tokens), got causal=False')
  if masked:
    raise ValueError("mode='predict' needs masked=False (decoding has no "
                     'padding input)')
  if chunk_len is None and not (predict_mem_len and predict_drop_len):
    raise ValueError("mode='predict' without chunk_len needs predict_mem_len "
                     f'and predict_drop_len, got {predict_mem_len} and '
                     f'{predict_drop_len}')
  return _predict_lengths(chunk_len, n_chunks_before, predict_mem_len,
                          predict_drop_len)


def _one_pair(spec, x, mask, weights, state, rng, update_state):
  """`run` on one example and one head (Trax's `forward_unbatched`)."""
  add_axis = lambda tree: tuple(jnp.asarray(a)[None] for a in tree)
  out, new_state, _, _ = trax_kernels.run(
      jnp.asarray(x)[None], None if mask is None else jnp.asarray(mask)[None],
      add_axis(weights), add_axis(state), rng,
      spec=dataclasses.replace(spec, n_heads=1, n_parallel_heads=None),
      update_state=update_state)
  return out[0], tuple(s[0] for s in new_state)
