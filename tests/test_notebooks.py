"""The notebooks of examples/ run as a learner runs them (marker `notebook`).

Each is stored without outputs and executed here with nbclient, in an
ipykernel kernel of the interpreter running the tests. Expected: every cell
runs without error, and the notebook's own checks held: each `check(...)`
call asserts that lsh_jax and the oracle agree (a failed one raises in its
cell), and the last cell reports as many checks as the source holds, so a
check skipped or removed from the run shows too.
"""
import json
import os
import re
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'examples')


def _kernel_of_this_interpreter(folder):
  """A kernel spec running sys.executable, in a Jupyter path of its own
  (another `python3` kernel installed on the machine is not used)."""
  spec = os.path.join(folder, 'kernels', 'lsh_jax_tests')
  os.makedirs(spec)
  with open(os.path.join(spec, 'kernel.json'), 'w') as f:
    json.dump({'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f',
                        '{connection_file}'],
               'display_name': 'lsh_jax tests', 'language': 'python'}, f)
  return 'lsh_jax_tests'


@pytest.mark.notebook
def test_lab_step5_runs_and_its_checks_hold(tmp_path, monkeypatch):
  import nbclient  # pylint: disable=import-outside-toplevel
  import nbformat  # pylint: disable=import-outside-toplevel
  notebook = nbformat.read(os.path.join(EXAMPLES, 'lab_step5.ipynb'),
                           as_version=4)
  code = [cell for cell in notebook.cells if cell.cell_type == 'code']
  assert not any(cell.outputs for cell in code), 'stored with outputs'
  monkeypatch.setenv('JUPYTER_PATH', str(tmp_path / 'jupyter'))
  kernel = _kernel_of_this_interpreter(str(tmp_path / 'jupyter'))
  # The kernel inherits this process's environment (PYTHONPATH, XLA_FLAGS);
  # it runs in tmp_path, where the figure is written.
  nbclient.NotebookClient(notebook, timeout=300, kernel_name=kernel,
                          resources={'metadata': {'path': str(tmp_path)}}
                          ).execute()
  n_checks = sum(len(re.findall(r'^check\(', cell.source, re.MULTILINE))
                 for cell in code)
  last = ''.join(output.get('text', '') for output in code[-1].outputs)
  assert n_checks >= 15 and last == f'all {n_checks} checks passed\n'
  figures = [output for cell in code for output in cell.outputs
             if 'image/png' in output.get('data', {})]
  assert len(figures) == 1  # the explain figure, inline
