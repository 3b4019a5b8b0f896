"""`lsh-jax table2` end to end at its tiny size: train, evaluate, resume.

A part of the table (two trained models, three evaluations) keeps it
to a few compilations. The accuracies of 4 training steps are not checked
(they are chance); what is checked: the run folder's files, that every
requested cell is a fraction, that the report prints the paper's numbers
beside ours, and that a rerun resumes (nothing retrained, same table).
"""
import io
import json
import os

import pytest

from lsh_jax.apps import table2

PART = dict(rows=('full', 'lsh1'), columns=('full', 'lsh2', 'lsh2x'))


@pytest.mark.filterwarnings('ignore')
def test_tiny_table_end_to_end_and_resume(tmp_path):
  folder = str(tmp_path / 'table2')
  out = io.StringIO()
  text = table2.main(table2.TINY, folder, out=out, **PART)
  for name in ('full/model.pkl', 'lsh1/model.pkl', 'results.json',
               'table2.md', 'table2.png'):
    assert os.path.exists(os.path.join(folder, name)), name
  with open(os.path.join(folder, 'results.json')) as f:
    results = json.load(f)['results']
  assert sorted(results) == ['full', 'lsh1']
  for row in results.values():
    assert sorted(row) == sorted(PART['columns'])
    assert all(0.0 <= value <= 1.0 for value in row.values())
  # The paper's cell (trained LSH-1, evaluated full) printed beside ours.
  ours = results['lsh1']['full']
  assert f'| LSH-1 | {ours:.1%} / 0.8% ({100 * (ours - 0.008):+.1f})' in text
  assert 'step      4/4 | train loss' in out.getvalue()

  again = io.StringIO()
  text_again = table2.main(table2.TINY, folder, out=again, **PART)
  # Trained models are not retrained: no progress lines.
  assert 'train loss' not in again.getvalue()
  assert text_again.split('wall time')[0] == text.split('wall time')[0]


def test_cli_lists_table2():
  from lsh_jax.apps import cli  # pylint: disable=import-outside-toplevel
  assert cli.COMMANDS['table2'] == 'lsh_jax.apps.commands.table2'
  args = cli.build_parser().parse_args(['table2', '--tiny', '--steps', '3'])
  assert args.tiny and args.steps == 3 and not args.paper
