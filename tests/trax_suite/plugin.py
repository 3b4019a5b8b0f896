"""pytest plugin: Trax 1.4.1's own tests with lsh_jax's layers in Trax's place.

Load it with `python -m pytest -p trax_suite.plugin` (tests/ on PYTHONPATH)
on test files taken from Trax's source distribution (see
`trax_suite.sources`). Before any test module is imported it:

1. puts back the few JAX names Trax's 2021 test files import and JAX 0.10
   removed (`jax.test_util`, `jax.config` as a module, `jax.tree_map`,
   `jax.tree_structure`). Only the test files use them; no attention code of
   Trax or lsh_jax runs through these shims.
2. substitutes every class `lsh_jax.trax` exports for Trax's class of the
   same name where Trax's tests and models look it up: `trax.layers.X`,
   `trax.layers.research.efficient_attention.X`, and the argument defaults
   bound at import time in Trax's modules (`ReformerLM(attention_type=
   tl.SelfAttention)`, `ConfigurableTerraformer(encoder_attention_type=...)`).

3. records, per test, which attention classes were built (module:Class,
   e.g. `lsh_jax:LSHSelfAttention` or `trax:SelfAttention`) as the junit
   property `attention`, so the tally can tell a test that ran lsh_jax's
   layers from one that never built one (or still built Trax's).

Set LSH_TRAX_SUITE_SUBSTITUTE=0 to run the same tests on Trax's own classes
(the baseline: what Trax 1.4.1 itself passes on this JAX).
"""
import importlib
import inspect
import os
import pkgutil
import sys
import types

SUBSTITUTE = os.environ.get('LSH_TRAX_SUITE_SUBSTITUTE', '1') != '0'
# Where the plugin writes which Trax classes it replaced (one name a line).
REPORT_ENV = 'LSH_TRAX_SUITE_REPORT'


def _jax_shims():
  """Old JAX names the test files import (not used by any layer)."""
  import jax  # pylint: disable=import-outside-toplevel
  if 'jax.test_util' not in sys.modules:
    try:
      importlib.import_module('jax.test_util')
    except ImportError:
      sys.modules['jax.test_util'] = types.ModuleType('jax.test_util')
  try:
    importlib.import_module('jax.config')
  except ImportError:
    module = types.ModuleType('jax.config')
    module.config = jax.config
    sys.modules['jax.config'] = module
  for name in ('tree_map', 'tree_structure', 'tree_leaves', 'tree_flatten',
               'tree_unflatten'):
    if not hasattr(jax, name):
      setattr(jax, name, getattr(jax.tree_util, name))


def _import_trax_modules():
  """Trax's model and training modules, so their defaults can be patched."""
  import trax  # pylint: disable=import-outside-toplevel
  for package in ('trax.layers', 'trax.models', 'trax.supervised'):
    module = importlib.import_module(package)
    for info in pkgutil.walk_packages(module.__path__, package + '.'):
      if info.name.endswith('_test') or '.testdata' in info.name:
        continue
      try:
        importlib.import_module(info.name)
      except Exception:  # pylint: disable=broad-except
        # A research module with an optional dependency missing: it holds
        # no efficient-attention default a selected test reaches.
        pass
  return trax


def _replace(value, mapping):
  """value with every Trax class in `mapping` swapped, lists/tuples too."""
  if isinstance(value, (list, tuple)):
    items = [_replace(v, mapping) for v in value]
    if all(a is b for a, b in zip(items, value)):
      return value  # unchanged: the same object, so callers see no change
    return type(value)(items)
  try:
    return mapping.get(id(value), value)
  except TypeError:
    return value


def _patch_defaults(fn, mapping):
  fn = inspect.unwrap(fn)
  if not inspect.isfunction(fn):
    return False
  changed = False
  if fn.__defaults__:
    new = tuple(_replace(v, mapping) for v in fn.__defaults__)
    changed |= any(a is not b for a, b in zip(new, fn.__defaults__))
    fn.__defaults__ = new
  if fn.__kwdefaults__:
    new = {k: _replace(v, mapping) for k, v in fn.__kwdefaults__.items()}
    changed |= any(new[k] is not fn.__kwdefaults__[k] for k in new)
    fn.__kwdefaults__ = new
  return changed


def substitute():
  """Swaps Trax's attention classes for lsh_jax's; returns the report."""
  _import_trax_modules()
  import trax.layers as tl  # pylint: disable=import-outside-toplevel
  from trax.layers.research import efficient_attention as ea  # pylint: disable=import-outside-toplevel

  import lsh_jax.trax as ours  # pylint: disable=import-outside-toplevel
  mapping, report = {}, []
  for name in ours.LAYERS:
    replacement = getattr(ours, name)
    for owner in (tl, ea):
      original = getattr(owner, name, None)
      if isinstance(original, type):
        mapping[id(original)] = replacement
        setattr(owner, name, replacement)
    report.append(f'class {name}')
  for module_name, module in sorted(sys.modules.items()):
    if not module_name.startswith('trax.') or module is None:
      continue
    for attr, value in list(vars(module).items()):
      candidates = [value]
      if isinstance(value, type):
        candidates = [v for v in vars(value).values()
                      if inspect.isfunction(v)]
      for fn in candidates:
        if callable(fn) and _patch_defaults(fn, mapping):
          report.append(f'defaults {module_name}.{attr}')
  return report


FAMILY = ('SelfAttention', 'LSHSelfAttention', 'PureLSHSelfAttention',
          'PureLSHSelfAttentionWrapper', 'MixedLSHSelfAttention',
          'EncDecAttention')
_BUILT = set()


def _record_builds():
  """Wraps the __init__ of Trax's attention classes (ours subclass them or
  sit beside them) to note the concrete class of every layer built."""
  from trax.layers.research import efficient_attention as ea  # pylint: disable=import-outside-toplevel
  classes = [getattr(ea, name) for name in FAMILY if hasattr(ea, name)]
  try:
    import lsh_jax.trax as ours  # pylint: disable=import-outside-toplevel
    classes += [getattr(ours, name) for name in ours.LAYERS]
  except ImportError:
    pass
  for cls in set(classes):
    original = cls.__dict__.get('__init__')
    if original is None or getattr(original, '_suite_spy', False):
      continue

    def init(self, *args, __original=original, **kwargs):
      kind = type(self)
      owner = kind.__module__.split('.')[0]
      _BUILT.add(f'{owner}:{kind.__name__}')
      __original(self, *args, **kwargs)
    init._suite_spy = True  # pylint: disable=protected-access
    cls.__init__ = init


def pytest_runtest_setup(item):  # pylint: disable=unused-argument
  _BUILT.clear()


def pytest_runtest_teardown(item):
  item.user_properties.append(('attention', ','.join(sorted(_BUILT))))


def pytest_configure(config):  # pylint: disable=unused-argument
  _jax_shims()
  # Trax's absltest-based tests read absl flags (--test_tmpdir); pytest does
  # not parse them, so mark them parsed with their defaults.
  from absl import flags  # pylint: disable=import-outside-toplevel
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  report = substitute() if SUBSTITUTE else ['(none: Trax baseline)']
  _record_builds()
  path = os.environ.get(REPORT_ENV)
  if path:
    with open(path, 'w') as f:
      f.write('\n'.join(report) + '\n')
