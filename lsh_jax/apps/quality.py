"""`lsh-jax quality`: how close LSH attention comes to full attention.

For each `n_hashes` (default 1, 2, 4, 8, 16) and `chunk_len`, on queries
drawn from clustered data (and, with `--run-dir`, on the real queries of a
model trained by the main job), reports:

  rel. error    ||lsh - full|| / ||full|| over all valid queries (Frobenius,
                outputs of `lsh_attention` and float64 dense attention);
  exact error   the same for `allow_duplicate_attention=False`, the paper's
                exact multi-round attention (each candidate counted once,
                however many rounds found it; docs/paper.md);
  covered mass  the share of full attention's probability that falls on keys
                LSH attention saw: sum over the union of a query's candidate
                sets (its windows in all rounds, from the sort) of the full
                attention probabilities, averaged over valid queries;
  time          milliseconds per `lsh_attention` call (jit-compiled, one
                head, median of a few calls after compilation).

Both numbers are averaged over `--seeds` hash keys (and over the sequences,
layers and heads of a trained model). `--plot` draws the error against
`n_hashes`, one line per `chunk_len`.

    python -m lsh_jax.apps.quality [--length 1024 --chunk-lens 32 64 128
                               --n-hashes 1 2 4 8 16] [--run-dir DIR]
                              [--plot FILE.png]

Clustered data: `--n-clusters` unit centres in random directions; each
token is its centre plus Gaussian noise (`--noise`, relative to the centre),
rescaled to norm `--scale` (the logit of a perfectly aligned key; larger is
sharper attention); its value is its cluster's mean value plus as much
token noise. Keys are the normalised queries, as in shared-QK
attention, so a token attends mostly to its own cluster: the structure LSH
is designed to find.

A trained model (`--run-dir`, a folder of `lsh-jax train` / `lsh-jax demo`
holding `config.gin` and `model.pkl.gz`): its LSH layers' inputs are
recorded on copy-task sequences, projected to each head's queries and
values, and measured with the model's own causal setting at its length
(chunk lengths that do not divide it are skipped). This path imports Trax.
"""
import argparse
import dataclasses
import functools
import os
import sys
import time

import jax
import numpy as np

import lsh_jax
from lsh_jax import oracle
from lsh_jax.apps import commands
from lsh_jax.apps import machine
from lsh_jax.core import weights as weights_lib

__all__ = [
    'HELP', 'RunDirError', 'Sample', 'add_arguments', 'clustered_queries',
    'format_table', 'full_probabilities', 'main', 'measure', 'measure_grid',
    'real_samples', 'run'
]

HELP = 'LSH attention vs full attention: error, covered mass, time'


@dataclasses.dataclass
class Sample:
  """One sequence for one head: what LSH attention gets."""
  q: np.ndarray  # float32[L, D]
  v: np.ndarray  # float32[L, Dv]
  mask: object = None  # bool[L] or None
  labels: object = None  # int[L] cluster of each token (synthetic data)


def clustered_queries(seed, length, depth=64, d_v=64, *, n_clusters=16,
                      noise=0.5, scale=8.0):
  """Queries from `n_clusters` clusters; values follow the clusters.

  A token's value is its cluster's mean value plus token noise of the same
  size (both standard normal), so that attention's output, an average over
  mostly the token's own cluster, is not near zero.

  Returns:
    A `Sample`: q float32[L, D] with every row of norm `scale`, v [L, Dv].
  """
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((n_clusters, depth))
  centres /= np.linalg.norm(centres, axis=-1, keepdims=True)
  cluster = rng.integers(n_clusters, size=length)
  tokens = centres[cluster]
  tokens = tokens + noise * rng.standard_normal((length, depth)) / np.sqrt(
      depth)
  q = scale * tokens / np.linalg.norm(tokens, axis=-1, keepdims=True)
  v = (rng.standard_normal((n_clusters, d_v))[cluster]
       + rng.standard_normal((length, d_v)))
  return Sample(q.astype(np.float32), v.astype(np.float32), labels=cluster)


