"""The `>>>` examples in lsh_jax.core's docstrings run and print what they say.

Expected values in the examples are derived independently of the code:
shapes from the arguments, rows of a probability matrix summing to one,
constant values averaging to themselves, causal position 0 seeing only
itself, the automatic bucket count from its rule (two buckets a chunk).
"""
import doctest
import importlib
import pkgutil

import pytest

import lsh_jax
import lsh_jax.core

# Every entry point has an example (so the test fails if one goes missing).
ENTRY_POINTS = ('lsh_attention', 'lsh_attention_from_buckets',
                'lsh_self_attention', 'full_attention', 'attention_weights',
                'hash_vectors', 'auto_n_buckets')
CORE_MODULES = sorted(
    f'lsh_jax.core.{m.name}'
    for m in pkgutil.iter_modules(lsh_jax.core.__path__))


@pytest.mark.parametrize('name', ENTRY_POINTS)
def test_entry_point_has_an_example(name):
  assert '>>> ' in getattr(lsh_jax, name).__doc__, name


@pytest.mark.parametrize('module_name', CORE_MODULES)
def test_core_examples_run(module_name):
  module = importlib.import_module(module_name)
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS,
                           raise_on_error=False, verbose=False)
  assert result.failed == 0, f'{module_name}: {result}'
