"""Train the model of a gin config with Trax's training loop.

Prints one progress line per evaluation (step, losses, copy accuracy,
steps/s); Trax's own log goes to OUTPUT_DIR/train_log.txt and the final
checkpoint to OUTPUT_DIR/model.pkl.gz. An OUTPUT_DIR that already holds a
checkpoint is resumed, as Trax does.
"""
import os
import time

from lsh_jax.apps import commands
from lsh_jax.apps import quiet

__all__ = ['HELP', 'add_arguments', 'default_output_dir', 'run', 'train']

HELP = 'train a gin config (a file, or a packaged config name) with Trax'


def add_arguments(parser):
  parser.add_argument('config',
                      help='gin file, or the name of a packaged config: '
                      + ', '.join(commands.packaged_configs()))
  parser.add_argument('--output-dir', default=None,
                      help='run folder (default: runs/<config name>-<time>)')
  parser.add_argument('--steps', type=commands.positive_int, default=None,
                      help='number of training steps (overrides train.steps)')
  commands.add_bindings_argument(parser)


def default_output_dir(config):
  name = os.path.splitext(os.path.basename(config))[0]
  return os.path.join('runs', f'{name}-{time.strftime("%Y%m%d-%H%M%S")}')


def train(config, output_dir, steps, bindings):
  """Trains; returns the loop. Raises CommandError for config errors."""
  config = commands.resolve_config(config)
  quiet.import_trax_quietly()  # without TensorFlow's and gym's start-up lines
  from lsh_jax.apps import copy_task  # imports Trax: only when actually training
  output_dir = output_dir or default_output_dir(config)
  try:
    copy_task.parse_config(config, bindings)  # fail before creating folders
  except copy_task.ConfigError as error:
    raise commands.CommandError(str(error)) from None
  print(f'training {config} in {output_dir} (Trax log: '
        f'{os.path.join(output_dir, "train_log.txt")})', flush=True)
  return copy_task.train(config, output_dir, steps=steps, bindings=bindings)


def run(args):
  commands.require_extras('trax')
  start = time.time()
  loop = train(args.config, args.output_dir, args.steps, args.binding)
  print(f'trained {loop.step} steps in {time.time() - start:.0f} s; '
        f'checkpoint {os.path.join(loop.output_dir, "model.pkl.gz")}')
  return 0