def full_probabilities(q, *, causal, mask=None):
  """Dense shared-QK attention probabilities, float64 [L, L] (the oracle's
  conventions: normalised keys, self penalty, causal and padding masks)."""
  q = np.asarray(q, np.float64)
  positions = np.arange(q.shape[0])
  logits = oracle.mask_logits(q @ oracle.shared_qk_keys(q).T, positions,
                              positions, mask, causal=causal)
  return np.exp(logits - oracle.logsumexp(logits, axis=-1, keepdims=True))


@functools.partial(jax.jit, static_argnames=(
    'n_buckets', 'n_hashes', 'chunk_len', 'n_chunks_before', 'n_chunks_after',
    'causal', 'allow_duplicate_attention'))
def _lsh_and_sticker(q, v, key, mask, *, n_buckets, **kwargs):
  """`lsh_attention` and the sorted positions it used, one compilation.

  Returns:
    (out float[L, Dv], sticker int32[R, L]).
  """
  out = lsh_jax.lsh_attention(q, v, hash_key=key, mask=mask,
                              n_buckets=n_buckets, **kwargs)
  rotations = lsh_jax.core.random_rotations(key, q.shape[-1], n_buckets,
                                       kwargs['n_hashes'])
  buckets = lsh_jax.core.hash_with_rotations(q, rotations, n_buckets, mask)
  return out, lsh_jax.core.sort_buckets(buckets)[0]


