"""Trax models that build their attention in code, with lsh_jax's layers.

Most Trax models take their attention class as an argument, so a gin
binding selects lsh_jax's (docs/trax_configs.md). Trax 1.4.1's
encoder-decoder `trax.models.Reformer` does not: its `EncoderDecoderBlock`
calls `tl.EncDecAttention(...)` and `tl.SelfAttention(...)` in its code.
`WithLSHJaxLayers` builds such a model while Trax's layer names point at
lsh_jax's classes:

  train.model = @lsh_jax.WithLSHJaxLayers
  WithLSHJaxLayers.model = @trax.models.Reformer

Every `Reformer.*` binding of the config still applies (gin passes them
when `WithLSHJaxLayers` calls the model). The names are replaced in
`trax.layers` only while the model is constructed and restored afterwards,
even on error; construction is not thread-safe (another thread building a
Trax model at the same moment would also get lsh_jax's layers).
"""
import contextlib

import gin
from trax import layers as tl

import lsh_jax.trax as ours

__all__ = ['lsh_jax_layers', 'WithLSHJaxLayers']


@contextlib.contextmanager
def lsh_jax_layers():
  """Inside: `trax.layers.<Name>` is `lsh_jax.trax.<Name>` for every layer
  lsh_jax provides (`lsh_jax.trax.LAYERS`); restored on exit."""
  saved = {name: getattr(tl, name) for name in ours.LAYERS
           if hasattr(tl, name)}
  try:
    for name in saved:
      setattr(tl, name, getattr(ours, name))
    yield
  finally:
    for name, layer in saved.items():
      setattr(tl, name, layer)


@gin.configurable(module='lsh_jax')
def WithLSHJaxLayers(mode='train', model=gin.REQUIRED):  # pylint: disable=invalid-name
  """`model(mode=mode)` built with lsh_jax's layers in Trax's names.

  Args:
    mode: 'train', 'eval' or 'predict', passed to `model` (Trax's trainer
      and decoders pass it).
    model: a Trax model function, e.g. `trax.models.Reformer`.

  Returns:
    The Trax layer `model` returns.
  """
  if not callable(model):
    raise ValueError(f'model must be a Trax model function (for example '
                     f'@trax.models.Reformer), got {model!r}')
  with lsh_jax_layers():
    return model(mode=mode)
