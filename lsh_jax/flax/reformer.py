"""The Reformer language model (Trax 1.4.1's `ReformerLM`) in Flax NNX.

    tokens int[B, T]
      -> ShiftRight (a 0 first, the last token dropped)
      -> embed -> dropout (per example and feature) -> positional encoding
      -> Dup: two streams (x1, x2) = (x, x)
      -> n_layers reversible blocks (`DecoderBlock`, `reversible.py`):
           x1 += attention(attention_norm(x2))   (causal, dropout inside)
           x2 += ff(ff_norm(x1))                 (dropout inside, chunked)
      -> Concatenate [x1, x2] (2 Dm) -> final_norm -> dropout -> logits
      -> float[B, T, V]

as `trax.models.ReformerLM` composes it (ReversibleHalfResidual and
ReversibleSwap in its DecoderBlock), with Trax's argument names and the
dropout where Trax puts it: after the embedding, in the positional encoding,
inside the attention (attention and output dropout), after each
feed-forward projection, and after the final norm.

Parameter tree (`nnx.state(model, nnx.Param)`; Dm = d_model, N = n_heads,
H = d_attention_key, Hv = d_attention_value, Dff = d_ff, V = vocab_size):

    embed.embedding                   [V, Dm]
    positional.embedding              [max_len, Dm]    pos_type=None
    positional.axes[k]                [pos_axial_shape[k],
                                       pos_d_axial_embs[k]]  pos_type='axial'
                                      (none for 'sin-cos' and 'no')
    blocks[i].attention_norm.scale    [Dm]   (.bias [Dm])
    blocks[i].attention.qk.kernel     [Dm, N, H]   queries (shared with keys
                                                   in LSHSelfAttention and
                                                   SelfAttention)
    blocks[i].attention.key.kernel    [Dm, N, H]   LocalSelfAttention only
    blocks[i].attention.value.kernel  [Dm, N, Hv]
    blocks[i].attention.out.kernel    [N, Hv, Dm]
                                      (no attention biases, as in Trax)
    blocks[i].ff_norm.scale           [Dm]   (.bias [Dm])
    blocks[i].ff.w1.kernel            [Dm, Dff]    (.bias [Dff])
    blocks[i].ff.w2.kernel            [Dff, Dm]    (.bias [Dm])
    final_norm.scale                  [2 Dm] (.bias [2 Dm])
    logits.kernel                     [2 Dm, V]    (.bias [V])

Layer norms use Trax's epsilon 1e-6.

Randomness (NNX rng streams, drawn once per call in training and handed to
every layer, so the reversible backward replays them): 'params' for the
weights; 'hash' (falling back to 'default') for the hash keys, one per
layer per call; 'dropout' (falling back to 'default') for every dropout
mask. In evaluation (`model.eval()` or `deterministic=True`) there is no
dropout and each LSH layer hashes with its fixed `hash_key`.
"""
import functools
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lsh_jax.core import validation
from lsh_jax.flax import dropout as dropout_lib
from lsh_jax.flax import feed_forward
from lsh_jax.flax import generation
from lsh_jax.flax import positional
from lsh_jax.flax import reversible as reversible_lib
from lsh_jax.flax.attention import LSHSelfAttention

__all__ = [
    'DecoderBlock', 'HASH_STREAM', 'POS_TYPES', 'ReformerLM', 'shift_right',
]

HASH_STREAM = 'hash'
POS_TYPES = (None, 'sin-cos', 'axial', 'no')
_NORM_EPSILON = 1e-6  # Trax's LayerNorm


def shift_right(tokens: jax.Array) -> jax.Array:
  """[B, T] -> [B, T]: a 0 first, the last token dropped (Trax's ShiftRight)."""
  return jnp.pad(tokens, ((0, 0), (1, 0)))[:, :-1]


class DecoderBlock(nnx.Module):
  """One reversible block: a pre-norm attention half, a pre-norm ff half."""

  def __init__(self, attention: nnx.Module, d_model: int, d_ff: int, *,
               ff_activation, dropout: float, ff_chunk_size: int,
               rngs: nnx.Rngs):
    self.attention_norm = nnx.LayerNorm(d_model, epsilon=_NORM_EPSILON,
                                        rngs=rngs)
    self.attention = attention
    self.ff_norm = nnx.LayerNorm(d_model, epsilon=_NORM_EPSILON, rngs=rngs)
    self.ff = feed_forward.FeedForward(
        d_model, d_ff, activation=ff_activation, dropout=dropout,
        chunk_size=ff_chunk_size, rngs=rngs)

  def attention_half(self, x, mask, keys, decode=False):
    """f(x2): attention of the normed stream; keys None: evaluation;
    decode: with the attention's cache (lsh_jax.flax.generation)."""
    if decode:
      return self.attention(self.attention_norm(x), mask, decode=True)
    if keys is None:
      return self.attention(self.attention_norm(x), mask, deterministic=True)
    hash_key, dropout_key = keys
    rngs = nnx.Rngs(default=hash_key,
                    dropout=jax.random.fold_in(dropout_key, 0))
    return self.attention(self.attention_norm(x), mask, deterministic=False,
                          rngs=rngs)

  def ff_half(self, x, keys):
    """g(y1): the feed-forward of the normed stream."""
    key = None if keys is None else jax.random.fold_in(keys[1], 1)
    return self.ff(self.ff_norm(x), key=key)

  def __call__(self, x1, x2, mask=None, keys=None, decode=False):
    """(x1, x2) -> (y1, y2), the block without the reversible stack."""
    y1 = x1 + self.attention_half(x2, mask, keys, decode)
    return y1, x2 + self.ff_half(y1, keys)


