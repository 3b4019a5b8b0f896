"""From Trax to Flax: a Trax 1.4.1 `ReformerLM`'s weights in the Flax model.

    model = lsh_jax.flax.from_trax(trax_model)           # a live Trax model
    model = lsh_jax.flax.from_trax('run/model.pkl.gz',   # a checkpoint file
                                   vocab_size=..., attention_type=..., ...)

`from_trax` returns an `lsh_jax.flax.ReformerLM` computing what the Trax
model computes. From a live model the configuration is read from its layers
(`trax_model.read`); from a checkpoint, which holds weights only, it is
given as `ReformerLM`'s keyword arguments (Trax's names). Either way the
Flax model is built first and the Trax weights, in Trax's flattening order,
are matched to its parameters one by one (count and every shape checked):

    Trax                                   Flax (ReformerLM's tree)
    Embedding [V, Dm]                      embed.embedding
    PositionalEncoding [max_len, Dm]       positional.embedding
    AxialPositionalEncoding, axis k        positional.axes[k] [shape_k, d_k]
      [1, .., shape_k, .., 1, d_k]
    per layer i:
      LayerNorm (scale, bias)              blocks[i].attention_norm
      attention w_q [N, Dm, H]             blocks[i].attention.qk.kernel
                                           [Dm, N, H]
      w_k (SelfAttention) [N, Dm, H]       .key.kernel [Dm, N, H]
      w_v [N, Dm, Hv]                      .value.kernel [Dm, N, Hv]
      w_o [N, Hv, Dm]                      .out.kernel [N, Hv, Dm]
      LayerNorm                            blocks[i].ff_norm
      Dense (w, b), Dense (w, b)           blocks[i].ff.w1, blocks[i].ff.w2
    LayerNorm [2 Dm]                       final_norm
    Dense [2 Dm, V]                        logits

A checkpoint is a pickle, and unpickling can run code: `from_trax` reads
only the file it is given (and the NumPy weights file beside it), through
the allow-list of `trax_checkpoint`. Load checkpoints you trust.
"""
import functools
import os
import sys
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lsh_jax.flax import trax_checkpoint
from lsh_jax.flax import trax_model
from lsh_jax.flax.attention import LSHSelfAttention
from lsh_jax.flax.local import LocalSelfAttention
from lsh_jax.flax.reformer import ReformerLM

__all__ = ['from_trax', 'load_weights']

_LSH_SETTINGS = ('n_hashes', 'n_buckets', 'chunk_len', 'n_chunks_before',
                 'n_chunks_after', 'allow_duplicate_attention',
                 'attend_across_buckets')
_LOCAL_SETTINGS = ('chunk_len', 'n_chunks_before', 'n_chunks_after')


def _attention_class(settings):
  """One Trax attention layer's settings -> a Flax attention_type."""
  if settings['kind'] == 'lsh':
    return functools.partial(
        LSHSelfAttention, **{k: settings[k] for k in _LSH_SETTINGS})
  if settings['kind'] == 'local':
    return functools.partial(
        LocalSelfAttention, **{k: settings[k] for k in _LOCAL_SETTINGS})
  return LocalSelfAttention  # chunk_len=None: dense, Trax's SelfAttention


def _attention_type(layers):
  """Per-layer settings -> attention_type: the shortest period that
  repeats them (ReformerLM cycles a list over its layers, as Trax does)."""
  keys = [tuple(sorted(s.items(), key=lambda kv: kv[0])) for s in layers]
  for period in range(1, len(keys) + 1):
    if len(keys) % period == 0 and all(
        k == keys[i % period] for i, k in enumerate(keys)):
      types = [_attention_class(s) for s in layers[:period]]
      return types[0] if period == 1 else types
  raise AssertionError('unreachable: the full length is a period')


def _config_of(model):
  """ReformerLM's arguments and the weights of a live Trax model."""
  read = trax_model.read(model)
  config = dict(read['config'])
  del config['causal']  # Trax's ReformerLM, and ours, are always causal
  config['attention_type'] = _attention_type(read['attention'])
  return config, read['flat_weights'], read['hash_keys']


