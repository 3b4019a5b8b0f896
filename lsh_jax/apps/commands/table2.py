"""The Reformer paper's Table 2 on the duplication task (docs/paper.md).

Trains a 1-layer Transformer four times (full attention, LSH with 4, 2 and
1 rounds; lsh_jax's Trax layers), evaluates each with full attention and
LSH-8, -4, -2, -1 (and with the paper's exact multi-round attention,
allow_duplicate_attention=False), and prints the table beside the paper's
with the differences. OUTPUT_DIR keeps the checkpoints, results.json,
table2.md and table2.png; rerunning it resumes where it stopped.
"""
import dataclasses
import os
import time

from lsh_jax.apps import commands

__all__ = ['HELP', 'add_arguments', 'run']

HELP = "the Reformer paper's Table 2 (duplication task), trained and evaluated"


def add_arguments(parser):
  parser.add_argument('--output-dir', default=os.path.join('runs', 'table2'),
                      help='run folder (default runs/table2; resumed)')
  size = parser.add_mutually_exclusive_group()
  size.add_argument('--paper', action='store_true',
                    help="the paper's size: L = 1024, 150K steps (for an "
                    'accelerator)')
  size.add_argument('--tiny', action='store_true',
                    help='a smoke test of seconds per model (L = 32)')
  parser.add_argument('--steps', type=commands.positive_int, default=None,
                      help='training steps per model (overrides the size)')
  parser.add_argument('--no-exact', action='store_true',
                      help='skip the allow_duplicate_attention=False columns')


def run(args):
  commands.require_extras('trax')  # Trax brings matplotlib: table2.png
  from lsh_jax.apps import table2  # imports Trax: only when running
  settings = table2.PAPER if args.paper else (
      table2.TINY if args.tiny else table2.DEFAULT)
  if args.steps:
    settings = dataclasses.replace(settings, steps=args.steps)
  start = time.time()
  print(f'lsh-jax table2 in {args.output_dir} ({settings.steps} steps per '
        f'model, L = {settings.length})', flush=True)
  print(table2.main(settings, args.output_dir, exact=not args.no_exact))
  print(f'\nwritten: {os.path.join(args.output_dir, "table2.md")}, '
        f'{os.path.join(args.output_dir, "table2.png")}; '
        f'{time.time() - start:.0f} s')
  return 0
