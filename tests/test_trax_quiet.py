"""A command that imports Trax shows our output only (no TensorFlow, absl
or gym start-up lines), and real errors still reach the terminal.

The cheapest command path that imports Trax: `lsh-jax train` with a binding
gin rejects (Trax is imported, then the config fails to parse, exit 2). Run
in a fresh interpreter without TF_CPP_MIN_LOG_LEVEL, as a user's shell is.
"""
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Substrings of the lines a bare `import trax` prints (TensorFlow 2.21,
# gym 0.26.2), observed in `make demo` before this was fixed.
NOISE = ('absl::InitializeLog', 'oneDNN', 'cudart', 'cuda drivers',
         'Gym has been unmaintained', 'Gymnasium')


def test_a_trax_command_prints_no_framework_start_up_lines(tmp_path):
  env = {k: v for k, v in os.environ.items()
         if k not in ('TF_CPP_MIN_LOG_LEVEL', 'PYTHONPATH')}
  env['PYTHONPATH'] = os.pathsep.join(
      [str(ROOT)] + [p for p in [os.environ.get('PYTHONPATH')] if p])
  result = subprocess.run(
      [sys.executable, '-m', 'lsh_jax.apps.cli', 'train', 'lab_lsh_layer',
       '--output-dir', str(tmp_path / 'run'), '-b', 'no_such_thing.x = 1'],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
      check=False)
  output = result.stdout + result.stderr
  assert result.returncode == 2, output
  # The real error is there, on one line, and nothing else is.
  assert result.stderr.splitlines() == [
      line for line in result.stderr.splitlines()
      if line.startswith('lsh-jax train: error: ')], output
  assert 'no_such_thing' in result.stderr
  assert not [word for word in NOISE if word in output], output
