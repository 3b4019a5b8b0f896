"""The `>>>` examples in lsh_jax.flax's docstrings run and print what they say.

Expected values are derived independently of the code: output shapes from
the arguments, identical input tokens getting identical outputs (every
attention averages the same value at every position), sampled tokens within
the vocabulary.
"""
import pytest

import helpers
import lsh_jax.flax

# Everything lsh_jax.flax exports has an example, but from_trax (it needs a
# Trax model or checkpoint: documented in docs/flax.md instead).
EXPORTS = ('LSHSelfAttention', 'SelfAttention', 'LocalSelfAttention',
           'ReformerLM', 'generate')


@pytest.mark.parametrize('name', EXPORTS)
def test_export_has_an_example(name):
  assert '>>> ' in getattr(lsh_jax.flax, name).__doc__, name


@pytest.mark.parametrize('module_name', helpers.package_modules(lsh_jax.flax))
def test_flax_examples_run(module_name):
  helpers.assert_doctests_pass(module_name)
