"""The `lsh-jax` command line: a thin dispatcher over subcommands.

    lsh-jax train CONFIG [--output-dir DIR] [--steps N] [-b BINDING ...]
    lsh-jax evaluate CONFIG CHECKPOINT [--n-hashes 1 2 4 8]
    lsh-jax demo [--output-dir DIR]
    lsh-jax sample RUN_DIR [--examples N] [--n-hashes R]
    lsh-jax explain | quality | bench [...]
    lsh-jax table2 [--output-dir DIR] [--steps N] [--paper]

Each subcommand is a module of `lsh_jax.apps.commands` with `HELP`,
`add_arguments(parser)` and `run(args) -> int`, listed in `COMMANDS`; it
imports heavy packages (Trax) only inside `run`, so `--help` and argument
errors are instant. A `CommandError` from `run` (a missing file, a config
that does not parse) is printed as one line on stderr, exit status 2.
Commands import Trax through `quiet.import_trax_quietly`, which keeps
TensorFlow's and gym's start-up lines off the terminal.
"""
import argparse
import importlib
import sys

from lsh_jax.apps.commands import CommandError

__all__ = ['COMMANDS', 'build_parser', 'main']

# name -> module.
COMMANDS = {
    'train': 'lsh_jax.apps.commands.train',
    'evaluate': 'lsh_jax.apps.commands.evaluate',
    'demo': 'lsh_jax.apps.commands.demo',
    'explain': 'lsh_jax.apps.explain',
    'quality': 'lsh_jax.apps.quality',
    'sample': 'lsh_jax.apps.commands.sample',
    'bench': 'lsh_jax.apps.commands.bench',
    'table2': 'lsh_jax.apps.commands.table2',
}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog='lsh-jax', description='Reformer LSH self-attention in JAX.')
  subparsers = parser.add_subparsers(dest='command', metavar='COMMAND',
                                     required=True)
  for name, module_name in COMMANDS.items():
    module = importlib.import_module(module_name)
    sub = subparsers.add_parser(name, help=module.HELP,
                                description=module.__doc__)
    module.add_arguments(sub)
    sub.set_defaults(run=module.run)
  return parser


def main(argv: list[str] | None = None) -> int:
  """Runs `lsh-jax`; returns the exit status."""
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  if extra:
    # A command with PASSTHROUGH hands its unknown options on (bench ->
    # benchmarks/run.py); argparse's REMAINDER cannot start with an option.
    if not getattr(importlib.import_module(COMMANDS[args.command]),
                   'PASSTHROUGH', False):
      parser.error(f'unrecognized arguments: {" ".join(extra)}')
    args.extra = extra
  try:
    return args.run(args) or 0
  except CommandError as error:
    print(f'lsh-jax {args.command}: error: {error}', file=sys.stderr)
    return 2


if __name__ == '__main__':
  sys.exit(main())