def _fork(rngs, name):
  """`rngs[name]` (or 'default') forked, or None when it has neither."""
  try:
    return rngs[name].fork()
  except KeyError:
    return nnx.data(None)


def _draw(stream, name):
  if stream is None:
    raise ValueError(f'training needs an rng stream {name!r} (or '
                     "'default'): pass rngs=nnx.Rngs(params=..., hash=..., "
                     'dropout=...) to the constructor or the call, or call '
                     'with deterministic=True')
  return stream()


def _check_tokens(tokens, mask):
  shape = tuple(np.shape(tokens))
  if len(shape) != 2 or not jnp.issubdtype(jnp.result_type(tokens),
                                           jnp.integer):
    raise ValueError(f'tokens must be an int array [batch, length], got '
                     f'{jnp.result_type(tokens)}{list(shape)}')
  if mask is not None and tuple(np.shape(mask)) != shape:
    raise ValueError(f'mask must be a bool array of the tokens\' shape '
                     f'{shape} (True = real token), got shape '
                     f'{tuple(np.shape(mask))}')


def _attention_types(attention_type, n_layers):
  types = (list(attention_type) if isinstance(attention_type, (list, tuple))
           else [attention_type])
  if not types or n_layers % len(types):
    raise ValueError(f'n_layers ({n_layers}) must be a multiple of the '
                     f'number of attention types ({len(types)}), as in Trax')
  for t in types:
    if not callable(t):
      raise ValueError(f'attention_type must be an attention module class '
                       f'(e.g. lsh_jax.flax.LSHSelfAttention) or a callable '
                       f'returning one, or a list of them; got {t!r}')
  return types


