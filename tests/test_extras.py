"""A missing extra is one line naming it and its install command.

Every `lsh-jax` command and option that needs an extra exits with status 2
before any work (nothing on stdout, no file written) and prints one line
on stderr; `import lsh_jax.trax` / `lsh_jax.flax` / `lsh_jax.equinox`
raise an ImportError saying the same. Expected: the wording issue 25 asks
for (the extra's name, `pip install 'lsh_jax[EXTRA]'`, the demo's
`--framework flax`).

The extras are made absent in a fresh interpreter (`sys.modules[name] =
None`: `import name` fails and `importlib.util.find_spec` reports it
missing), so the test means the same in the core tier, where they are not
installed, and in the full environment, where they are.
"""
import configparser
import json
import os
import re
import subprocess
import sys

from lsh_jax import _extras

ABSENT = ('trax', 'gin', 'optax', 'flax', 'equinox', 'matplotlib')
SCRIPT = """
import contextlib, importlib, io, json, sys
for name in {absent}:
  sys.modules[name] = None
from lsh_jax.apps import cli
results = {{}}
for argv in json.loads(sys.argv[1]):
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      status = cli.main(argv)
    except SystemExit as exit:
      status = exit.code
  results[' '.join(argv)] = [status, out.getvalue(), err.getvalue()]
for package in ('lsh_jax.trax', 'lsh_jax.flax', 'lsh_jax.equinox'):
  try:
    importlib.import_module(package)
    results[package] = 'imported'
  except ImportError as error:
    results[package] = str(error)
print(json.dumps(results))
""".format(absent=repr(ABSENT))

DEMO_ALTERNATIVE = ', or the Flax version: lsh-jax demo --framework flax'
# argv -> (the extra it needs, what follows the install command).
CASES = {
    'train reformer_copy_cpu': ('trax', ''),
    'evaluate reformer_copy_cpu run/model.pkl.gz': ('trax', ''),
    'demo': ('trax', DEMO_ALTERNATIVE),
    'demo --framework flax': ('flax', ''),
    'sample run': ('trax', ', or for a Flax run folder: lsh-jax sample '
                   '--framework flax'),
    'sample run --framework flax': ('flax', ''),
    'table2 --tiny': ('trax', ''),
    'bench': ('trax', ''),
    'explain --plot e.png': ('plots', ''),
    'quality --plot q.png': ('plots', ''),
    'quality --run-dir run': ('trax', ''),
}


def expected_line(extra):
  modules = ', '.join(_extras.MODULES[extra])
  return (f'needs the {extra} extra (not installed: {modules}): '
          f"pip install 'lsh_jax[{extra}]'")


def test_commands_and_packages_name_the_missing_extra(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  if 'PYTHONPATH' in os.environ:  # a checkout run without an install
    env['PYTHONPATH'] = os.environ['PYTHONPATH']
  argvs = [argv.split() for argv in CASES]
  result = subprocess.run([sys.executable, '-c', SCRIPT, json.dumps(argvs)],
                          cwd=tmp_path, env=env, capture_output=True,
                          text=True, check=False, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  results = json.loads(result.stdout.splitlines()[-1])
  for argv, (extra, after) in CASES.items():
    status, out, err = results[argv]
    command = argv.split()[0]
    assert (status, out, err) == (
        2, '', f'lsh-jax {command}: error: {expected_line(extra)}{after}\n'
    ), argv
  assert os.listdir(tmp_path) == []  # no run folder, no figure
  for package in ('trax', 'flax', 'equinox'):
    assert results[f'lsh_jax.{package}'] == (
        f'lsh_jax.{package} {expected_line(package)}')


def test_every_extra_checked_is_declared_in_setup_cfg():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  setup = configparser.ConfigParser()
  setup.read(os.path.join(root, 'setup.cfg'))
  declared = setup['options.extras_require']
  for extra, modules in _extras.MODULES.items():
    # Each module's distribution is a requirement of the extra (gin's is
    # gin-config).
    requirements = [re.split(r'[<>=!~ ;\[]', line)[0].replace('-config', '')
                    for line in declared[extra].split()]
    assert set(modules) <= set(requirements), extra


def test_nothing_missing_is_no_message():
  present = [extra for extra in _extras.MODULES if not _extras.missing(extra)]
  assert _extras.message(*present) is None