def _transpose_heads(w):
  return np.transpose(w, (1, 0, 2))  # [N, Dm, H] -> [Dm, N, H]


def _layout(model):
  """(description, Flax parameter, Trax -> Flax function) in Trax's
  flattening order of the same model's weights."""
  same = lambda w: w
  entries = [('the token embedding', model.embed.embedding, same)]
  pos = model.positional
  if pos is not None and hasattr(pos, 'embedding'):
    entries.append(('the positional encoding', pos.embedding, same))
  elif pos is not None and hasattr(pos, 'axes'):
    for k, axis in enumerate(pos.axes):
      entries.append((f'axial positional axis {k}', axis,
                      lambda w, a=axis: np.reshape(w, a.shape)))
  norm = lambda name, m: [(f'{name} scale', m.scale, same),
                          (f'{name} bias', m.bias, same)]
  for i, block in enumerate(model.blocks):
    att = block.attention
    if getattr(att.qk, 'bias', None) is not None:
      raise ValueError(f'layer {i}: the Flax attention has biases, Trax\'s '
                       f'ReformerLM attention has none (use_bias=False)')
    entries += norm(f'layer {i} attention norm', block.attention_norm)
    projections = [('w_q', att.qk.kernel)]
    if hasattr(att, 'key'):  # LocalSelfAttention: Trax's separate keys
      projections.append(('w_k', att.key.kernel))
    projections.append(('w_v', att.value.kernel))
    entries += [(f'layer {i} attention {name}', param, _transpose_heads)
                for name, param in projections]
    entries.append((f'layer {i} attention w_o', att.out.kernel, same))
    entries += norm(f'layer {i} feed-forward norm', block.ff_norm)
    for name, dense in (('first', block.ff.w1), ('second', block.ff.w2)):
      entries += [(f'layer {i} {name} feed-forward kernel', dense.kernel,
                   same),
                  (f'layer {i} {name} feed-forward bias', dense.bias, same)]
  entries += norm('the final norm', model.final_norm)
  entries += [('the output kernel', model.logits.kernel, same),
              ('the output bias', model.logits.bias, same)]
  return entries


def load_weights(model: ReformerLM, flat_weights) -> None:
  """Sets a Flax ReformerLM's parameters from Trax's flat weights list.

  Args:
    model: the Flax model, its configuration that of the Trax model.
    flat_weights: the Trax model's weights in Trax's flattening order
      (`trax.layers.flatten_weights_and_state`, a checkpoint's
      'flat_weights').

  Raises:
    ValueError: the count or a shape differs (naming the weight), which
      means the configuration differs from the Trax model's.
  """
  layout = _layout(model)
  if len(flat_weights) != len(layout):
    raise ValueError(
        f'the Trax model has {len(flat_weights)} weight arrays, a ReformerLM '
        f'with this configuration has {len(layout)}: the configuration '
        f'(n_layers, attention_type, pos_type) differs from the Trax model\'s')
  converted = []
  for index, ((what, param, convert), weight) in enumerate(
      zip(layout, flat_weights)):
    weight = np.asarray(weight)
    try:
      value = convert(weight)
    except ValueError:
      value = None
    if value is None or value.shape != param.shape:
      raise ValueError(
          f'Trax weight {index} ({what}) has shape {weight.shape}, which does '
          f'not fit the Flax parameter of shape {param.shape}: the '
          f'configuration differs from the Trax model\'s')
    converted.append((param, value))
  for param, value in converted:
    param.set_value(jnp.asarray(value, param.dtype))


