"""The package's public surface: every name in `__all__` resolves, the
re-exports are the functions their modules define, the CLI dispatches, and
the core imports and runs without any optional dependency loaded."""
import ast
import configparser
import json
import os
import pathlib
import subprocess
import sys

import pytest

import lsh_jax
from lsh_jax.apps import cli
from lsh_jax.core import weights


def test_all_names_resolve():
  missing = [name for name in lsh_jax.__all__ if not hasattr(lsh_jax, name)]
  assert missing == []


def test_attention_weights_is_reexported():
  assert lsh_jax.attention_weights is weights.attention_weights


def test_bench_hands_its_options_to_the_benchmark_driver(capfd):
  assert cli.main(['bench', '--help-run']) == 0
  assert '--lengths' in capfd.readouterr().out


def test_other_commands_reject_unknown_options(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(['explain', '--no-such-option'])
  assert exit_info.value.code == 2
  assert 'unrecognized arguments: --no-such-option' in capsys.readouterr().err


def test_oracle_alias_exposes_the_three_reference_modules():
  from lsh_jax import oracle  # pylint: disable=import-outside-toplevel
  from lsh_jax.reference import decode, lab, spec  # pylint: disable=import-outside-toplevel
  assert oracle.lsh_attention is spec.lsh_attention
  assert oracle.dotandv is lab.dotandv
  assert oracle.predict_step is decode.predict_step


# What the extras bring; the core must not load it.
OPTIONAL_MODULES = ('trax', 'tensorflow', 'flax', 'optax', 'equinox', 'gin',
                    'matplotlib', 'gym')
LIGHT_CHECK = """
import json, os, sys
from lsh_jax.apps import commands
import jax, jax.numpy as jnp
import lsh_jax, lsh_jax.core, lsh_jax.reference
q = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
out = lsh_jax.lsh_attention(q, q, hash_key=jax.random.PRNGKey(1),
                            n_buckets=2, n_hashes=2, chunk_len=4)
root = os.path.dirname(lsh_jax.__file__)
print(json.dumps(dict(
    loaded=[m for m in {modules} if m in sys.modules],
    shape=list(out.shape), finite=bool(jnp.isfinite(out).all()),
    configs=sorted(os.listdir(commands.CONFIG_DIR)),
    trax_configs=sorted(os.listdir(os.path.join(commands.CONFIG_DIR,
                                                'trax'))),
    typed=os.path.isfile(os.path.join(root, 'py.typed')))))
""".replace('{modules}', repr(OPTIONAL_MODULES))


def test_core_imports_and_runs_without_loading_optional_dependencies(
    tmp_path):
  """In a fresh interpreter, outside the checkout (in the core tier's
  virtual environment this is the installed wheel): the entry points run,
  no optional dependency is imported, and the package data ships."""
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  if 'PYTHONPATH' in os.environ:  # a checkout run without an install
    env['PYTHONPATH'] = os.environ['PYTHONPATH']
  result = subprocess.run([sys.executable, '-c', LIGHT_CHECK], cwd=tmp_path,
                          env=env, capture_output=True, text=True,
                          check=False, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(result.stdout.splitlines()[-1])
  assert report['loaded'] == []
  assert report['shape'] == [8, 4] and report['finite']
  # Every config of the checkout's configs/ ships (the wheel's copy).
  checkout = os.path.join(os.path.dirname(os.path.dirname(__file__)),
                          'configs')
  assert report['configs'] == sorted(os.listdir(checkout))
  assert report['trax_configs'] == sorted(
      os.listdir(os.path.join(checkout, 'trax')))
  assert report['typed']


def test_packaged_configs_resolve_by_name_or_former_path():
  from lsh_jax.apps import commands  # pylint: disable=import-outside-toplevel
  packaged = os.path.join(commands.CONFIG_DIR, 'reformer_copy_cpu.gin')
  for name in ('reformer_copy_cpu', 'reformer_copy_cpu.gin',
               'configs/reformer_copy_cpu.gin'):
    assert os.path.samefile(commands.resolve_config(name), packaged)
  assert 'lab_lsh_layer' in commands.packaged_configs()
  with pytest.raises(commands.CommandError,
                     match=r'config file not found: no/such.gin \(packaged '
                     r'configs: lab_lsh_layer, '):
    commands.resolve_config('no/such.gin')


def test_setup_cfg_lists_every_package():
  """setup.cfg lists its packages instead of finding them (configs/ is
  mapped to lsh_jax.configs): a new sub-package of lsh_jax or folder of
  configs/ must be listed there, or the wheel lacks it."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  setup = configparser.ConfigParser()
  setup.read(os.path.join(root, 'setup.cfg'))
  listed = set(setup['options']['packages'].split())

  def packages(top, name, holds):
    """`name` and its sub-packages: the folders under `top` with a file
    `holds` accepts."""
    found = set()
    for path, _, files in os.walk(os.path.join(root, top)):
      if any(map(holds, files)):
        folder = os.path.relpath(path, os.path.join(root, top))
        found.add(name if folder == '.' else
                  name + '.' + folder.replace(os.sep, '.'))
    return found

  expected = (packages('lsh_jax', 'lsh_jax', lambda f: f == '__init__.py') |
              packages('configs', 'lsh_jax.configs',
                       lambda f: f.endswith('.gin')))
  assert listed == expected


def _top_level_names(tree):
  """Names a module binds at its top level (defs, classes, assignments,
  imports), read from its syntax tree: nothing is imported or run."""
  names = set()
  for node in tree.body:
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      names.update(t.id for t in targets if isinstance(t, ast.Name))
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      names.update((a.asname or a.name).split('.')[0] for a in node.names)
  return names


def test_every_module_with_public_definitions_declares_all():
  """`__all__` in every module that defines a public function or class
  (lsh_jax.apps included), each of its names bound in the module."""
  root = pathlib.Path(lsh_jax.__file__).parent
  problems = []
  for path in sorted(root.rglob('*.py')):
    tree = ast.parse(path.read_text())
    declared = [node.value for node in tree.body
                if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == '__all__'
                    for t in node.targets)]
    public = [node.name for node in tree.body
              if isinstance(node, (ast.FunctionDef, ast.ClassDef))
              and not node.name.startswith('_')]
    if not declared:
      if public:
        problems.append(f'{path.relative_to(root)}: no __all__ ({public})')
      continue
    try:
      names = ast.literal_eval(declared[0])
    except ValueError:  # computed (lsh_jax.trax's layer list): not checked
      continue
    unbound = set(names) - _top_level_names(tree)
    if unbound:
      problems.append(f'{path.relative_to(root)}: __all__ names {unbound} '
                      'it does not define')
  assert problems == []
