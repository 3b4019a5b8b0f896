"""Trax 1.4.1's own tests with lsh_jax's classes in Trax's place (long tier).

Trax's test files come from its source distribution on PyPI (downloaded
once into a cache, never committed here; `trax_suite.sources`); the
`trax_suite.plugin` substitutes every class `lsh_jax.trax` exports where
Trax's tests and models look it up, and records which attention classes
each test built. The expected result of each test is Trax's own assertion;
this module adds, for a passing test, that it built lsh_jax's layers and
none of Trax's efficient-attention layers.

A failing Trax test is accepted only when listed in KNOWN with its reason:
a deliberate difference (documented in docs/trax_configs.md, with its own
test of ours named here) or Trax's own test being broken on this JAX
version whatever the class (shown by the baseline run, `--baseline`).
A test that still builds a Trax class lsh_jax does not have yet is xfail.
The two small tests at the end check the plugin and the sdist extraction
without running Trax's tests or downloading anything; they run in `make
test`'s Trax tier (the module, test_trax_*.py, is collected only where
Trax is installed).

Run: pytest -m long tests/test_trax_suite.py (about 12 min on two quiet
cores), or `python -m trax_suite.runner` for the tally alone.
"""
import io
import tarfile

import pytest

from trax_suite import plugin
from trax_suite import runner
from trax_suite import sources

# test id -> (kind, why), from the run reported in docs/trax_configs.md.
# 'deliberate': a documented difference with its own test of ours.
_EA = 'efficient_attention_test.py::EfficientAttentionTest::'
KNOWN = {
    _EA + 'test_lsh_self_attention_masked_non_causal': (
        'deliberate', 'padded query positions output zeros in lsh_jax; '
        "Trax's test asserts they change with the padded input "
        '(docs/trax_family.md; tests/test_reliability.py, '
        'tests/test_weights.py)'),
}


@pytest.fixture(scope='module')
def suite_results():
  return runner.run()


@pytest.mark.long
@pytest.mark.parametrize('test_id', runner.test_ids())
def test_trax_test_passes_with_lsh_jax_classes(suite_results, test_id):
  import lsh_jax.trax as ours  # pylint: disable=import-outside-toplevel
  outcome, message, built = suite_results.get(test_id, ('not run', '', ''))
  built = [name for name in built.split(',') if name]
  trax_built = sorted({name.split(':')[1] for name in built
                       if name.startswith('trax:')})
  absent = [name for name in trax_built if name not in ours.LAYERS]
  if absent:
    pytest.xfail(f'lsh_jax.trax has no {", ".join(absent)} yet: the test '
                 f"ran Trax's class ({outcome})")
  assert not trax_built, f"Trax's {trax_built} built: substitution missed it"
  if test_id in KNOWN:
    kind, why = KNOWN[test_id]
    assert outcome != 'passed', f'{test_id} passes now: drop it from KNOWN'
    pytest.xfail(f'{kind}: {why}')
  assert outcome == 'passed', f'{outcome}: {message}'


def test_plugin_swaps_classes_in_defaults_bound_at_import():
  """What Trax's `ReformerLM(attention_type=tl.SelfAttention)` needs: the
  default, in a list too (`[SA, LSH]`), and a keyword-only default."""
  class Theirs:
    pass

  class Ours:
    pass

  def model(attention_type=Theirs, mixed=(Theirs, 'x'), *, other=Theirs):
    return attention_type, mixed, other

  def wrapper(*args, **kwargs):  # what gin's decorator looks like
    return model(*args, **kwargs)
  wrapper.__wrapped__ = model
  assert plugin._patch_defaults(wrapper, {id(Theirs): Ours})  # pylint: disable=protected-access
  assert wrapper() == (Ours, (Ours, 'x'), Ours)
  assert not plugin._patch_defaults(wrapper, {id(Theirs): Ours})  # pylint: disable=protected-access


def test_sources_extract_the_test_files_from_an_sdist(tmp_path, monkeypatch):
  """No network: LSH_TRAX_SDIST names a tarball laid out as Trax's sdist."""
  tarball = tmp_path / 'trax-1.4.1.tar.gz'
  with tarfile.open(tarball, 'w:gz') as tar:
    for name in sources.FILES:
      data = f'# {name}\n'.encode()
      info = tarfile.TarInfo(f'trax-1.4.1/trax/{name}')
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  monkeypatch.setenv('LSH_TRAX_SDIST', str(tarball))
  monkeypatch.setenv('LSH_TRAX_CACHE', str(tmp_path / 'cache'))
  paths = sources.test_files()
  assert sorted(paths) == sorted(sources.FILES)
  for name, path in paths.items():
    with open(path) as f:
      assert f.read() == f'# {name}\n'
  monkeypatch.setenv('LSH_TRAX_SDIST', str(tmp_path / 'missing.tar.gz'))
  with pytest.raises(FileNotFoundError, match='LSH_TRAX_SDIST'):
    sources.test_files()