def _median_ms(fn, repeats):
  """Median wall time of `repeats` calls, after one call that compiles."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


def measure(samples, *, n_hashes, chunk_len, n_buckets=None,
            n_chunks_before=1, n_chunks_after=0, causal=False, seeds=1,
            repeats=3, references=None):
  """Error, covered mass and time of one setting, averaged over samples.

  Args:
    samples: `Sample`s of one length.
    n_hashes, chunk_len, n_buckets, n_chunks_before, n_chunks_after,
      causal: the LSH setting (`n_buckets=None`: automatic).
    seeds: hash keys per sample (PRNGKey(0), ...).
    repeats: timed calls (after one compiling call); 0 skips timing.
    references: optional list of (probs [L, L], full [L, Dv]) per sample,
      from `full_probabilities`, to reuse across settings.

  Returns:
    dict with 'rel_error', 'exact_error', 'covered_mass', 'time_ms' (NaN
    if not timed).
  """
  errors, exact_errors, masses = [], [], []
  time_ms = float('nan')
  kwargs = dict(n_buckets=n_buckets, n_hashes=n_hashes, chunk_len=chunk_len,
                n_chunks_before=n_chunks_before,
                n_chunks_after=n_chunks_after, causal=causal)
  for index, sample in enumerate(samples):
    if references is None:
      probs = full_probabilities(sample.q, causal=causal, mask=sample.mask)
      full = probs @ np.asarray(sample.v, np.float64)
    else:
      probs, full = references[index]
    valid = (np.ones(len(sample.q), bool) if sample.mask is None
             else np.asarray(sample.mask, bool))
    length = len(sample.q)
    buckets_arg = lsh_jax.core.validation.check_n_buckets(
        n_buckets if n_buckets is not None
        else lsh_jax.auto_n_buckets(length, chunk_len))
    for seed in range(seeds):
      key = jax.random.PRNGKey(seed)
      out, sticker = _lsh_and_sticker(sample.q, sample.v, key, sample.mask,
                                      **dict(kwargs, n_buckets=buckets_arg))
      out = np.asarray(out, np.float64)
      errors.append(np.linalg.norm((out - full)[valid]) /
                    np.linalg.norm(full[valid]))
      exact, _ = _lsh_and_sticker(sample.q, sample.v, key, sample.mask,
                                  allow_duplicate_attention=False,
                                  **dict(kwargs, n_buckets=buckets_arg))
      exact_errors.append(
          np.linalg.norm((np.asarray(exact, np.float64) - full)[valid]) /
          np.linalg.norm(full[valid]))
      union = weights_lib.candidate_union(
          sticker, chunk_len=chunk_len, n_chunks_before=n_chunks_before,
          n_chunks_after=n_chunks_after)
      masses.append(float(np.mean(np.sum(probs * union, axis=-1)[valid])))
    if index == 0 and repeats:
      time_ms = _median_ms(lambda: lsh_jax.lsh_attention(
          sample.q, sample.v, hash_key=key, mask=sample.mask, **kwargs),
          repeats)
  return dict(rel_error=float(np.mean(errors)),
              exact_error=float(np.mean(exact_errors)),
              covered_mass=float(np.mean(masses)), time_ms=time_ms)


def measure_grid(samples, *, data, n_hashes_list=(1, 2, 4, 8, 16),
                 chunk_lens=(32, 64, 128), causal=False, repeats=3,
                 progress=None, **kwargs):
  """`measure` for every (chunk_len, n_hashes); returns a list of rows.

  Chunk lengths that do not divide the samples' length are skipped. Each row
  is a dict: data, length, chunk_len, n_buckets, n_hashes, rel_error,
  covered_mass, time_ms; one more row per data set has n_hashes None and
  the time of dense attention (`lsh_jax.full_attention`).
  """
  length = len(samples[0].q)
  references = []
  for sample in samples:
    probs = full_probabilities(sample.q, causal=causal, mask=sample.mask)
    references.append((probs, probs @ np.asarray(sample.v, np.float64)))
  rows = []
  for chunk_len in chunk_lens:
    if length % chunk_len:
      continue
    n_buckets = kwargs.get('n_buckets') or lsh_jax.auto_n_buckets(
        length, chunk_len)
    for n_hashes in n_hashes_list:
      result = measure(samples, n_hashes=n_hashes, chunk_len=chunk_len,
                       causal=causal, repeats=repeats, references=references,
                       **kwargs)
      rows.append(dict(data=data, length=length, chunk_len=chunk_len,
                       n_buckets=n_buckets, n_hashes=n_hashes, **result))
      if progress:
        progress(rows[-1])
  sample = samples[0]
  dense_ms = _median_ms(lambda: lsh_jax.full_attention(
      sample.q, sample.v, causal=causal, mask=sample.mask),
                        repeats) if repeats else float('nan')
  rows.append(dict(data=data, length=length, chunk_len=None, n_buckets=None,
                   n_hashes=None, rel_error=0.0, exact_error=0.0,
                   covered_mass=1.0,
                   time_ms=dense_ms))
  return rows


def _ms(value):
  return '-' if np.isnan(value) else f'{value:.2f}'


def format_table(rows):
  """A Markdown table of the rows (dense attention last, per data set)."""
  lines = ['| data | chunk_len | n_buckets | n_hashes | rel. error | '
           'exact error | covered mass | time (ms) |',
           '|---|---|---|---|---|---|---|---|']
  for r in rows:
    if r['n_hashes'] is None:
      lines.append(f"| {r['data']} | full attention | | | 0 | 0 | 100% | "
                   f"{_ms(r['time_ms'])} |")
      continue
    exact = r.get('exact_error')
    exact = '-' if exact is None else f'{exact:.3f}'
    lines.append(
        f"| {r['data']} | {r['chunk_len']} | {r['n_buckets']} | "
        f"{r['n_hashes']} | {r['rel_error']:.3f} | {exact} | "
        f"{100 * r['covered_mass']:.1f}% | {_ms(r['time_ms'])} |")
  return '\n'.join(lines)


# ---------------------------------------------------------------------------
# A trained model's real queries (imports Trax)
# ---------------------------------------------------------------------------


class RunDirError(ValueError):
  """A run folder that cannot be read."""


def real_samples(run_dir, n_sequences=4, seed=0):
  """Each LSH layer's per-head queries and values on copy-task sequences.

  Loads `run_dir/config.gin` and `run_dir/model.pkl.gz` (a run folder of
  `lsh-jax train`), runs the model in eval mode on `n_sequences` copy-task
  sequences and records the input of every `lsh_jax.LSHSelfAttention`
  layer; a head's queries are `x @ w_q[head]`, its values `x @ w_v[head]`.

  Returns:
    (samples, info): one `Sample` per (layer, sequence, head); info is a
    dict with the layers' 'causal', 'chunk_len', 'n_hashes', 'length'.

  Raises:
    RunDirError: missing files, or a model without lsh_jax LSH layers.
  """
  config = os.path.join(run_dir, 'config.gin')
  checkpoint = os.path.join(run_dir, 'model.pkl.gz')
  for path in (config, checkpoint):
    if not os.path.isfile(path):
      raise RunDirError(f'{path} not found (a run folder of lsh-jax train '
                        'holds config.gin and model.pkl.gz)')
  import gin  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from trax import shapes  # pylint: disable=import-outside-toplevel
  from lsh_jax.apps import copy_task  # pylint: disable=import-outside-toplevel
  from lsh_jax.trax import layers as trax_layer  # pylint: disable=import-outside-toplevel
  try:
    copy_task.parse_config(config)
    vocab_size, length = copy_task.copy_task_params()
  except (copy_task.ConfigError, ValueError) as error:
    raise RunDirError(f'cannot read {config}: {error}') from None
  model = gin.query_parameter('train.model').scoped_configurable_fn(
      mode='eval')
  # Trax seeds each layer from Python's `random`; a fixed key makes the
  # state (the LSH layers' hash keys) and so the later layers' inputs
  # reproducible.
  model.rng = jax.random.PRNGKey(seed)
  model.init_from_file(checkpoint, weights_only=True,
                       input_signature=shapes.ShapeDtype(
                           (n_sequences, length), jnp.int32))
  tokens, _ = copy_task.copy_batch(np.random.RandomState(seed), vocab_size,
                                   length, n_sequences)
  layer_class = trax_layer.LSHSelfAttention
  recorded = []
  original = layer_class.forward_and_or_backward

  def recording(self, inputs, weights, *args, **kwargs):
    x = inputs[0] if isinstance(inputs, (tuple, list)) else inputs
    mask = inputs[1] if isinstance(inputs, (tuple, list)) else None
    recorded.append((self, np.asarray(x), None if mask is None
                     else np.asarray(mask, bool), weights))
    return original(self, inputs, weights, *args, **kwargs)

  layer_class.forward_and_or_backward = recording
  try:
    model(jnp.asarray(tokens))
  finally:
    layer_class.forward_and_or_backward = original
  gin.clear_config()
  if not recorded:
    raise RunDirError(f'the model of {config} has no lsh_jax.LSHSelfAttention'
                      ' layer')
  samples = []
  for layer, x, mask, weights in recorded:
    w_q, w_v = np.asarray(weights[0]), np.asarray(weights[1])
    for b in range(x.shape[0]):
      for head in range(w_q.shape[0]):
        samples.append(Sample(
            (x[b] @ w_q[head]).astype(np.float32),
            (x[b] @ w_v[head]).astype(np.float32),
            None if mask is None else mask[b]))
  layer = recorded[0][0]
  info = dict(causal=bool(layer._causal), chunk_len=int(layer._chunk_len),  # pylint: disable=protected-access
              n_hashes=int(layer._n_hashes), length=length,  # pylint: disable=protected-access
              n_layers=len(recorded), n_sequences=n_sequences,
              n_heads=int(np.shape(recorded[0][3][0])[0]))
  return samples, info


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def _positive(text):
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f'expected an int >= 1, got {value}')
  return value


def add_arguments(parser):
  parser.add_argument('--length', type=_positive, default=1024,
                      help='L of the clustered data (default 1024)')
  parser.add_argument('--depth', type=_positive, default=64,
                      help='D (default 64)')
  parser.add_argument('--d-v', type=_positive, default=64,
                      help='Dv (default 64)')
  parser.add_argument('--n-clusters', type=_positive, default=16,
                      help='clusters of the synthetic queries (default 16)')
  parser.add_argument('--noise', type=float, default=0.5,
                      help='noise around each centre (default 0.5)')
  parser.add_argument('--scale', type=float, default=8.0,
                      help='query norm = largest logit (default 8)')
  parser.add_argument('--n-hashes', type=_positive, nargs='+',
                      default=[1, 2, 4, 8, 16],
                      help='default: 1 2 4 8 16')
  parser.add_argument('--chunk-lens', type=_positive, nargs='+',
                      default=[32, 64, 128], help='default: 32 64 128')
  parser.add_argument('--n-buckets', type=int, default=None,
                      help='even int; default automatic, 2 * L / chunk_len')
  parser.add_argument('--n-chunks-before', type=int, default=1,
                      help='default 1')
  parser.add_argument('--n-chunks-after', type=int, default=0,
                      help='default 0')
  parser.add_argument('--causal', action='store_true',
                      help='causal attention on the clustered data')
  parser.add_argument('--seeds', type=_positive, default=2,
                      help='hash keys averaged per setting (default 2)')
  parser.add_argument('--repeats', type=int, default=3,
                      help='timed calls per setting (default 3; 0: no timing)')
  parser.add_argument('--seed', type=int, default=0,
                      help='draw of the clustered data (default 0)')
  parser.add_argument('--run-dir', default=None,
                      help='also measure the real queries of a trained model '
                      '(a run folder of lsh-jax train/demo); imports Trax')
  parser.add_argument('--run-chunk-lens', type=_positive, nargs='+',
                      default=[8, 16, 32],
                      help='chunk lengths for the trained model (default '
                      '8 16 32; must divide its length)')
  parser.add_argument('--plot', metavar='FILE.png', default=None,
                      help='error against n_hashes, one line per chunk_len')


def run(args):
  """The subcommand; returns the exit status."""
  try:
    if args.plot:
      commands.require_extras('plots')
    if args.run_dir:
      commands.require_extras('trax')
    lsh_jax.core.validation.check_chunking(1, args.n_chunks_before,
                                      args.n_chunks_after)
    if args.n_buckets is not None:
      lsh_jax.core.validation.check_n_buckets(args.n_buckets)
  except (ValueError, commands.CommandError) as error:
    print(f'lsh-jax quality: error: {error}', file=sys.stderr)
    return 2
  chunk_lens = [c for c in args.chunk_lens if args.length % c == 0]
  if not chunk_lens:
    print(f'lsh-jax quality: error: no --chunk-lens divide --length '
          f'{args.length}', file=sys.stderr)
    return 2
  common = dict(n_hashes_list=args.n_hashes, repeats=args.repeats,
                n_buckets=args.n_buckets, seeds=args.seeds,
                n_chunks_before=args.n_chunks_before,
                n_chunks_after=args.n_chunks_after)
  start = time.time()
  data = (f'clustered L={args.length} ({args.n_clusters} clusters'
          f'{", causal" if args.causal else ""})')
  print(f'{data}: D={args.depth}, Dv={args.d_v}, noise {args.noise}, scale '
        f'{args.scale}; {args.seeds} hash seed(s) per setting', flush=True)
  sample = clustered_queries(args.seed, args.length, args.depth, args.d_v,
                             n_clusters=args.n_clusters, noise=args.noise,
                             scale=args.scale)
  rows = measure_grid([sample], data=data, chunk_lens=chunk_lens,
                      causal=args.causal, **common)
  if args.run_dir:
    try:
      samples, info = real_samples(args.run_dir)
    except RunDirError as error:
      print(f'lsh-jax quality: skipping --run-dir: {error}', file=sys.stderr)
    else:
      name = f'trained model L={info["length"]}'
      print(f'{name}: {args.run_dir}, {info["n_layers"]} LSH layer(s) x '
            f'{info["n_heads"]} heads x {info["n_sequences"]} copy-task '
            f'sequences = '
            f'{len(samples)} query sets; trained with chunk_len='
            f'{info["chunk_len"]}, n_hashes={info["n_hashes"]}'
            f'{", causal" if info["causal"] else ""}', flush=True)
      rows += measure_grid(samples, data=name,
                           chunk_lens=args.run_chunk_lens,
                           causal=info['causal'], **common)
  print()
  print(format_table(rows))
  print()
  print(f'total {time.time() - start:.0f} s; machine: {machine.describe()}')
  if args.plot:
    from lsh_jax.apps import plots  # imports matplotlib
    plots.plot_quality([r for r in rows if r['n_hashes'] is not None],
                       args.plot)
    print(f'figure written to {args.plot}')
  return 0


def main(argv=None):
  parser = argparse.ArgumentParser(
      prog='python -m lsh_jax.apps.quality', description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  add_arguments(parser)
  return run(parser.parse_args(argv))


if __name__ == '__main__':
  sys.exit(main())
