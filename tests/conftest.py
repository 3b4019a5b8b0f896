"""Shared test set-up: quiet TensorFlow, hypothesis profiles, optional
dependencies (tiers), JAX fixtures. Imports only jax, pytest, hypothesis."""
import fnmatch
import importlib.util
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# Most of the suite's time is XLA compiling small programs, and LLVM's
# optimisation passes are most of that. The tests compile without them: the
# same XLA graphs, float32 results moved at rounding level only (every
# tolerance holds either way). LSH_JAX_TEST_XLA_OPT=1 compiles as users do
# (`make fuzz` does); docs/testing.md has the times and the last full run.
if os.environ.get('LSH_JAX_TEST_XLA_OPT') != '1':
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_backend_optimization_level=0').strip()

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


# Optional dependencies. The core tier (`make test-core`: jax, numpy and the
# test tools only) does not collect the modules that need Trax, Flax or
# Equinox; they are named after what they need, so the rule is a file-name
# glob. A module needing two (test_trax_flax_*.py, comparing Flax with Trax)
# matches both globs: it gets both markers and is collected only when both
# are installed.
def _missing(*modules):
  return [name for name in modules if importlib.util.find_spec(name) is None]


OPTIONAL = {  # marker: (module globs, packages it needs)
    'trax': (('test_trax_*.py',), ('trax', 'gin')),
    'flax': (('test_flax_*.py', 'test_trax_flax_*.py'), ('flax', 'optax')),
    'equinox': (('test_equinox_*.py',), ('equinox',)),
}
MISSING = {marker: _missing(*packages)
           for marker, (_, packages) in OPTIONAL.items()}
collect_ignore_glob = [glob for marker, (globs, _) in OPTIONAL.items()
                       if MISSING[marker] for glob in globs]
# Markers of single tests, skipped (not uncollected) without their packages.
SKIPPED = {  # marker: (packages it needs, the extra that brings them)
    'plots': (('matplotlib',), 'plots'),
    'notebook': (('nbclient', 'nbformat', 'ipykernel', 'matplotlib'),
                 'notebook'),
}
MISSING.update({marker: _missing(*packages)
                for marker, (packages, _) in SKIPPED.items()})


def pytest_report_header(config):
  del config  # unused
  lines = []
  for marker, (globs, _) in OPTIONAL.items():
    if MISSING[marker]:
      lines.append(f'not collected: tests/{", ".join(globs)} (missing '
                   f'{", ".join(MISSING[marker])}; pip install '
                   f"'lsh_jax[{marker}]')")
  for marker in SKIPPED:
    if MISSING[marker]:
      lines.append(f'skipped: tests marked `{marker}` (missing '
                   f'{", ".join(MISSING[marker])})')
  return lines


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by these markers
def pytest_collection_modifyitems(config, items):
  """Marks tests by the optional package they need (`-m 'not trax'` etc.);
  skips `plots` and `notebook` tests without their packages. `long` tests
  are deselected by the `-m 'not long'` of pyproject.toml's addopts (`make
  fuzz`: -m long)."""
  del config  # unused
  skips = {
      marker: pytest.mark.skip(
          reason=f'needs {", ".join(MISSING[marker])} (lsh_jax[{extra}])')
      for marker, (_, extra) in SKIPPED.items() if MISSING[marker]}
  for item in items:
    name = os.path.basename(str(item.fspath))
    for marker, (globs, _) in OPTIONAL.items():
      if any(fnmatch.fnmatch(name, glob) for glob in globs):
        item.add_marker(getattr(pytest.mark, marker))
    for marker, skip in skips.items():
      if marker in item.keywords:
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
