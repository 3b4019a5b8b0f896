"""The `>>>` examples in lsh_jax.core's docstrings run and print what they say.

Expected values in the examples are derived independently of the code:
shapes from the arguments, rows of a probability matrix summing to one,
constant values averaging to themselves, one chunk of every token giving
dense attention, the automatic bucket count from Trax's rule.
"""
import pytest

import helpers
import lsh_jax
import lsh_jax.core

# Every entry point has an example (so the test fails if one goes missing).
ENTRY_POINTS = ('lsh_attention', 'lsh_attention_from_buckets',
                'lsh_self_attention', 'full_attention', 'attention_weights',
                'hash_vectors', 'auto_n_buckets')


@pytest.mark.parametrize('name', ENTRY_POINTS)
def test_entry_point_has_an_example(name):
  assert '>>> ' in getattr(lsh_jax, name).__doc__, name


@pytest.mark.parametrize('module_name', helpers.package_modules(lsh_jax.core))
def test_core_examples_run(module_name):
  helpers.assert_doctests_pass(module_name)
