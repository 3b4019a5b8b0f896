"""Keeps framework start-up noise off the terminal of `lsh-jax` commands.

Importing Trax loads TensorFlow (twice over: tensorflow and tensorflow_text)
and gym. TensorFlow's C++ code logs start-up lines through absl before absl
is initialised (`WARNING: All log messages before absl::InitializeLog() ...`,
`I... port.cc] oneDNN custom operations are on ...`, `I... cudart_stub.cc]
Could not find cuda drivers ...`); TF_CPP_MIN_LOG_LEVEL does not reach them
(TensorFlow 2.21). gym prints a deprecation notice with print(file=stderr).
Both write while Trax is imported, so `import_trax_quietly` runs that import
with the process's stderr (file descriptor 2, which C++ writes to) captured,
drops exactly those lines and writes everything else back.

Real errors still show: exceptions propagate, absl ERROR and FATAL lines
and any other output are written back, Python warnings are untouched.
TF_ENABLE_ONEDNN_OPTS is left alone: it would silence a line by changing
numerics.
"""
import contextlib
import importlib.metadata
import importlib.util
import io
import os
import re
import sys
import tempfile

__all__ = [
    'NOISE', 'TF_LOG_LEVEL', 'filtered_stderr', 'gym_notice',
    'import_trax_quietly', 'without_noise'
]

# TensorFlow C++ log levels: 0 all, 1 no INFO, 2 no WARNING, 3 no ERROR.
# For the messages that do honour it (after start-up); the user's wins.
TF_LOG_LEVEL = '2'

# absl's line before initialisation, and INFO/WARNING lines in absl's format
# (`I0000 00:00:1796166680.295021   10712 port.cc:153] ...`).
NOISE = (
    re.compile(r'^WARNING: All log messages before absl::InitializeLog\(\) '
               r'is called are written to STDERR$'),
    re.compile(r'^[IW]\d{4} [\d:.]+ +\d+ [\w.-]+:\d+\] '),
)


def gym_notice() -> str:
  """The notice gym prints on import ('' if none or no gym)."""
  try:
    # Not `import gym`: that prints the notice.
    version = importlib.metadata.version('gym')
    # pylint: disable-next=import-outside-toplevel
    from gym_notices import notices
  except Exception:  # pylint: disable=broad-except  (no gym: no notice)
    return ''
  return notices.notices.get(version, '')


def without_noise(text: str, notice: str = '') -> str:
  """`text` less the start-up lines of NOISE and one copy of `notice`."""
  if notice:
    text = text.replace(notice + '\n', '', 1)
  return ''.join(line for line in text.splitlines(keepends=True)
                 if not any(pattern.match(line) for pattern in NOISE))


@contextlib.contextmanager
def filtered_stderr(notice: str = ''):
  """Captures stderr meanwhile, file descriptor 2 (C++ writes) and
  sys.stderr (Python writes) both, and writes it back without the noise,
  also when the body raises. Captured C++ output comes back first."""
  sys.stderr.flush()
  saved = os.dup(2)
  python_text = io.StringIO()
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      with contextlib.redirect_stderr(python_text):
        yield
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      text = captured.read().decode('utf-8', errors='replace')
      sys.stderr.write(without_noise(text + python_text.getvalue(), notice))
      sys.stderr.flush()


def import_trax_quietly() -> None:
  """Imports Trax (if installed and not yet imported) without the noise."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', TF_LOG_LEVEL)
  if 'trax' in sys.modules or importlib.util.find_spec('trax') is None:
    return  # a missing Trax is reported by the command that needs it
  with filtered_stderr(gym_notice()):
    # trax.supervised.trainer_lib brings in gym (through trax.rl).
    importlib.import_module('trax.supervised.trainer_lib')
