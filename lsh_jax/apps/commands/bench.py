"""Run the benchmark table (`benchmarks/run.py` of a source checkout).

    lsh-jax bench                    # the default table, ~25 min
    lsh-jax bench --quick            # 1K and 4K, a few minutes
    lsh-jax bench --lengths 16K --hashes 4 --impls lsh_jax,trax

Every argument after `bench` goes to `benchmarks/run.py` unchanged (see
`lsh-jax bench --help-run`). The benchmarks are not part of the installed
package: they live next to it in the repository, with the PyTorch peers in
their own virtual environment.
"""
import os
import subprocess
import sys

from lsh_jax.apps import commands

__all__ = ['HELP', 'PASSTHROUGH', 'RUN_PY', 'add_arguments', 'run']

PASSTHROUGH = True  # unknown options go to benchmarks/run.py
HELP = 'benchmark lsh_jax against Trax, PyTorch peers and dense attention'
RUN_PY = os.path.join(commands.CHECKOUT, 'benchmarks', 'run.py')


def add_arguments(parser):
  parser.add_argument('--help-run', action='store_true',
                      help="show benchmarks/run.py's own options")


def run(args):
  if not args.help_run:
    commands.require_extras('trax')  # Trax's layer and models: the baseline
  if not os.path.isfile(RUN_PY):
    raise commands.CommandError(
        f'{RUN_PY} not found: the benchmarks come with a source checkout '
        '(git clone), not with an installed package')
  extra = ['--help'] if args.help_run else getattr(args, 'extra', [])
  return subprocess.call([sys.executable, RUN_PY, *extra])