class ReformerLM(nnx.Module):
  """Reversible Reformer language model: int[B, T] -> logits [B, T, V].

  Args (Trax's names and defaults, except `attention_type`):
    vocab_size: V.
    d_model: Dm, the depth of each of the two streams.
    d_ff: Dff, the feed-forward depth.
    d_attention_key, d_attention_value: H and Hv, per head.
    n_layers: number of blocks.
    n_heads: N.
    dropout: the rate of every dropout in the model.
    max_len: longest sequence of the learned positions (pos_type=None).
    attention_type: a module class or callable called as
      `attention_type(n_heads, d_model, qk_features=N*H, v_features=N*Hv,
      causal=True, attention_dropout=dropout, dropout_rate=dropout,
      use_bias=False, rngs=rngs)` (`functools.partial` binds the rest, e.g.
      `partial(LSHSelfAttention, n_hashes=4, chunk_len=64)`), or a list of
      them cycling over the layers (n_layers a multiple of its length).
      lsh_jax.flax has LSHSelfAttention (default), SelfAttention (dense,
      shared QK) and LocalSelfAttention (separate keys, chunked or dense:
      Trax's SelfAttention, Trax's default here).
    pos_type: None (learned, sinusoid-initialised, Trax's default),
      'sin-cos' (fixed), 'axial' (with pos_axial_shape, pos_d_axial_embs)
      or 'no'.
    pos_axial_shape, pos_d_axial_embs: the axial shape (its product bounds
      the length) and the depth per axis (summing to d_model).
    ff_activation: a Trax activation name ('FastGelu', 'Relu', 'Gelu', ...;
      feed_forward.ACTIVATIONS) or a callable.
    ff_chunk_size: > 0: the feed-forward runs on chunks of that many
      positions (its [B, T, Dff] activations never exist whole).
    reversible: True: the backward pass recomputes activations
      (`reversible.py`); False: plain autodiff of the same blocks.
    deterministic: default mode (False: training), as the attention modules.
    decode: default for the call's `decode` (decoding with the caches of
      `init_cache`; lsh_jax.flax.generation).
    rngs: `nnx.Rngs` ('params', 'hash', 'dropout'; see the module docstring).

  Example (a tiny model; logits for every position and token):

  >>> import functools
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from lsh_jax.flax import LSHSelfAttention, ReformerLM
  >>> model = ReformerLM(16, d_model=8, d_ff=16, d_attention_key=4,
  ...                    d_attention_value=4, n_layers=2, n_heads=2,
  ...                    max_len=32, attention_type=functools.partial(
  ...                        LSHSelfAttention, chunk_len=8),
  ...                    rngs=nnx.Rngs(0))
  >>> logits = model(jnp.zeros((2, 16), jnp.int32), deterministic=True)
  >>> logits.shape, bool(jnp.isfinite(logits).all())
  ((2, 16, 16), True)
  """

  def __init__(self, vocab_size: int, d_model: int = 512, d_ff: int = 2048,
               d_attention_key: int = 64, d_attention_value: int = 64,
               n_layers: int = 6, n_heads: int = 8, dropout: float = 0.1,
               max_len: int = 2048,
               attention_type: Union[Callable, Sequence[Callable]] = (
                   LSHSelfAttention),
               pos_type: Optional[str] = None,
               pos_axial_shape: Sequence[int] = (),
               pos_d_axial_embs: Optional[Sequence[int]] = None,
               ff_activation: Union[str, Callable] = 'FastGelu',
               ff_chunk_size: int = 0, *, reversible: bool = True,
               deterministic: bool = False, decode: bool = False,
               rngs: nnx.Rngs):
    for name, value in (('vocab_size', vocab_size), ('d_model', d_model),
                        ('d_attention_key', d_attention_key),
                        ('d_attention_value', d_attention_value),
                        ('n_layers', n_layers), ('n_heads', n_heads),
                        ('max_len', max_len)):
      validation.check_positive_int(name, value)
    dropout = validation.check_rate('dropout', dropout)
    if pos_type not in POS_TYPES:
      raise ValueError(f'pos_type must be one of {POS_TYPES}, got '
                       f'{pos_type!r} (Trax\'s fixed-base, infinite and '
                       'time-bin encodings are not supported)')
    if pos_type != 'axial' and (tuple(pos_axial_shape) or pos_d_axial_embs):
      raise ValueError('pos_axial_shape and pos_d_axial_embs are used only '
                       f"with pos_type='axial' (got pos_type={pos_type!r})")
    types = _attention_types(attention_type, n_layers)
    self.vocab_size, self.d_model, self.n_layers = vocab_size, d_model, n_layers
    self.dropout = float(dropout)
    self.reversible, self.deterministic = bool(reversible), deterministic
    self.embed = nnx.Embed(vocab_size, d_model, rngs=rngs)
    if pos_type is None:
      self.positional = positional.PositionalEncoding(
          max_len, d_model, dropout=self.dropout)
    elif pos_type == 'sin-cos':
      self.positional = positional.SinCosPositionalEncoding()
    elif pos_type == 'axial':
      self.positional = positional.AxialPositionalEncoding(
          pos_axial_shape, pos_d_axial_embs or (), d_model,
          dropout=self.dropout, rngs=rngs)
    else:
      self.positional = nnx.data(None)
    blocks = []
    for i in range(n_layers):
      make = types[i % len(types)]
      try:
        attention = make(n_heads, d_model,
                         qk_features=n_heads * d_attention_key,
                         v_features=n_heads * d_attention_value, causal=True,
                         attention_dropout=self.dropout,
                         dropout_rate=self.dropout, use_bias=False, rngs=rngs)
      except TypeError as error:
        raise ValueError(
            f'attention_type {make!r} must accept (num_heads, in_features, *, '
            'qk_features, v_features, causal, attention_dropout, '
            'dropout_rate, use_bias, rngs) as the lsh_jax.flax attention '
            f'modules do: {error}') from None
      blocks.append(DecoderBlock(
          attention, d_model, d_ff, ff_activation=ff_activation,
          dropout=self.dropout, ff_chunk_size=ff_chunk_size, rngs=rngs))
    self.blocks = nnx.List(blocks)
    self.period = len(types)
    self.final_norm = nnx.LayerNorm(2 * d_model, epsilon=_NORM_EPSILON,
                                    rngs=rngs)
    self.logits = nnx.Linear(2 * d_model, vocab_size,
                             kernel_init=nnx.initializers.xavier_uniform(),
                             rngs=rngs)
    self.hash_rngs = _fork(rngs, HASH_STREAM)
    self.dropout_rngs = _fork(rngs, 'dropout')
    # Decoding (lsh_jax.flax.generation): init_cache makes the cache.
    self.decode, self.cache = decode, nnx.data(None)

  def init_cache(self, input_shape: Sequence[int], dtype=jnp.float32, *,
                 drop_len: Optional[int] = None) -> None:
    """Makes the caches for `decode=True`, as Flax's attention does.

    Args:
      input_shape: (B, Lm): calls then take int[B, T] and every attention
        layer keeps the last Lm positions (Trax's `predict_mem_len`).
      dtype: the caches' dtype.
      drop_len: positions dropped when a cache is full (Trax's
        `predict_drop_len`; default per layer, see the attention modules'
        `init_cache`).
    """
    generation.init_cache(self, input_shape, dtype, drop_len)

  def __call__(self, tokens: jax.Array, mask: Optional[jax.Array] = None, *,
               deterministic: Optional[bool] = None,
               rngs: Optional[nnx.Rngs] = None,
               decode: Optional[bool] = None) -> jax.Array:
    """Logits of the next token at every position.

    Args:
      tokens: int[B, T], any T (up to max_len or prod(pos_axial_shape)).
      mask: bool[B, T], True for real tokens, or None. A padded token is
        seen by no position (its own logits, one position later, are
        meaningless).
      deterministic: overrides the model's mode for this call.
      rngs: an `nnx.Rngs` to draw this call's hash and dropout keys from
        (its 'hash' and 'dropout' streams) instead of the model's own.
      decode: overrides the model's `decode`: tokens are the model's inputs
        at the next positions (no shift: the first call starts with 0),
        decoded with the caches of `init_cache` (lsh_jax.flax.generation).

    Returns:
      float[B, T, vocab_size]: position t predicts tokens[:, t] from
      tokens[:, :t].
    """
    _check_tokens(tokens, mask)
    if self.decode if decode is None else decode:
      return generation.decode(self, tokens, mask)
    deterministic = bool(self.deterministic if deterministic is None
                         else deterministic)
    batch, length = np.shape(tokens)
    if deterministic:
      embed_key = position_key = final_key = layer_keys = None
    else:
      hash_key = _draw(self.hash_rngs if rngs is None else
                       _fork(rngs, HASH_STREAM), HASH_STREAM)
      # With dropout 0 no mask is drawn: the keys below go unused.
      dropout_key = hash_key if not self.dropout else _draw(
          self.dropout_rngs if rngs is None else _fork(rngs, 'dropout'),
          'dropout')
      embed_key, position_key, final_key, layer_key = jax.random.split(
          dropout_key, 4)
      layer_keys = (jax.random.split(hash_key, self.n_layers),
                    jax.random.split(layer_key, self.n_layers))
    x = self.embed(shift_right(tokens))
    x = dropout_lib.dropout(x, self.dropout, embed_key, (-2,))
    if self.positional is not None:
      x = self.positional(x, key=position_key)
    if mask is not None:  # the mask moves with its tokens
      mask = jnp.pad(jnp.asarray(mask, bool), ((0, 0), (1, 0)),
                     constant_values=True)[:, :-1]
    x1, x2 = self._stack(x, x, mask, layer_keys)
    x = self.final_norm(jnp.concatenate([x1, x2], axis=-1))
    x = dropout_lib.dropout(x, self.dropout, final_key, (-2,))
    return self.logits(x)

  def _stack(self, x1, x2, mask, layer_keys):
    """The blocks as one scan over periods of `self.period` blocks."""
    period = self.period
    n_periods = self.n_layers // period
    halves, params, consts = [], [], []
    for j in range(period):
      group = [self.blocks[j + k * period] for k in range(n_periods)]
      splits = [nnx.split(block, nnx.Param, ...) for block in group]
      graphdef = splits[0][0]
      if any(s[0] != graphdef for s in splits[1:]):
        raise ValueError('the blocks of one attention type must have the '
                         'same configuration to be stacked (layer '
                         f'{j} and every {period}th after it)')
      stack = lambda *trees: jax.tree.map(lambda *a: jnp.stack(a), *trees)
      params.append(stack(*[s[1] for s in splits]))
      keys = None if layer_keys is None else jax.tree.map(
          lambda k: k[j::period], layer_keys)
      consts.append({'state': stack(*[s[2] for s in splits]), 'keys': keys})
      halves.append((functools.partial(_attention_half, graphdef),
                     functools.partial(_ff_half, graphdef)))
    return reversible_lib.reversible_stack(
        halves, params, consts, {'mask': mask}, x1, x2,
        reversible=self.reversible)


def _block(graphdef, params, consts):
  return nnx.merge(graphdef, params, consts['state'])


def _attention_half(graphdef, params, consts, shared, x):
  return _block(graphdef, params, consts).attention_half(
      x, shared['mask'], consts['keys'])


def _ff_half(graphdef, params, consts, shared, x):
  del shared
  return _block(graphdef, params, consts).ff_half(x, consts['keys'])
