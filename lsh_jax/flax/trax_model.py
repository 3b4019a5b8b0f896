"""Reads the configuration of a live Trax 1.4.1 `ReformerLM` from its layers.

`read(model)` walks the layer tree `trax.models.ReformerLM` builds

  ShiftRight, Embedding, Dropout, <positional encoding>, Dup,
  ReversibleSerial([ReversibleHalfResidual(LayerNorm, attention), Swap,
                    ReversibleHalfResidual(LayerNorm, Dense, Dropout,
                                           activation, Dense, Dropout), Swap]
                   * n_layers),
  Concatenate, LayerNorm, Dropout, Dense

and returns its configuration under `ReformerLM`'s argument names, each
attention layer's settings, its weights in Trax's flattening order and the
LSH layers' hash keys. Anything else in that tree (an option lsh_jax's Flax
model does not have) raises a ValueError naming the Trax option.

The model is a Trax object, so Trax is imported already; this module
imports it only inside `read`.
"""
from typing import Any, Dict

import numpy as np

__all__ = ['ACTIVATIONS', 'read']

# Trax's activation layers by layer name (`ff_activation=tl.FastGelu`).
ACTIVATIONS = ('FastGelu', 'Gelu', 'Relu', 'Elu', 'Selu', 'Sigmoid', 'Tanh',
               'Softplus', 'LeakyRelu')
_LAYER_NORM_EPSILON = 1e-6  # Trax's and Flax's default


def _is_pure(layer, *names):
  return type(layer).__name__ == 'PureLayer' and layer.name in names


def _sequence(layer):
  """The layers a plain Serial runs, nested Serials opened, AssertShape
  (an identity check) dropped."""
  kind = type(layer).__name__
  if kind == 'AssertShape':
    return []
  if kind == 'Serial':
    return [inner for sub in layer.sublayers for inner in _sequence(sub)]
  return [layer]


def _names(layers):
  return ', '.join(type(l).__name__ if type(l).__name__ != 'PureLayer'
                   else l.name for l in layers)


def _not_reformer(what, layers):
  return ValueError(f'model must be a trax.models.ReformerLM; {what}, got '
                    f'[{_names(layers)}]')


def _all_layers(layer):
  """A layer and every layer inside it."""
  return [layer] + [l for sub in layer.sublayers for l in _all_layers(sub)]


def _closure_value(fn, name, depth=3):
  """A variable `name` closed over by `fn` or the functions it closes over
  (how Trax's Chunk keeps its chunk size); None when absent."""
  for var, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
    value = cell.cell_contents
    if var == name:
      return value
    if depth and callable(value) and hasattr(value, '__code__'):
      found = _closure_value(value, name, depth - 1)
      if found is not None:
        return found
  return None


def _attention(layer, index):
  """One attention layer's settings (dict), or ValueError naming it."""
  from trax.layers.research import efficient_attention  # pylint: disable=import-outside-toplevel
  name = type(layer).__name__
  if isinstance(layer, efficient_attention.LSHSelfAttention):
    kind = 'lsh'
  elif isinstance(layer, efficient_attention.SelfAttention):
    kind = 'local' if layer._chunk_len else 'dense'  # pylint: disable=protected-access
  else:
    raise ValueError(
        f'attention_type of layer {index} is {name}, which lsh_jax\'s Flax '
        f'ReformerLM does not have; supported: LSHSelfAttention and '
        f'SelfAttention (trax.layers or lsh_jax.trax)')
  a = {k[1:]: v for k, v in vars(layer).items() if k.startswith('_')}
  if a['masked']:
    raise ValueError(f'attention layer {index} ({name}) has masked=True; '
                     f'ReformerLM builds its attention with masked=False')
  if a['bias']:
    raise ValueError(f'attention layer {index} ({name}) has bias=True; the '
                     f'Flax ReformerLM\'s attention has no biases')
  if kind != 'lsh' and a['share_qk']:
    raise ValueError(f'attention layer {index} ({name}) has share_qk=True; '
                     f'the Flax ReformerLM\'s local and dense attention have '
                     f'separate keys (Trax\'s default, share_qk=False)')
  settings = dict(kind=kind, n_heads=a['n_heads'], d_qk=a['d_qk'],
                  d_v=a['d_v'], causal=bool(a['causal']))
  if kind != 'dense':
    settings.update(chunk_len=a['chunk_len'],
                    n_chunks_before=a['n_chunks_before'],
                    n_chunks_after=a['n_chunks_after'])
  if kind == 'lsh':
    n_buckets = a['n_buckets']
    settings.update(
        n_hashes=a['n_hashes'],
        n_buckets=tuple(n_buckets) if isinstance(n_buckets, list)
        else n_buckets,
        allow_duplicate_attention=getattr(
            getattr(layer, '_spec', None), 'allow_duplicate_attention', True),
        attend_across_buckets=getattr(
            getattr(layer, '_spec', None), 'attend_across_buckets', True))
  if a.get('incremental'):
    settings.update(predict_mem_len=a['predict_mem_len'],
                    predict_drop_len=a['predict_drop_len'])
  return settings


