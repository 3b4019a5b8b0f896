"""`lsh-jax explain`: one small example through every step of the algorithm.

Prints, in the order of docs/algorithm.md, the real intermediate arrays of
the JAX pipeline and their shapes: the hash (§1: rotations, buckets per
round), the sort (§2: sorted positions and chunk boundaries), chunked
attention (§3: each chunk's probabilities and log-sum-exps), the undone sort
(§4) and the combine (§5) for one query: each round's output and
log-sum-exp, the round weights, the combined result, and a check against
attention computed directly (NumPy, float64) over the union of that query's
candidate sets; then the paper's exact multi-round attention
(`allow_duplicate_attention=False`) for that query (each candidate counted
once, checked the same way) and, for the whole example, the error against
full attention with and without it as n_hashes grows. Exit status 1 if a
check fails.

    python -m lsh_jax.apps.explain [--length 16 --n-hashes 2 --n-buckets 4
                               --chunk-len 4 --seed 0] [--plot FILE.png]

`compute` returns every number as a `Walkthrough` and prints nothing;
`render` (`lsh_jax.apps.explain_render`) prints one; `walk` does both.

Hash, sort, per-round attention and combine are lsh_jax's own functions
(`random_rotations`, `hash_with_rotations`, `sort_buckets`, `attend_round`,
`round_weights`, `combine_rounds`). The kernel does not return its
probabilities, so step 3 recomputes them per chunk in float64 NumPy from the
sorted positions, and prints how closely their log-sum-exps match the
kernel's.
"""
import argparse
import dataclasses
import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np

import lsh_jax
from lsh_jax import core
from lsh_jax import oracle
from lsh_jax.apps import commands
from lsh_jax.apps.explain_render import render
from lsh_jax.core import validation
from lsh_jax.core import weights as weights_lib

__all__ = [
    'ChunkView', 'HELP', 'MAX_LENGTH', 'SELF_ONLY_TOLERANCE', 'SWEEP',
    'Settings', 'TOLERANCE', 'Walkthrough', 'add_arguments', 'candidates',
    'check_settings', 'compute', 'direct_attention', 'main', 'make_inputs',
    'run', 'self_only', 'settings_from_args', 'walk'
]

HELP = 'walk one small example through every step of LSH attention'
# Printing every chunk is only readable for short sequences.
MAX_LENGTH = 128
# The combined result (float32) against the float64 direct computation.
TOLERANCE = 1e-5
# A query that sees only itself has logits near -1e5, where float32 steps
# are 2**-7 (docs/algorithm.md §5, float32 caveat).
SELF_ONLY_TOLERANCE = 1e-2


@dataclasses.dataclass
class Settings:
  length: int = 16
  depth: int = 4
  d_v: int = 3
  n_hashes: int = 2
  n_buckets: object = 4
  chunk_len: int = 4
  n_chunks_before: int = 1
  n_chunks_after: int = 0
  causal: bool = False
  seed: int = 0
  query: object = None  # None: the query whose rounds weigh most evenly


@dataclasses.dataclass
class ChunkView:
  """One query chunk of step 3, recomputed in float64 from the sort."""
  flat: int  # f = round * M + chunk on the flat chunk axis of all rounds
  round: int
  chunk: int
  window: list  # the flat chunk ids the window holds, in order
  query_pos: np.ndarray  # [C] original positions of the chunk's queries
  key_pos: np.ndarray  # [W * C] original positions of its window's keys
  probs: np.ndarray  # [C, W * C] float64 probabilities
  masked: np.ndarray  # [C, W * C] bool, causally masked (exactly 0)
  kernel_lse: np.ndarray  # [C] the kernel's log-sum-exps of these queries


