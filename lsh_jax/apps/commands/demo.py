"""The main job: train the CPU-sized copy model, then tabulate n_hashes.

Trains the packaged config reformer_copy_cpu.gin (ReformerLM with lsh_jax's
LSH layer, 2 hash rounds) with Trax's training loop, saves the checkpoint in
a run folder, evaluates it with n_hashes = 1, 2, 4, 8 and with dense attention,
and prints the table with the wall time and the machine.
"""
import os
import time

from lsh_jax.apps import commands
from lsh_jax.apps import machine
from lsh_jax.apps.commands import evaluate
from lsh_jax.apps.commands import train

__all__ = ['CONFIG', 'HELP', 'add_arguments', 'run']

HELP = 'train the CPU-sized copy model and print accuracy per n_hashes'
CONFIG = os.path.join(commands.CONFIG_DIR, 'reformer_copy_cpu.gin')


def add_arguments(parser):
  parser.add_argument('--config', default=CONFIG,
                      help='gin file or packaged config name (default: '
                      'reformer_copy_cpu)')
  parser.add_argument('--output-dir', default=None,
                      help='run folder (default: runs/<config name>-<time>)')
  parser.add_argument('--steps', type=commands.positive_int, default=None,
                      help='training steps (default: the config\'s)')
  parser.add_argument('--framework', choices=('trax', 'flax'), default='trax',
                      help='trax (default): the gin config with Trax; flax: '
                      'the same task with a Flax NNX model and optax '
                      '(lsh_jax.apps.flax_copy; --config is not used)')


def run(args):
  if args.framework == 'flax':
    commands.require_extras('flax')
    from lsh_jax.apps import flax_copy  # pylint: disable=import-outside-toplevel
    flax_copy.run_demo(args.output_dir, args.steps)
    return 0
  commands.require_extras(
      'trax', alternative='the Flax version: lsh-jax demo --framework flax')
  start = time.time()
  config = commands.resolve_config(args.config)
  loop = train.train(config, args.output_dir, args.steps, [])
  trained = time.time()
  checkpoint = os.path.join(loop.output_dir, 'model.pkl.gz')
  length, results = evaluate.evaluate(config, checkpoint, [1, 2, 4, 8])
  done = time.time()
  from lsh_jax.apps import copy_task  # already imported by train
  copy_task.parse_config(config)
  trained_with = copy_task.query('lsh_jax.LSHSelfAttention.n_hashes')
  print()
  print(evaluate.format_table(length, results, trained_with))
  print()
  print(f'{loop.step} training steps; wall time: training {trained - start:.0f}'
        f' s (with Trax import and compilation), evaluation '
        f'{done - trained:.0f} s, total {done - start:.0f} s')
  print(f'machine: {machine.describe()}')
  print(f'run folder: {loop.output_dir}')
  return 0