def _layer_norm(layer, where):
  if type(layer).__name__ != 'LayerNorm':
    raise _not_reformer(f'{where} must be a LayerNorm', [layer])
  if not layer._center or layer._epsilon != _LAYER_NORM_EPSILON:  # pylint: disable=protected-access
    raise ValueError(f'{where}: LayerNorm(center={layer._center}, epsilon='  # pylint: disable=protected-access
                     f'{layer._epsilon}); the Flax ReformerLM has Trax\'s '  # pylint: disable=protected-access
                     f'default LayerNorm(center=True, epsilon=1e-6)')


def _feed_forward(half, index):
  """(activation name, ff_chunk_size, d_ff) of one feed-forward
  half-residual."""
  if any(l.name.startswith('SRU') for l in _all_layers(half)):
    raise ValueError(f'layer {index}: ff_use_sru (SRU layers beside the '
                     f'feed-forward) has no equivalent in the Flax ReformerLM')
  sparse = sorted({type(l).__name__ for l in _all_layers(half)
                   if 'Sparse' in type(l).__name__})
  if sparse:
    raise ValueError(f'layer {index}: ff_sparsity (a sparse feed-forward, '
                     f'{", ".join(sparse)}) has no equivalent in the Flax '
                     f'ReformerLM')
  body = _sequence(half.sublayers[0])
  kinds = [type(l).__name__ for l in body]
  chunk_size = 0
  if kinds == ['BatchLeadingAxes']:  # ff_chunk_size > 0: Chunk inside
    chunked = _sequence(body[0].sublayers[0])
    reshape = [l for l in chunked if _is_pure(l, 'ReshapeToChunks')]
    scan = [l for l in chunked if type(l).__name__ == 'Scan']
    if not (reshape and scan):
      raise _not_reformer(f'layer {index}\'s chunked feed-forward must be '
                          f'Trax\'s Chunk', chunked)
    chunk_size = _closure_value(reshape[0]._forward_fn, 'chunk_size')  # pylint: disable=protected-access
    if not chunk_size:
      raise ValueError(f'layer {index}: could not read ff_chunk_size from '
                       f'Trax\'s Chunk layer; pass ff_chunk_size=')
    body = _sequence(scan[0].sublayers[0])
    kinds = [type(l).__name__ for l in body]
  expected = ['LayerNorm', 'Dense', 'Dropout', 'PureLayer', 'Dense',
              'Dropout']
  if kinds != expected or body[3].name not in ACTIVATIONS:
    raise _not_reformer(
        f'layer {index}\'s feed-forward must be LayerNorm, Dense, Dropout, '
        f'an activation ({", ".join(ACTIVATIONS)}), Dense, Dropout', body)
  _layer_norm(body[0], f'layer {index}\'s feed-forward norm')
  return body[3].name, chunk_size, int(np.shape(body[1].weights[0])[-1])