@dataclasses.dataclass
class Walkthrough:
  """Every intermediate array of one explained example (NumPy)."""
  settings: Settings
  q: np.ndarray  # [L, D]
  v: np.ndarray  # [L, Dv]
  hash_key: object  # the PRNG key of the rotations
  rotations: np.ndarray  # [D, R, rot / 2]
  rotated: np.ndarray  # [R, L, rot / 2]
  buckets: np.ndarray  # [R, L]
  sticker: np.ndarray  # [R, L]
  undo: np.ndarray  # [R, L]
  chunks: list  # [ChunkView] for the R * M chunks, in flat order
  lse_difference: float  # max relative |kernel lse - float64 lse|
  o: np.ndarray  # [R, L, Dv]
  lse: np.ndarray  # [R, L]
  round_weights: np.ndarray  # [R, L]
  combined: np.ndarray  # [L, Dv]
  public: np.ndarray  # [L, Dv], `lsh_attention` on the same inputs
  query: int
  per_round: list  # [R] arrays: the query's candidate keys per round
  direct: np.ndarray  # [Dv], float64 attention over the union
  error: float
  self_only: bool  # the query's only candidate is itself in every round
  tolerance: float
  exact: np.ndarray  # [L, Dv], lsh_attention(allow_duplicate_attention=False)
  direct_exact: np.ndarray  # [Dv], float64 over the union, each key once
  exact_error: float
  full: np.ndarray  # [Dv], float64 full attention of the query
  sweep: list  # [(n_hashes, error, exact error)] against full attention
  passed: bool


def make_inputs(settings):
  """(q float32[L, D], v float32[L, Dv], hash key) from the seed."""
  kq, kv, khash = jax.random.split(jax.random.PRNGKey(settings.seed), 3)
  q = jax.random.normal(kq, (settings.length, settings.depth), jnp.float32)
  v = jax.random.normal(kv, (settings.length, settings.d_v), jnp.float32)
  return q, v, khash


def check_settings(settings):
  """Raises ValueError for settings explain cannot show."""
  if not 1 <= settings.length <= MAX_LENGTH:
    raise ValueError(f'--length must be in 1..{MAX_LENGTH} (explain prints '
                     f'every chunk), got {settings.length}')
  for name in ('depth', 'd_v', 'n_hashes', 'chunk_len'):
    if getattr(settings, name) < 1:
      raise ValueError(f'{name} must be >= 1, got {getattr(settings, name)}')
  if settings.length % settings.chunk_len:
    raise ValueError(f'--length ({settings.length}) must be a multiple of '
                     f'--chunk-len ({settings.chunk_len})')
  validation.check_non_negative_int('n_chunks_before',
                                   settings.n_chunks_before)
  validation.check_non_negative_int('n_chunks_after', settings.n_chunks_after)
  validation.check_n_buckets(settings.n_buckets)
  if settings.query is not None and not (
      0 <= settings.query < settings.length):
    raise ValueError(f'--query must be in 0..{settings.length - 1}, got '
                     f'{settings.query}')


def candidates(sticker, query, settings):
  """Per round, the key positions in `query`'s window (with repeats)."""
  query_pos, key_pos = weights_lib.window_positions(
      sticker, chunk_len=settings.chunk_len,
      n_chunks_before=settings.n_chunks_before,
      n_chunks_after=settings.n_chunks_after)
  n_rounds, length = np.shape(sticker)
  n_chunks = length // settings.chunk_len
  per_round = []
  for h in range(n_rounds):
    flat = h * n_chunks + int(np.where(
        query_pos[h * n_chunks:(h + 1) * n_chunks] == query)[0][0])
    keys = key_pos[flat]
    if settings.causal:
      keys = keys[keys <= query]  # exp(-1e9) is exactly 0
    per_round.append(keys)
  return per_round


