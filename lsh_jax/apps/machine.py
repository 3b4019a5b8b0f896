"""The machine a measurement ran on, printed beside the numbers."""
import os
import platform

__all__ = ['cpu_model', 'describe', 'info']


def cpu_model() -> str:
  """The CPU's model name (Linux), else what `platform` knows."""
  try:
    with open('/proc/cpuinfo') as f:
      return next(line.split(':', 1)[1].strip() for line in f
                  if line.startswith('model name'))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine()


def info() -> dict:
  """Python version, cores, CPU, memory (GB) and load average; no JAX."""
  result = {'python': platform.python_version(), 'cores': os.cpu_count(),
            'cpu': cpu_model()}
  try:
    with open('/proc/meminfo') as f:
      result['mem_gb'] = round(int(f.readline().split()[1]) / 2**20, 1)
    result['load'] = os.getloadavg()
  except (OSError, ValueError, IndexError):
    pass
  return result


def describe() -> str:
  """One line: CPU, core count, JAX version and backend."""
  import jax  # pylint: disable=import-outside-toplevel
  return (f'{cpu_model()}, {os.cpu_count()} CPU cores, JAX {jax.__version__} '
          f'on {jax.default_backend()}')