def _positional(layers):
  """(pos_type, extra config) from the layers between Dropout and Dup."""
  if not layers:
    return dict(pos_type='no')
  if len(layers) == 1:
    layer, kind = layers[0], type(layers[0]).__name__
    if kind == 'PositionalEncoding':
      if layer._start_from_zero_prob != 1.0:  # pylint: disable=protected-access
        raise ValueError(
            f'pos_start_from_zero_prob={layer._start_from_zero_prob} (random '  # pylint: disable=protected-access
            f'position offsets in training) has no equivalent in the Flax '
            f'ReformerLM; Trax\'s default is 1.0')
      if layer._max_offset_to_add:  # pylint: disable=protected-access
        raise ValueError(
            f'pos_max_offset_to_add={layer._max_offset_to_add} has no '  # pylint: disable=protected-access
            f'equivalent in the Flax ReformerLM; Trax\'s default is 0')
      return dict(pos_type=None, max_len=layer._max_len)  # pylint: disable=protected-access
    if kind == 'AxialPositionalEncoding':
      return dict(pos_type='axial',
                  pos_axial_shape=tuple(layer._shape),  # pylint: disable=protected-access
                  pos_d_axial_embs=tuple(layer._d_embs))  # pylint: disable=protected-access
    if kind == 'SinCosPositionalEncoding':
      return dict(pos_type='sin-cos')
  raise ValueError(f'the positional encoding [{_names(layers)}] has no '
                   f'equivalent in the Flax ReformerLM (pos_type None, '
                   f'\'sin-cos\', \'no\' or axial)')