def direct_attention(q, v, query, per_round, *, once=False):
  """Attention over the union of candidate sets, float64 NumPy.

  out = sum_h sum_{j in C_h} exp(s_j) v_j / sum_h sum_{j in C_h} exp(s_j):
  a key in several rounds' sets (or twice in one window) counts each time,
  as the kernel counts it; with `once`, each key of the union counts once
  (the paper's exact attention). s_j are the shared-QK logits with the self
  penalty; causally masked keys are left out of C_h.
  """
  q = np.asarray(q, np.float64)
  keys = oracle.shared_qk_keys(q)
  members = np.concatenate(per_round)
  if once:
    members = np.unique(members)
  logits = keys[members] @ q[query] - oracle.SELF_PENALTY * (members == query)
  weights = np.exp(logits - logits.max())
  return weights @ np.asarray(v, np.float64)[members] / weights.sum()


def self_only(per_round, query):
  """Whether the query's only candidate in every round is itself."""
  return all(np.all(c == query) for c in per_round)


def _pick_query(round_weights, sticker, settings):
  """A query that shows the combine best.

  Its rounds found different candidate sets and weigh as evenly as
  possible; never one that sees only itself, if another exists.
  """
  best, best_score = 0, None
  for query in range(sticker.shape[1]):
    per_round = candidates(sticker, query, settings)
    sets = {frozenset(c.tolist()) - {query} for c in per_round}
    score = (not self_only(per_round, query), len(sets) > 1,
             float(np.min(round_weights[:, query])))
    if best_score is None or score > best_score:
      best, best_score = query, score
  return best


@functools.partial(jax.jit, static_argnames=(
    'n_buckets', 'n_hashes', 'chunk_len', 'n_chunks_before', 'n_chunks_after',
    'causal'))
def _rounds(q, v, khash, *, n_buckets, n_hashes, chunk_len, n_chunks_before,
            n_chunks_after, causal):
  """Steps 1-4 with lsh_jax's functions, one compilation per setting.

  Returns:
    rotations [D, R, rot / 2], buckets [R, L], sticker [R, L], undo [R, L],
    o [R, L, Dv], lse [R, L], and `lsh_attention`'s output [L, Dv] without
    and with `allow_duplicate_attention=False`.
  """
  rotations = core.random_rotations(khash, q.shape[-1], n_buckets, n_hashes)
  buckets = core.hash_with_rotations(q, rotations, n_buckets)
  sticker, undo = core.sort_buckets(buckets)
  one_round = functools.partial(
      core.attend_round, q=q, keys=core.normalize_keys(q), v=v,
      mask=None, sticker=sticker, undo=undo, chunk_len=chunk_len,
      n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after,
      causal=causal)
  o, lse = jax.vmap(one_round)(jnp.arange(n_hashes, dtype=jnp.int32))
  # The public entry point on the same inputs, for comparison.
  public = functools.partial(
      lsh_jax.lsh_attention, q, v, hash_key=khash, n_buckets=n_buckets,
      n_hashes=n_hashes, chunk_len=chunk_len,
      n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after,
      causal=causal)
  return (rotations, buckets, sticker, undo, o, lse, public(),
          public(allow_duplicate_attention=False))


SWEEP = (1, 2, 4, 8)  # n_hashes of the exact-attention comparison


@functools.partial(jax.jit, static_argnames=(
    'n_buckets', 'chunk_len', 'n_chunks_before', 'n_chunks_after', 'causal'))
def _sweep(q, v, khash, *, n_buckets, chunk_len, n_chunks_before,
           n_chunks_after, causal):
  """Relative error against full attention, [len(SWEEP), 2]: per n_hashes,
  without and with `allow_duplicate_attention=False`."""
  full = lsh_jax.full_attention(q, v, causal=causal)
  rows = []
  for n_hashes in SWEEP:
    row = []
    for allow in (True, False):
      out = lsh_jax.lsh_attention(
          q, v, hash_key=khash, n_buckets=n_buckets, n_hashes=n_hashes,
          chunk_len=chunk_len, n_chunks_before=n_chunks_before,
          n_chunks_after=n_chunks_after, causal=causal,
          allow_duplicate_attention=allow)
      row.append(jnp.linalg.norm(out - full) / jnp.linalg.norm(full))
    rows.append(row)
  return jnp.asarray(rows)


