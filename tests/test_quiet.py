"""lsh_jax.apps.quiet: framework start-up lines go, everything else stays.

The noise lines are copied from a real `lsh-jax train` run with TensorFlow
2.21 and gym 0.26.2 (the expected result: those lines removed, the others
kept in order). The end-to-end check with Trax is tests/test_trax_quiet.py.
"""
import os
import sys

from lsh_jax.apps import quiet

ABSL = ('WARNING: All log messages before absl::InitializeLog() is called are '
        'written to STDERR\n')
ONEDNN = ('I0000 00:00:1796166680.295021   10712 port.cc:153] oneDNN custom '
          'operations are on. You may see slightly different numerical '
          'results due to floating-point round-off errors.\n')
CUDART = ('I0000 00:00:1796166680.296563   10712 cudart_stub.cc:31] Could not '
          'find cuda drivers on your machine, GPU will not be used.\n')
ERROR = ('E0000 00:00:1796166680.296563   10712 cuda_dnn.cc:8] a real '
         'error\n')
NOTICE = 'Gym has been unmaintained since 2022.\nPlease upgrade to Gymnasium.'


def test_start_up_lines_are_dropped_errors_and_other_output_kept():
  text = (ABSL + ONEDNN + 'ours 1\n' + CUDART + NOTICE + '\n' + ERROR +
          'Traceback (most recent call last):\n' + NOTICE + '\n')
  assert quiet.without_noise(text, NOTICE) == (
      'ours 1\n' + ERROR + 'Traceback (most recent call last):\n' + NOTICE +
      '\n')  # only one copy of the notice is gym's


def test_filtered_stderr_catches_writes_to_the_file_descriptor(capfd):
  """C++ libraries write to descriptor 2, not to sys.stderr."""
  with quiet.filtered_stderr(NOTICE):
    os.write(2, (ABSL + ONEDNN + 'kept\n').encode())
    print(NOTICE, file=sys.stderr)
  assert capfd.readouterr().err == 'kept\n'


def test_filtered_stderr_writes_back_when_the_body_raises(capfd):
  try:
    with quiet.filtered_stderr():
      os.write(2, (CUDART + 'before the error\n').encode())
      raise ImportError('no such module')
  except ImportError:
    pass
  assert capfd.readouterr().err == 'before the error\n'
