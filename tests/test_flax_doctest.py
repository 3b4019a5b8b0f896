"""The `>>>` examples in lsh_jax.flax's docstrings run and print what they say.

Expected values are derived independently of the code: output shapes from
the arguments, and identical input tokens getting identical outputs (every
attention averages the same value at every position).
"""
import doctest
import importlib
import pkgutil

import pytest

import lsh_jax.flax

# Every module class lsh_jax.flax exports has an example (from_trax needs a
# Trax model or checkpoint: it is documented in docs/flax.md instead).
MODULES = ('LSHSelfAttention', 'SelfAttention', 'LocalSelfAttention',
           'ReformerLM')
FLAX_MODULES = sorted(
    f'lsh_jax.flax.{m.name}'
    for m in pkgutil.iter_modules(lsh_jax.flax.__path__))


@pytest.mark.parametrize('name', MODULES)
def test_module_has_an_example(name):
  assert '>>> ' in getattr(lsh_jax.flax, name).__doc__, name


@pytest.mark.parametrize('module_name', FLAX_MODULES)
def test_flax_examples_run(module_name):
  module = importlib.import_module(module_name)
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS,
                           raise_on_error=False, verbose=False)
  assert result.failed == 0, f'{module_name}: {result}'