def _chunk_views(q, sticker, lse, s):
  """Step 3 per flat chunk, and the largest relative lse difference."""
  n_rounds, length = sticker.shape
  n_chunks = length // s.chunk_len
  n_flat = n_rounds * n_chunks
  query_pos, key_pos = weights_lib.window_positions(
      sticker, chunk_len=s.chunk_len, n_chunks_before=s.n_chunks_before,
      n_chunks_after=s.n_chunks_after)
  q64 = np.asarray(q, np.float64)
  keys64 = oracle.shared_qk_keys(q64)
  views, worst = [], 0.0
  for f in range(n_flat):
    h, c = divmod(f, n_chunks)
    dots = oracle.mask_logits(q64[query_pos[f]] @ keys64[key_pos[f]].T,
                              query_pos[f], key_pos[f], causal=s.causal)
    chunk_lse = oracle.logsumexp(dots, axis=-1)  # [C]
    kernel_lse = lse[h][query_pos[f]]  # the kernel's slse for this chunk
    worst = max(worst, float(np.max(np.abs(kernel_lse - chunk_lse) /
                                    np.maximum(1.0, np.abs(chunk_lse)))))
    views.append(ChunkView(
        flat=f, round=h, chunk=c,
        window=[(f + d) % n_flat
                for d in range(-s.n_chunks_before, s.n_chunks_after + 1)],
        query_pos=query_pos[f], key_pos=key_pos[f],
        probs=np.exp(dots - chunk_lse[:, None]),  # [C, W * C]
        masked=dots < -oracle.CAUSAL_PENALTY / 2,  # causal: exactly 0
        kernel_lse=kernel_lse))
  return views, worst


def compute(settings):
  """Runs the example through every step; prints nothing.

  Returns:
    a `Walkthrough`; raises ValueError for settings it cannot show.
  """
  check_settings(settings)
  s = settings
  q, v, khash = make_inputs(s)
  arrays = _rounds(
      q, v, khash, n_buckets=validation.check_n_buckets(s.n_buckets),
      n_hashes=s.n_hashes, chunk_len=s.chunk_len,
      n_chunks_before=s.n_chunks_before, n_chunks_after=s.n_chunks_after,
      causal=s.causal)
  rotations, buckets, sticker, undo, o, lse, public, exact = (
      np.asarray(a) for a in arrays)
  chunks, lse_difference = _chunk_views(q, sticker, lse, s)
  weights = np.asarray(core.round_weights(jnp.asarray(lse)))  # [R, L]
  combined = np.asarray(core.combine_rounds(jnp.asarray(o),
                                            jnp.asarray(lse)))
  query = (s.query if s.query is not None
           else _pick_query(weights, sticker, s))
  per_round = candidates(sticker, query, s)
  direct = direct_attention(q, v, query, per_round)
  error = float(np.max(np.abs(combined[query] - direct)))
  only_self = self_only(per_round, query)
  tolerance = SELF_ONLY_TOLERANCE if only_self else TOLERANCE
  direct_exact = direct_attention(q, v, query, per_round, once=True)
  exact_error = float(np.max(np.abs(exact[query] - direct_exact)))
  everyone = [np.arange(s.length)[:query + 1] if s.causal
              else np.arange(s.length)]
  sweep = np.asarray(_sweep(
      q, v, khash, n_buckets=validation.check_n_buckets(s.n_buckets),
      chunk_len=s.chunk_len, n_chunks_before=s.n_chunks_before,
      n_chunks_after=s.n_chunks_after, causal=s.causal))
  return Walkthrough(
      settings=s, q=np.asarray(q), v=np.asarray(v), hash_key=khash,
      rotations=rotations,
      rotated=np.einsum('tf,fhb->htb', np.asarray(q), rotations),
      buckets=buckets, sticker=sticker, undo=undo, chunks=chunks,
      lse_difference=lse_difference, o=o, lse=lse, round_weights=weights,
      combined=combined, public=public, query=query, per_round=per_round,
      direct=direct, error=error, self_only=only_self, tolerance=tolerance,
      exact=exact, direct_exact=direct_exact, exact_error=exact_error,
      full=direct_attention(q, v, query, everyone),
      sweep=[(n, float(e), float(x)) for n, (e, x) in zip(SWEEP, sweep)],
      passed=bool(error <= tolerance and exact_error <= tolerance))


