"""`lsh-jax explain`: one small example through every step of the algorithm.

Prints, in the order of docs/algorithm.md, the real intermediate arrays of
the JAX pipeline and their shapes: the hash (§1: rotations, buckets per
round), the sort (§2: sorted positions and chunk boundaries), chunked
attention (§3: each chunk's probabilities and log-sum-exps), the undone sort
(§4) and the combine (§5) for one query: each round's output and
log-sum-exp, the round weights, the combined result, and a check against
attention computed directly (NumPy, float64) over the union of that query's
candidate sets. Exit status 1 if that check fails.

    python -m lsh_jax.apps.explain [--length 16 --n-hashes 2 --n-buckets 4
                               --chunk-len 4 --seed 0] [--plot FILE.png]

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
from lsh_jax.core import hashing
from lsh_jax import oracle
from lsh_jax.core import validation
from lsh_jax.core import weights as weights_lib

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
class Walkthrough:
  """Every intermediate array of one explained example (NumPy)."""
  settings: Settings
  q: np.ndarray  # [L, D]
  v: np.ndarray  # [L, Dv]
  hash_key: object  # the PRNG key of the rotations
  rotations: np.ndarray  # [D, R, rot / 2]
  buckets: np.ndarray  # [R, L]
  sticker: np.ndarray  # [R, L]
  undo: np.ndarray  # [R, L]
  o: np.ndarray  # [R, L, Dv]
  lse: np.ndarray  # [R, L]
  round_weights: np.ndarray  # [R, L]
  combined: np.ndarray  # [L, Dv]
  query: int
  direct: np.ndarray  # [Dv], float64 attention over the union
  error: float
  tolerance: float
  passed: bool


def _fmt(array, precision=3):
  return np.array2string(np.asarray(array), precision=precision,
                         suppress_small=True, max_line_width=100,
                         separator=' ')


def _num(x, width=8):
  """A number in `width` characters: 3 decimals, or -1e+05 if large."""
  return f'{x:{width}.3f}' if abs(x) < 1e4 else f'{x:{width}.0e}'


def _chunked(row, chunk_len, width=3):
  """'a b c | d e f' with a bar at every chunk boundary."""
  cells = [f'{int(x):>{width}d}' for x in row]
  groups = [' '.join(cells[i:i + chunk_len])
            for i in range(0, len(cells), chunk_len)]
  return ' |'.join(groups)


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


def direct_attention(q, v, query, per_round):
  """Attention over the union of candidate sets, float64 NumPy.

  out = sum_h sum_{j in C_h} exp(s_j) v_j / sum_h sum_{j in C_h} exp(s_j):
  a key in several rounds' sets (or twice in one window) counts each time,
  as the kernel counts it. s_j are the shared-QK logits with the self
  penalty; causally masked keys are left out of C_h.
  """
  q = np.asarray(q, np.float64)
  keys = oracle.shared_qk_keys(q)
  members = np.concatenate(per_round)
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
    o [R, L, Dv], lse [R, L], and `lsh_attention`'s output [L, Dv].
  """
  rotations = lsh_jax.core.random_rotations(khash, q.shape[-1], n_buckets,
                                       n_hashes)
  buckets = lsh_jax.core.hash_with_rotations(q, rotations, n_buckets)
  sticker, undo = lsh_jax.core.sort_buckets(buckets)
  one_round = functools.partial(
      lsh_jax.core.attend_round, q=q, keys=lsh_jax.core.normalize_keys(q), v=v,
      mask=None, sticker=sticker, undo=undo, chunk_len=chunk_len,
      n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after,
      causal=causal)
  o, lse = jax.vmap(one_round)(jnp.arange(n_hashes, dtype=jnp.int32))
  # The public entry point on the same inputs, for comparison.
  public = lsh_jax.lsh_attention(
      q, v, khash, n_buckets=n_buckets, n_hashes=n_hashes,
      chunk_len=chunk_len, n_chunks_before=n_chunks_before,
      n_chunks_after=n_chunks_after, causal=causal)
  return rotations, buckets, sticker, undo, o, lse, public


