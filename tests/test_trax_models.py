"""lsh_jax.trax.WithLSHJaxLayers: a Trax model that builds its attention in
code (Trax 1.4.1's encoder-decoder `Reformer`) gets lsh_jax's layers.

Expected values are structural (which classes the model holds, which names
`trax.layers` has afterwards); the layers' numbers are tested against Trax
in test_trax_family_*.py, and the packaged reformer_wmt_ende config trains
in test_trax_upstream_configs.py.
"""
import pytest

from trax_testing import trax_env  # noqa: F401  (fixture)


def _sublayers(layer):
  yield layer
  for sub in layer.sublayers:
    yield from _sublayers(sub)


def _tiny_reformer(mode='train'):
  from trax import models  # pylint: disable=import-outside-toplevel
  return models.Reformer(input_vocab_size=11, d_model=8, d_ff=8, n_heads=2,
                         n_encoder_layers=1, n_decoder_layers=1, mode=mode)


def _attention_kinds(model):
  """{(package, class name)} of the model's two attention layers' types."""
  names = ('EncDecAttention', 'SelfAttention')
  return {(type(layer).__module__.split('.')[0], type(layer).__name__)
          for layer in _sublayers(model) if type(layer).__name__ in names}


def test_reformer_gets_our_layers_and_trax_names_are_restored(trax_env):
  from trax import layers as tl  # pylint: disable=import-outside-toplevel

  import lsh_jax.trax as ours  # pylint: disable=import-outside-toplevel
  before = {name: getattr(tl, name) for name in ours.LAYERS
            if hasattr(tl, name)}
  assert _attention_kinds(_tiny_reformer()) == {
      ('trax', 'EncDecAttention'), ('trax', 'SelfAttention')}
  model = ours.WithLSHJaxLayers(mode='eval', model=_tiny_reformer)
  assert _attention_kinds(model) == {('lsh_jax', 'EncDecAttention'),
                                     ('lsh_jax', 'SelfAttention')}
  assert {name: getattr(tl, name) for name in before} == before
  assert _attention_kinds(_tiny_reformer()) == {
      ('trax', 'EncDecAttention'), ('trax', 'SelfAttention')}


def test_names_are_restored_when_the_model_fails(trax_env):
  from trax import layers as tl  # pylint: disable=import-outside-toplevel

  import lsh_jax.trax as ours  # pylint: disable=import-outside-toplevel
  original = tl.SelfAttention

  def broken(mode):
    assert tl.SelfAttention is ours.SelfAttention
    raise RuntimeError(f'cannot build in {mode}')

  with pytest.raises(RuntimeError, match='cannot build in train'):
    ours.WithLSHJaxLayers(model=broken)
  assert tl.SelfAttention is original


def test_model_must_be_callable(trax_env):
  import lsh_jax.trax as ours  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match='model must be a Trax model function'):
    ours.WithLSHJaxLayers(model='trax.models.Reformer')
