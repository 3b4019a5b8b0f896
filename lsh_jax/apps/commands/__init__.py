"""Subcommands of `lsh-jax` (see `lsh_jax.apps.cli`), one module each."""
import argparse
import os


class CommandError(Exception):
  """A user error a command reports as one line (no traceback)."""


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

# The source checkout this package runs from (configs/, benchmarks/).
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))))
