"""Greedy samples of a trained copy model.

Trax (default): rebuilds RUN_DIR's model (its config.gin) in predict mode
with the weights of RUN_DIR/model.pkl.gz and samples with Trax's
`autoregressive_sample`. Flax (`--framework flax`): restores the ReformerLM
that `lsh-jax demo --framework flax` saved in RUN_DIR (params.npz and
config.json; no pickles) and decodes greedily (`flax_copy.sample`). Either
way the model gets `0 w 0` of fresh copy sequences and decodes the rest;
each sample is printed under the expected `w`, then the token accuracy.
"""
import time

from lsh_jax.apps import commands
from lsh_jax.apps import quiet

__all__ = ['HELP', 'add_arguments', 'format_sample', 'run']

HELP = 'greedy samples of a trained copy model (fast decoding)'


def add_arguments(parser):
  parser.add_argument('run_dir', help='a run folder of `lsh-jax train` or '
                      '`lsh-jax demo` (with --framework flax: of `lsh-jax '
                      'demo --framework flax`)')
  parser.add_argument('--examples', type=commands.positive_int, default=8,
                      help='sequences to sample (default 8)')
  parser.add_argument('--show', type=int, default=3,
                      help='samples to print (default 3)')
  parser.add_argument('--seed', type=int, default=0,
                      help='seed of the fresh sequences (default 0)')
  parser.add_argument('--n-hashes', type=commands.positive_int, default=None,
                      help='hash rounds while decoding (default: as trained)')
  commands.add_bindings_argument(parser)
  parser.add_argument('--framework', choices=('trax', 'flax'), default='trax',
                      help='trax (default): a Trax run folder; flax: the '
                      'Flax ReformerLM of `lsh-jax demo --framework flax` '
                      '(--binding is not used)')


def _flax_sample(args):
  from lsh_jax.apps import flax_copy  # pylint: disable=import-outside-toplevel
  try:
    return flax_copy.sample(args.run_dir, n_examples=args.examples,
                            seed=args.seed, n_hashes=args.n_hashes or -1)
  except FileNotFoundError as error:
    raise commands.CommandError(str(error)) from None


def format_sample(tokens, prefix_len, sample):
  """The prefix, the expected continuation, the sample (and its errors)."""
  show = lambda values: ' '.join(f'{int(v):2d}' for v in values)
  marks = ''.join('   ' if e == s else ' ^^'
                  for e, s in zip(tokens[prefix_len:], sample))
  lines = [f'prefix   {show(tokens[:prefix_len])}',
           f'expected {show(tokens[prefix_len:])}', f'sampled  {show(sample)}']
  if marks.strip():
    lines.append(f'        {marks}'.rstrip())  # ^^ under each wrong token
  return '\n'.join(lines)


def run(args):
  start = time.time()
  if args.framework == 'flax':
    commands.require_extras('flax')
    result = _flax_sample(args)
    return _report(args, result, start, 'Flax import and compilation')
  commands.require_extras(
      'trax', alternative='for a Flax run folder: lsh-jax sample --framework '
      'flax')
  bindings = list(args.binding)
  if args.n_hashes:
    bindings = [f'lsh_jax.LSHSelfAttention.n_hashes = {args.n_hashes}'
                ] + bindings
  quiet.import_trax_quietly()  # without TensorFlow's and gym's start-up lines
  from lsh_jax.apps import sampling  # imports Trax
  try:
    config, checkpoint = sampling.run_dir_files(args.run_dir)
    result = sampling.greedy_copy(config, checkpoint,
                                  n_examples=args.examples, seed=args.seed,
                                  bindings=bindings)
  except FileNotFoundError as error:
    raise commands.CommandError(str(error)) from None
  except ValueError as error:  # copy_task.ConfigError and layer arguments
    raise commands.CommandError(str(error).splitlines()[0]) from None
  return _report(args, result, start, 'Trax import and compilation')


def _report(args, result, start, overhead):
  for i in range(min(args.show, args.examples)):
    print(format_sample(result['tokens'][i], result['prefix_len'],
                        result['samples'][i]))
    print()
  n_tokens = result['samples'].size
  print(f'greedy copy accuracy {result["accuracy"]:.2%} ({n_tokens} tokens '
        f'in {args.examples} sequences; {time.time() - start:.0f} s with '
        f'{overhead})')
  return 0
