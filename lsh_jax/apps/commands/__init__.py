"""Subcommands of `lsh-jax` (see `lsh_jax.apps.cli`), one module each."""
import argparse
import os

from lsh_jax import _extras

__all__ = [
    'CHECKOUT', 'CONFIG_DIR', 'CommandError', 'add_bindings_argument',
    'packaged_configs', 'positive_int', 'require_extras', 'resolve_config'
]


class CommandError(Exception):
  """A user error a command reports as one line (no traceback)."""


def require_extras(*extras: str, alternative: str = '') -> None:
  """Raises CommandError naming the missing extras and their install
  command (and `alternative`, a way without them); a command calls this
  before any work."""
  text = _extras.message(*extras)
  if text:
    raise CommandError(text + (f', or {alternative}' if alternative else ''))


def positive_int(text):
  """argparse type: an int >= 1."""
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f'expected an int >= 1, got {text!r}')
  if value < 1:
    raise argparse.ArgumentTypeError(f'expected an int >= 1, got {value}')
  return value


def add_bindings_argument(parser):
  parser.add_argument(
      '-b', '--binding', action='append', default=[], metavar='BINDING',
      help="extra gin binding, e.g. -b 'lsh_jax.LSHSelfAttention.n_hashes=4'"
      ' (repeatable)')

# The package's folder (lsh_jax/) and the folder above it: the source
# checkout (benchmarks/, configs/), or for an installed wheel site-packages,
# where `lsh-jax bench` finds no benchmarks and says so.
_PACKAGE = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CHECKOUT = os.path.dirname(_PACKAGE)


def _config_dir():
  """The gin configs: the checkout's top-level configs/, which a wheel
  installs as package data in lsh_jax/configs/ (setup.cfg's package_dir),
  so `lsh-jax demo` and `lsh-jax train NAME` work from an installed wheel."""
  installed = os.path.join(_PACKAGE, 'configs')
  return installed if os.path.isdir(installed) else os.path.join(
      CHECKOUT, 'configs')


CONFIG_DIR = _config_dir()


def packaged_configs() -> list[str]:
  """Names (without .gin) of the configs in CONFIG_DIR."""
  return sorted(os.path.splitext(name)[0] for name in os.listdir(CONFIG_DIR)
                if name.endswith('.gin'))


def resolve_config(config: str) -> str:
  """The gin file `config` names: an existing path, else a packaged config.

  A bare name (`reformer_copy_cpu`, `reformer_copy_cpu.gin`) or the
  checkout's former path (`configs/reformer_copy_cpu.gin`) finds the
  packaged file. Raises CommandError naming the packaged configs otherwise.
  """
  if os.path.isfile(config):
    return config
  folder, name = os.path.split(config)
  if folder in ('', 'configs'):
    stem = name[:-len('.gin')] if name.endswith('.gin') else name
    packaged = os.path.join(CONFIG_DIR, stem + '.gin')
    if os.path.isfile(packaged):
      return packaged
  raise CommandError(f'config file not found: {config} (packaged configs: '
                     f'{", ".join(packaged_configs())})')