def walk(settings, out=None):
  """`compute`, then `render` (to `out`, default stdout).

  Returns:
    the `Walkthrough`; raises ValueError for settings it cannot show.
  """
  walkthrough = compute(settings)
  render(walkthrough, out)
  return walkthrough


def add_arguments(parser):
  d = Settings()
  parser.add_argument('--length', type=int, default=d.length,
                      help=f'L, up to {MAX_LENGTH} (default {d.length})')
  parser.add_argument('--depth', type=int, default=d.depth,
                      help=f'D, query/key depth (default {d.depth})')
  parser.add_argument('--d-v', type=int, default=d.d_v,
                      help=f'Dv, value depth (default {d.d_v})')
  parser.add_argument('--n-hashes', type=int, default=d.n_hashes,
                      help=f'R, hash rounds (default {d.n_hashes})')
  parser.add_argument('--n-buckets', type=int, nargs='+',
                      default=[d.n_buckets],
                      help='NB, even; several values are factors '
                      f'(default {d.n_buckets})')
  parser.add_argument('--chunk-len', type=int, default=d.chunk_len,
                      help=f'C (default {d.chunk_len})')
  parser.add_argument('--n-chunks-before', type=int,
                      default=d.n_chunks_before,
                      help=f'default {d.n_chunks_before}')
  parser.add_argument('--n-chunks-after', type=int, default=d.n_chunks_after,
                      help=f'default {d.n_chunks_after}')
  parser.add_argument('--causal', action='store_true',
                      help='causal masking')
  parser.add_argument('--seed', type=int, default=d.seed,
                      help='draws q, v and the hash key (default 0)')
  parser.add_argument('--query', type=int, default=None,
                      help='query shown in step 5 (default: the one whose '
                      'rounds weigh most evenly)')
  parser.add_argument('--plot', metavar='FILE.png', default=None,
                      help='also write a figure: buckets, sorted chunks, '
                      'effective vs full attention')


def settings_from_args(args):
  n_buckets = args.n_buckets[0] if len(args.n_buckets) == 1 else tuple(
      args.n_buckets)
  return Settings(
      length=args.length, depth=args.depth, d_v=args.d_v,
      n_hashes=args.n_hashes, n_buckets=n_buckets, chunk_len=args.chunk_len,
      n_chunks_before=args.n_chunks_before,
      n_chunks_after=args.n_chunks_after, causal=args.causal, seed=args.seed,
      query=args.query)


def run(args):
  """The subcommand: 0 if the step-5 check passes, 1 if not, 2 bad input."""
  try:
    if args.plot:
      commands.require_extras('plots')
    result = walk(settings_from_args(args))
  except (ValueError, commands.CommandError) as error:
    print(f'lsh-jax explain: error: {error}', file=sys.stderr)
    return 2
  if args.plot:
    from lsh_jax.apps import plots  # imports matplotlib
    plots.plot_explain(result, args.plot)
    print(f'\nfigure written to {args.plot}')
  return 0 if result.passed else 1


def main(argv=None):
  parser = argparse.ArgumentParser(
      prog='python -m lsh_jax.apps.explain', description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  add_arguments(parser)
  return run(parser.parse_args(argv))


if __name__ == '__main__':
  sys.exit(main())
