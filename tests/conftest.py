"""Shared test set-up: quiet TensorFlow, hypothesis profiles, JAX fixtures."""
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import hypothesis  # noqa: E402
import jax  # noqa: E402
import pytest  # noqa: E402

# jax's own test profile: reproducible in CI, no deadline (the first example
# of a shape pays for compilation), no example database on disk.
hypothesis.settings.register_profile(
    'ci', derandomize=True, deadline=None, database=None, max_examples=30,
    suppress_health_check=[hypothesis.HealthCheck.too_slow])
# `make fuzz`: the long campaign, same determinism.
hypothesis.settings.register_profile(
    'fuzz', derandomize=True, deadline=None, database=None,
    max_examples=int(os.environ.get('LSH_FUZZ_EXAMPLES', '2000')),
    suppress_health_check=list(hypothesis.HealthCheck))
hypothesis.settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'ci'))

# Tests marked `long` (more settings of a check `make test` already makes,
# multi-device Trax training) run in `make fuzz`, or with LSH_LONG_TESTS=1.
RUN_LONG = (os.environ.get('LSH_LONG_TESTS') == '1' or
            os.environ.get('HYPOTHESIS_PROFILE') == 'fuzz')


def pytest_configure(config):
  config.addinivalue_line(
      'markers', 'long: part of `make fuzz` (or LSH_LONG_TESTS=1), skipped '
      'by `make test` to keep it fast')


def pytest_collection_modifyitems(config, items):
  if RUN_LONG:
    return
  skip = pytest.mark.skip(reason='long: run by `make fuzz` or with '
                          'LSH_LONG_TESTS=1')
  for item in items:
    if 'long' in item.keywords:
      item.add_marker(skip)


@pytest.fixture(autouse=True)
def _clear_gin_after_each_test():
  """Commands such as `lsh-jax sample` leave their config parsed (gin is
  global); a later test's layers would pick its bindings up."""
  yield
  if 'gin' in sys.modules:
    sys.modules['gin'].clear_config()


@pytest.fixture
def old_threefry():
  """Reproduces random draws of older JAX (the lab's published numbers).

  Only tests flip this flag, and they restore it: the library never does.
  """
  previous = jax.config.jax_threefry_partitionable
  jax.config.update('jax_threefry_partitionable', False)
  yield
  jax.config.update('jax_threefry_partitionable', previous)


@pytest.fixture(scope='session')
def trax_ea():
  """Trax 1.4.1's efficient_attention module (imported once, ~15 s)."""
  from trax.layers.research import efficient_attention
  return efficient_attention
