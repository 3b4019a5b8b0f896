"""The PyTorch peers' own venv (benchmarks/.venv-peers), made on demand.

torch, transformers and reformer-pytorch go there only: PyTorch never
becomes a dependency of lsh_jax or of its venv.
"""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(HERE, '.venv-peers')
REQUIREMENTS = os.path.join(HERE, 'requirements-peers.txt')
PYTHON = os.path.join(VENV, 'bin', 'python')
_CHECK = ('import torch, transformers, reformer_pytorch; '
          'from transformers.models.reformer.modeling_reformer import '
          'LSHSelfAttention')


def _works():
  if not os.path.exists(PYTHON):
    return False
  return subprocess.run([PYTHON, '-c', _CHECK], capture_output=True).returncode == 0


def ensure(log=print):
  """Returns (python path, None), or (None, reason) if the peers can't run."""
  if _works():
    return PYTHON, None
  log(f'[bench] installing the PyTorch peers into {VENV} '
      f'({REQUIREMENTS}; a minute or two) ...')
  try:
    if not os.path.exists(PYTHON):
      subprocess.run(['python3', '-m', 'venv', VENV], check=True)
    subprocess.run([PYTHON, '-m', 'pip', 'install', '-q', '--upgrade', 'pip'],
                   check=True, capture_output=True)
    # torch first and alone: with it in place, the others' `torch` ranges are
    # satisfied and pip does not reach for a CUDA build.
    subprocess.run([PYTHON, '-m', 'pip', 'install', '-q', 'torch==2.13.0'],
                   check=True)
    subprocess.run([PYTHON, '-m', 'pip', 'install', '-q', '-r', REQUIREMENTS],
                   check=True)
  except (subprocess.CalledProcessError, OSError) as e:
    return None, f'PyTorch peers unavailable: installing them failed ({e})'
  if not _works():
    return None, 'PyTorch peers unavailable: installed but not importable'
  return PYTHON, None


if __name__ == '__main__':
  python, reason = ensure()
  print(python or reason)
  sys.exit(0 if python else 1)
