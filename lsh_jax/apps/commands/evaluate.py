"""Copy accuracy of a trained checkpoint with n_hashes = 1, 2, 4, 8.

Rebuilds the config's model in eval mode with each `n_hashes` (and with
dense attention on the same weights), loads the checkpoint's weights and
measures token accuracy on the copied half of fixed `0 w 0 w` batches:
the duplication-task table of the Reformer paper.
"""
import os

from lsh_jax.apps import commands
from lsh_jax.apps import quiet

__all__ = ['HELP', 'add_arguments', 'evaluate', 'format_table', 'run']

HELP = 'copy accuracy of a checkpoint for several n_hashes'


def add_arguments(parser):
  parser.add_argument('config', help='the gin file the model was trained '
                      'with (a file or a packaged config name)')
  parser.add_argument('checkpoint', help='model.pkl.gz of a run folder')
  parser.add_argument('--n-hashes', type=commands.positive_int, nargs='+',
                      default=[1, 2, 4, 8], help='default: 1 2 4 8')
  parser.add_argument('--batches', type=commands.positive_int, default=4,
                      help='batches of 32 sequences (default 4)')
  commands.add_bindings_argument(parser)


def evaluate(config, checkpoint, n_hashes, n_batches=4, bindings=()):
  """Returns (length, {setting: accuracy}); CommandError for bad files."""
  config = commands.resolve_config(config)
  if not os.path.isfile(checkpoint):
    raise commands.CommandError(f'file not found: {checkpoint}')
  quiet.import_trax_quietly()  # without TensorFlow's and gym's start-up lines
  from lsh_jax.apps import copy_task  # imports Trax
  try:
    return copy_task.evaluate_n_hashes(config, checkpoint, n_hashes,
                                       bindings=bindings, n_batches=n_batches)
  except copy_task.ConfigError as error:
    raise commands.CommandError(str(error)) from None


def format_table(length, results, trained_with=None):
  """A Markdown table of copy accuracy per evaluation setting."""
  title = f'copy accuracy on the copied half (sequences of {length} tokens'
  title += f'; trained with n_hashes={trained_with})' if trained_with else ')'
  lines = [title, '', '| evaluated with | accuracy |', '|---|---|']
  lines += [f'| {name} | {accuracy:.2%} |' for name, accuracy in
            results.items()]
  return '\n'.join(lines)


def run(args):
  commands.require_extras('trax')
  length, results = evaluate(args.config, args.checkpoint, args.n_hashes,
                             args.batches, args.binding)
  print(format_table(length, results))
  return 0