def read(model) -> Dict[str, Any]:
  """Configuration, weights and hash keys of a Trax `ReformerLM`.

  Args:
    model: the `trax.models.ReformerLM(...)` layer, with weights (after
      `init` or `init_from_file`), in any mode.

  Returns:
    dict: `config` (ReformerLM's arguments: vocab_size, d_model, d_ff,
    n_layers, n_heads, d_attention_key, d_attention_value, dropout,
    pos_type and its arguments, ff_activation (a name), ff_chunk_size),
    `attention` (one dict of settings per layer), `flat_weights` (NumPy
    arrays in Trax's flattening order) and `hash_keys` (per LSH layer, the
    keys uint32[P, 2] its next call hashes with, P = batch * heads pairs of
    the batch it was initialised for; None for other layers).

  Raises:
    ValueError: not a ReformerLM, or an option without a Flax equivalent
      (the message names it).
  """
  from trax import layers as tl  # pylint: disable=import-outside-toplevel
  if not isinstance(model, tl.Layer):
    raise TypeError(f'model must be a Trax layer (trax.models.ReformerLM), '
                    f'got {type(model).__name__}')
  from trax.layers import base  # pylint: disable=import-outside-toplevel
  flat_weights, _ = base.flatten_weights_and_state(model.weights, model.state)
  if not flat_weights:
    raise ValueError('the Trax model has no weights yet: call model.init('
                     'signature) or model.init_from_file(path) first')
  top = _sequence(model)
  kinds = [type(l).__name__ for l in top]
  head = ['PureLayer', 'Embedding', 'Dropout']
  tail = ['ReversibleSerial', 'Concatenate', 'LayerNorm', 'Dropout']
  if (len(top) < 8 or kinds[:3] != head or not _is_pure(top[0], 'ShiftRight(1)')
      or 'ReversibleSerial' not in kinds):
    raise _not_reformer('expected ShiftRight, Embedding, Dropout, positional '
                        'encoding, Dup, ReversibleSerial, ...', top)
  rev = kinds.index('ReversibleSerial')
  if not _is_pure(top[rev - 1], 'Dup') or kinds[rev:rev + 4] != tail:
    raise _not_reformer('expected ..., Dup, ReversibleSerial, Concatenate, '
                        'LayerNorm, Dropout, Dense', top)
  if kinds[rev + 4:] != ['Dense']:
    raise ValueError(f'loss_sparsity: the output layer is '
                     f'[{_names(top[rev + 4:])}]; the Flax ReformerLM has '
                     f'one Dense output layer (Trax\'s loss_sparsity=0)')
  _layer_norm(top[rev + 2], 'the final norm')
  config = dict(_positional(top[3:rev - 1]))
  config['dropout'] = float(top[2]._initial_rate)  # pylint: disable=protected-access

  blocks = list(top[rev].sublayers)
  if len(blocks) % 4 or not blocks:
    raise _not_reformer('ReversibleSerial must hold (attention, swap, '
                        'feed-forward, swap) per layer', blocks)
  attention, hash_keys, feed_forwards = [], [], set()
  for index in range(len(blocks) // 4):
    attn_half, _, ff_half, _ = blocks[4 * index:4 * index + 4]
    inner = attn_half.sublayers
    if (type(attn_half).__name__ != 'ReversibleHalfResidual'
        or len(inner) != 2):
      raise _not_reformer(f'layer {index} must start with an attention '
                          f'ReversibleHalfResidual', [attn_half])
    norm = _sequence(inner[0])
    if len(norm) != 1:
      raise _not_reformer(f'layer {index}\'s attention norm must be one '
                          f'LayerNorm', norm)
    _layer_norm(norm[0], f'layer {index}\'s attention norm')
    layer = _sequence(inner[1])
    scans = [l for l in layer if type(l).__name__ == 'Scan']
    if scans:  # attention_chunk_size > 0: batch chunks, the same function
      layer = _sequence(scans[0].sublayers[0])
    if len(layer) != 1:
      raise ValueError(
          f'attention_type of layer {index} is [{_names(layer)}], which '
          f'lsh_jax\'s Flax ReformerLM does not have; supported: '
          f'LSHSelfAttention and SelfAttention (trax.layers or lsh_jax.trax)')
    attention.append(_attention(layer[0], index))
    hash_keys.append(_hash_keys(layer[0]) if attention[-1]['kind'] == 'lsh'
                     else None)
    feed_forwards.add(_feed_forward(ff_half, index))
  if len(feed_forwards) != 1:
    raise ValueError(f'the layers\' feed-forwards differ in (ff_activation, '
                     f'ff_chunk_size, d_ff): {sorted(feed_forwards)}; '
                     f'ReformerLM uses one')
  activation, chunk_size, d_ff = feed_forwards.pop()
  first = attention[0]
  for index, settings in enumerate(attention):
    for name, trax_name in (('n_heads', 'n_heads'), ('d_qk', 'd_attention_key'),
                            ('d_v', 'd_attention_value'),
                            ('causal', 'causal')):
      if settings[name] != first[name]:
        raise ValueError(f'{trax_name} differs between layers 0 and {index} '
                         f'({first[name]} and {settings[name]})')
  embedding = np.shape(flat_weights[0])  # [V, Dm]
  config.update(
      vocab_size=embedding[0], d_model=embedding[1],
      n_layers=len(attention), n_heads=first['n_heads'],
      d_attention_key=first['d_qk'], d_attention_value=first['d_v'],
      causal=first['causal'], d_ff=d_ff, ff_activation=activation,
      ff_chunk_size=chunk_size)
  return dict(config=config, attention=attention,
              flat_weights=[np.asarray(w) for w in flat_weights],
              hash_keys=hash_keys)


def _hash_keys(layer):
  """The keys uint32[P, 2] the LSH layer's next call hashes with, P = B * N
  pairs numbered b * N + n: in train and eval mode the second half of its
  state's keys split (the first half is stored for the call after), in
  predict mode the state's keys themselves."""
  import jax  # pylint: disable=import-outside-toplevel
  if getattr(layer, '_incremental', False):
    return np.asarray(layer.state[2][-1])
  keys = np.asarray(layer.state[-1])
  return np.asarray(jax.vmap(lambda k: jax.random.split(k)[1])(keys))