def walk(settings, out=None):
  """Runs and prints the walkthrough (to `out`, default stdout).

  Returns:
    a `Walkthrough`; raises ValueError for settings it cannot show.
  """
  check_settings(settings)
  out = out or sys.stdout
  s = settings
  p = lambda *a: print(*a, file=out)
  q, v, khash = make_inputs(s)
  length, depth = q.shape
  factors = hashing.bucket_factors(s.n_buckets)
  n_total = hashing.n_buckets_total(s.n_buckets)
  n_chunks = length // s.chunk_len
  n_flat = s.n_hashes * n_chunks
  p(f'LSH self-attention step by step (docs/algorithm.md): L={length} tokens, '
    f'D={depth}, Dv={s.d_v}, R={s.n_hashes} hash rounds, NB={n_total} '
    f'buckets, C={s.chunk_len} (N={n_chunks} chunks per round), window = '
    f'{s.n_chunks_before} chunk(s) before + own + {s.n_chunks_after} after'
    f'{", causal" if s.causal else ""}, seed {s.seed}')
  p('')
  p(f'inputs: q {list(q.shape)} shared queries/keys, v {list(v.shape)} '
    f'values (standard normal)')
  if length <= 16:
    for t in range(length):
      p(f'    {t:>3d}  q ' + ''.join(f'{x:6.2f}' for x in q[t]) + '   v '
        + ''.join(f'{x:6.2f}' for x in v[t]))

  # 1. Hash.
  p('')
  p('STEP 1  hash (§1): random rotations, argmax over [r, -r]')
  arrays = _rounds(
      q, v, khash, n_buckets=validation.check_n_buckets(s.n_buckets),
      n_hashes=s.n_hashes, chunk_len=s.chunk_len,
      n_chunks_before=s.n_chunks_before, n_chunks_after=s.n_chunks_after,
      causal=s.causal)
  rotations, buckets, sticker, undo, o, lse, public = (
      np.asarray(a) for a in arrays)
  rotated = np.einsum('tf,fhb->htb', np.asarray(q), np.asarray(rotations))
  p(f'  rotations {list(rotations.shape)} = [D, R, sum(factors) / 2], '
    f'factors {list(factors)}')
  p(f'  rotated = q @ rotations[:, h]: {list(rotated.shape)} = [R, L, '
    f'{sum(factors) // 2}]; bucket = argmax over [rotated, -rotated]')
  p(f'  buckets {list(buckets.shape)} = [R, L], ids 0..{n_total - 1}:')
  p('    position    ' + ''.join(f'{t:>6d}' for t in range(length)))
  for h in range(s.n_hashes):
    if length <= 32:
      for r in range(rotated.shape[-1]):
        p(f'    round {h} r[{r}]' + ''.join(f'{x:6.2f}' for x in rotated[h, :, r]))
    p(f'    round {h} bucket' + ''.join(f'{int(b):>6d}' for b in buckets[h]))

  # 2. Sort.
  p('')
  p('STEP 2  sort by (bucket, position) (§2); | = chunk boundary')
  p(f'  sticker {list(sticker.shape)} = [R, L] sorted positions, undo_sort '
    f'{list(undo.shape)} its inverse')
  for h in range(s.n_hashes):
    p(f'    round {h} positions {_chunked(sticker[h], s.chunk_len)}')
    p(f'            buckets {_chunked(buckets[h][sticker[h]], s.chunk_len)}')
  p(f'  flat chunk axis of all rounds: R * N = {n_flat} chunks; chunk f '
    f'sees chunks f-{s.n_chunks_before}..f+{s.n_chunks_after} (mod {n_flat})')

  # 3. Chunked attention: the kernel per round, probabilities recomputed.
  p('')
  p('STEP 3  chunked attention (§3): keys = normalize(q) / sqrt(D); '
    'logits masked (self -1e5'
    + (', causal -1e9' if s.causal else '') + '); softmax per chunk')
  query_pos, key_pos = weights_lib.window_positions(
      sticker, chunk_len=s.chunk_len, n_chunks_before=s.n_chunks_before,
      n_chunks_after=s.n_chunks_after)
  q64 = np.asarray(q, np.float64)
  keys64 = oracle.shared_qk_keys(q64)
  worst = 0.0
  for f in range(n_flat):
    h, c = divmod(f, n_chunks)
    dots = oracle.mask_logits(q64[query_pos[f]] @ keys64[key_pos[f]].T,
                              query_pos[f], key_pos[f], causal=s.causal)
    chunk_lse = oracle.logsumexp(dots, axis=-1)  # [C]
    probs = np.exp(dots - chunk_lse[:, None])  # [C, W * C]
    kernel_lse = lse[h][query_pos[f]]  # the kernel's slse for this chunk
    worst = max(worst, float(np.max(np.abs(kernel_lse - chunk_lse) /
                                    np.maximum(1.0, np.abs(chunk_lse)))))
    window = []
    for d in range(-s.n_chunks_before, s.n_chunks_after + 1):
      g = (f + d) % n_flat
      window.append(str(g) if g // n_chunks == h else
                    f'{g} (round {g // n_chunks} chunk {g % n_chunks})')
    p(f'  round {h} chunk {c} (flat {f}): queries {query_pos[f].tolist()}, '
      f'window = flat chunks {", ".join(window)}')
    p(f'    probabilities [{s.chunk_len}, {key_pos.shape[1]}] (rows: '
      f'queries, columns: keys by position; - = masked'
      + (')' if s.causal else '; the query itself gets ~0: self -1e5)'))
    p('      key pos ' + ''.join(f'{int(j):>6d}' for j in key_pos[f]))
    masked = dots < -oracle.CAUSAL_PENALTY / 2  # causal: exactly 0
    for row, i in enumerate(query_pos[f]):
      cells = ['     -' if m else f'{x:6.3f}'
               for x, m in zip(probs[row], masked[row])]
      p(f'      q {int(i):>3d}   ' + ''.join(cells)
        + f'   slse {_num(kernel_lse[row])}')
  p(f'  so [R, L, Dv] = {[s.n_hashes, length, s.d_v]}, slse [R, L] = '
    f'{[s.n_hashes, length]} (sorted order). Kernel lse vs these float64 '
    f'probabilities: max relative difference {worst:.1e}')

  # 4. Undo the sort.
  p('')
  p('STEP 4  undo the sort (§4): o[h] = so[h][undo_sort[h]], '
    'lse[h] = slse[h][undo_sort[h]]')
  p(f'  o {list(o.shape)} = [R, L, Dv], lse {list(lse.shape)} = [R, L] in '
    'original order:')
  p(f'    position' + ''.join(f'{t:>7d}' for t in range(length)))
  for h in range(s.n_hashes):
    p(f'    lse[{h}]  ' + ''.join(_num(x, 7) for x in lse[h]))

  # 5. Combine.
  weights = np.asarray(lsh_jax.core.round_weights(jnp.asarray(lse)))  # [R, L]
  combined = np.asarray(lsh_jax.core.combine_rounds(jnp.asarray(o),
                                               jnp.asarray(lse)))
  query = (s.query if s.query is not None
           else _pick_query(weights, sticker, s))
  per_round = candidates(sticker, query, s)
  direct = direct_attention(q, v, query, per_round)
  error = float(np.max(np.abs(combined[query] - direct)))
  only_self = self_only(per_round, query)
  tolerance = SELF_ONLY_TOLERANCE if only_self else TOLERANCE
  passed = bool(error <= tolerance)
  p('')
  p(f'STEP 5  combine the rounds (§5), query {query}: weights '
    f'w_h = softmax_h(lse_h), out = sum_h w_h o_h')
  p('  Z_h = exp(lse_h) is the probability mass round h found; the rounds '
    'are re-weighted by it, w_h = Z_h / sum_h Z_h')
  for h in range(s.n_hashes):
    p(f'  round {h}: candidates C_{h} = {sorted(per_round[h].tolist())}')
    p(f'           o_{h} = {_fmt(o[h, query])}  lse_{h} = {lse[h, query]:.4f}'
      f'  w_{h} = {weights[h, query]:.4f}')
  for label, value in [
      ('round weights softmax(lse) [R]', _fmt(weights[:, query], 4)),
      ('combined sum_h w_h o_h', _fmt(combined[query], 5)),
      (f'lsh_attention(q, v)[{query}]', _fmt(public[query], 5))]:
    p(f'  {label:<31}= {value}')
  p(f'  {"direct over the union of C_h":<31}= {_fmt(direct, 5)}')
  p('    (float64 attention over all rounds\' candidates at once: '
    'sum_h sum_{j in C_h} exp(s_j) v_j / sum_h sum_{j in C_h} exp(s_j);\n'
    '     a key found by k rounds counts k times, as in the combine)')
  note = (' (this query sees only itself: float32 caveat of §5)'
          if only_self else '')
  p(f'  check: max |combined - direct| = {error:.1e} '
    f'{"<=" if passed else ">"} {tolerance:g}{note}: '
    f'{"PASS" if passed else "FAIL"}')
  return Walkthrough(
      settings=s, q=np.asarray(q), v=np.asarray(v), hash_key=khash,
      rotations=np.asarray(rotations), buckets=buckets, sticker=sticker,
      undo=undo, o=o, lse=lse, round_weights=weights, combined=combined,
      query=query, direct=direct, error=error, tolerance=tolerance,
      passed=passed)


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
    result = walk(settings_from_args(args))
  except ValueError as error:
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