def _set_hash_keys(model, hash_keys, n_heads):
  """Each LSH layer's evaluation hash_key := its Trax layer's keys."""
  for index, (block, keys) in enumerate(zip(model.blocks, hash_keys)):
    if keys is None:
      continue
    if not isinstance(block.attention, LSHSelfAttention):
      raise ValueError(f'layer {index} is LSH in the Trax model, not in the '
                       f'Flax configuration given')
    keys = keys.reshape(-1, n_heads, 2)  # pair b * N + n -> [B, N]
    block.attention.hash_key.set_value(jax.random.wrap_key_data(
        jnp.asarray(keys, jnp.uint32)))


def from_trax(model_or_path: Any, *, trax_hash_keys: bool = False,
              rngs: Optional[nnx.Rngs] = None, **config) -> ReformerLM:
  """The Flax `ReformerLM` equal to a Trax `ReformerLM`, with its weights.

  Args:
    model_or_path: a live `trax.models.ReformerLM` with weights (after
      `init` or `init_from_file`, any mode; built with `lsh_jax.trax`'s or
      Trax's own `LSHSelfAttention` / `SelfAttention`), or the path of a
      Trax checkpoint file (`model.pkl.gz` of `trax.supervised.training.
      Loop` or `trainer_lib`). A checkpoint is a pickle: only this file (and
      the `.weights.npy.gz` beside it, plain NumPy) is read, with an
      allow-list of the classes Trax writes; anything else in it is refused
      by name. Load checkpoints you trust.
    trax_hash_keys: a live model only. True: each LSH layer's evaluation
      `hash_key` becomes the keys the Trax layer's next call hashes with,
      one per (example, head) from the Trax layer's state, so the Flax
      model in evaluation hashes exactly as Trax does, for batches of the
      size the Trax model was initialised with. False (default): one key
      per layer drawn from `rngs`, any batch size.
    rngs: `nnx.Rngs` for what the weights do not give (the LSH layers'
      evaluation hash keys, the model's hash and dropout streams); default
      `nnx.Rngs(0)`.
    **config: `ReformerLM` arguments. For a live model they override what
      is read from it (e.g. `reversible=False`, `ff_chunk_size`, or an
      `attention_type` with other `n_hashes`). For a checkpoint they are the
      configuration: at least `vocab_size` and `attention_type` (Trax's
      default is dense `SelfAttention`, here `LocalSelfAttention`), plus
      every argument the Trax model was built with where it differs from
      the default.

  Returns:
    The Flax `ReformerLM`, in training mode (`model.eval()` for evaluation).

  Raises:
    TypeError: model_or_path is neither.
    ValueError: a Trax option without a Flax equivalent (named: ff_use_sru,
      ff_sparsity, loss_sparsity, pos_start_from_zero_prob, an attention
      or positional type), or a configuration the weights do not fit.
  """
  hash_keys = None
  if isinstance(model_or_path, (str, os.PathLike)):
    if trax_hash_keys:
      raise ValueError('trax_hash_keys=True needs a live Trax model (its '
                       'layers\' state), got a checkpoint path')
    for name in ('vocab_size', 'attention_type'):
      if name not in config:
        raise ValueError(
            f'from_trax with a checkpoint path needs the model\'s '
            f'configuration as ReformerLM keyword arguments (the file holds '
            f'weights only); missing: {name}')
    flat_weights = trax_checkpoint.read(model_or_path)['flat_weights']
  else:
    # A Trax layer means Trax is imported already; nothing else imports it.
    trax_layers = sys.modules.get('trax.layers')
    if trax_layers is None or not isinstance(model_or_path,
                                             trax_layers.Layer):
      raise TypeError(
          f'model_or_path must be a Trax ReformerLM (a trax.layers.Layer) or '
          f'the path of a Trax checkpoint file (model.pkl.gz), got '
          f'{type(model_or_path).__name__}')
    read, flat_weights, hash_keys = _config_of(model_or_path)
    config = dict(read, **config)
  model = ReformerLM(**config, rngs=nnx.Rngs(0) if rngs is None else rngs)
  load_weights(model, flat_weights)
  if trax_hash_keys:
    _set_hash_keys(model, hash_keys, config['n_heads'])
  return model
