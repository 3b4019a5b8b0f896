"""`lsh-jax explain`'s text: prints a `Walkthrough`, step by step.

The numbers come from `lsh_jax.apps.explain.compute`; this module only
formats them, in the order of docs/algorithm.md (§1-§5).
"""
import sys

import numpy as np

from lsh_jax.core import hashing

__all__ = ['render']


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


def _render_inputs(w, p):
  s = w.settings
  length, depth = w.q.shape
  n_chunks = length // s.chunk_len
  p(f'LSH self-attention step by step (docs/algorithm.md): L={length} tokens, '
    f'D={depth}, Dv={s.d_v}, R={s.n_hashes} hash rounds, '
    f'NB={hashing.n_buckets_total(s.n_buckets)} '
    f'buckets, C={s.chunk_len} (M={n_chunks} chunks per round), window = '
    f'{s.n_chunks_before} chunk(s) before + own + {s.n_chunks_after} after'
    f'{", causal" if s.causal else ""}, seed {s.seed}')
  p('')
  p(f'inputs: q {list(w.q.shape)} shared queries/keys, v {list(w.v.shape)} '
    f'values (standard normal)')
  if length <= 16:
    for t in range(length):
      p(f'    {t:>3d}  q ' + ''.join(f'{x:6.2f}' for x in w.q[t]) + '   v '
        + ''.join(f'{x:6.2f}' for x in w.v[t]))


def _render_hash(w, p):
  s = w.settings
  length = w.q.shape[0]
  factors = hashing.bucket_factors(s.n_buckets)
  p('')
  p('STEP 1  hash (§1): random rotations, argmax over [r, -r]')
  p(f'  rotations {list(w.rotations.shape)} = [D, R, sum(factors) / 2], '
    f'factors {list(factors)}')
  p(f'  rotated = q @ rotations[:, h]: {list(w.rotated.shape)} = [R, L, '
    f'{sum(factors) // 2}]; bucket = argmax over [rotated, -rotated]')
  p(f'  buckets {list(w.buckets.shape)} = [R, L], ids '
    f'0..{hashing.n_buckets_total(s.n_buckets) - 1}:')
  p('    position    ' + ''.join(f'{t:>6d}' for t in range(length)))
  for h in range(s.n_hashes):
    if length <= 32:
      for r in range(w.rotated.shape[-1]):
        p(f'    round {h} r[{r}]'
          + ''.join(f'{x:6.2f}' for x in w.rotated[h, :, r]))
    p(f'    round {h} bucket' + ''.join(f'{int(b):>6d}' for b in w.buckets[h]))


def _render_sort(w, p):
  s = w.settings
  n_flat = len(w.chunks)
  p('')
  p('STEP 2  sort by (bucket, position) (§2); | = chunk boundary')
  p(f'  sticker {list(w.sticker.shape)} = [R, L] sorted positions, undo_sort '
    f'{list(w.undo.shape)} its inverse')
  for h in range(s.n_hashes):
    p(f'    round {h} positions {_chunked(w.sticker[h], s.chunk_len)}')
    p(f'            buckets '
      f'{_chunked(w.buckets[h][w.sticker[h]], s.chunk_len)}')
  p(f'  flat chunk axis of all rounds: R * M = {n_flat} chunks; chunk f '
    f'sees chunks f-{s.n_chunks_before}..f+{s.n_chunks_after} (mod {n_flat})')


def _render_chunks(w, p):
  s = w.settings
  n_chunks = w.q.shape[0] // s.chunk_len
  p('')
  p('STEP 3  chunked attention (§3): keys = normalize(q) / sqrt(D); '
    'logits masked (self -1e5'
    + (', causal -1e9' if s.causal else '') + '); softmax per chunk')
  for view in w.chunks:
    window = [str(g) if g // n_chunks == view.round else
              f'{g} (round {g // n_chunks} chunk {g % n_chunks})'
              for g in view.window]
    p(f'  round {view.round} chunk {view.chunk} (flat {view.flat}): queries '
      f'{view.query_pos.tolist()}, window = flat chunks {", ".join(window)}')
    p(f'    probabilities [{s.chunk_len}, {view.key_pos.shape[0]}] (rows: '
      f'queries, columns: keys by position; - = masked'
      + (')' if s.causal else '; the query itself gets ~0: self -1e5)'))
    p('      key pos ' + ''.join(f'{int(j):>6d}' for j in view.key_pos))
    for row, i in enumerate(view.query_pos):
      cells = ['     -' if m else f'{x:6.3f}'
               for x, m in zip(view.probs[row], view.masked[row])]
      p(f'      q {int(i):>3d}   ' + ''.join(cells)
        + f'   slse {_num(view.kernel_lse[row])}')
  length = w.q.shape[0]
  p(f'  so [R, L, Dv] = {[s.n_hashes, length, s.d_v]}, slse [R, L] = '
    f'{[s.n_hashes, length]} (sorted order). Kernel lse vs these float64 '
    f'probabilities: max relative difference {w.lse_difference:.1e}')


def _render_undo(w, p):
  p('')
  p('STEP 4  undo the sort (§4): o[h] = so[h][undo_sort[h]], '
    'lse[h] = slse[h][undo_sort[h]]')
  p(f'  o {list(w.o.shape)} = [R, L, Dv], lse {list(w.lse.shape)} = [R, L] '
    'in original order:')
  p('    position' + ''.join(f'{t:>7d}' for t in range(w.q.shape[0])))
  for h in range(w.settings.n_hashes):
    p(f'    lse[{h}]  ' + ''.join(_num(x, 7) for x in w.lse[h]))


def _render_combine(w, p):
  query = w.query
  p('')
  p(f'STEP 5  combine the rounds (§5), query {query}: weights '
    f'w_h = softmax_h(lse_h), out = sum_h w_h o_h')
  p('  Z_h = exp(lse_h) is the probability mass round h found; the rounds '
    'are re-weighted by it, w_h = Z_h / sum_h Z_h')
  for h in range(w.settings.n_hashes):
    p(f'  round {h}: candidates C_{h} = {sorted(w.per_round[h].tolist())}')
    p(f'           o_{h} = {_fmt(w.o[h, query])}  '
      f'lse_{h} = {w.lse[h, query]:.4f}'
      f'  w_{h} = {w.round_weights[h, query]:.4f}')
  for label, value in [
      ('round weights softmax(lse) [R]', _fmt(w.round_weights[:, query], 4)),
      ('combined sum_h w_h o_h', _fmt(w.combined[query], 5)),
      (f'lsh_attention(q, v)[{query}]', _fmt(w.public[query], 5))]:
    p(f'  {label:<31}= {value}')
  p(f'  {"direct over the union of C_h":<31}= {_fmt(w.direct, 5)}')
  p('    (float64 attention over all rounds\' candidates at once: '
    'sum_h sum_{j in C_h} exp(s_j) v_j / sum_h sum_{j in C_h} exp(s_j);\n'
    '     a key found by k rounds counts k times, as in the combine)')
  note = (' (this query sees only itself: float32 caveat of §5)'
          if w.self_only else '')
  p(f'  check: max |combined - direct| = {w.error:.1e} '
    f'{"<=" if w.passed else ">"} {w.tolerance:g}{note}: '
    f'{"PASS" if w.passed else "FAIL"}')


def _render_exact(w, p):
  query = w.query
  members = np.concatenate(w.per_round)
  keys, counts = np.unique(members, return_counts=True)
  p('')
  p(f'STEP 5b exact multi-round attention (§5a, the paper), query {query}: '
    'allow_duplicate_attention=False')
  p('  a key found by N rounds has log N subtracted from its logit in each, '
    'so the combine counts it once:')
  p('  key ' + ' '.join(f'{k:>3}' for k in keys))
  p('  N   ' + ' '.join(f'{n:>3}' for n in counts))
  for label, value in [
      (f'lsh_attention(..., exact)[{query}]', _fmt(w.exact[query], 5)),
      ('direct over the union, once', _fmt(w.direct_exact, 5)),
      ('full attention (all keys)', _fmt(w.full, 5))]:
    p(f'  {label:<31}= {value}')
  passed = w.exact_error <= w.tolerance
  p(f'  check: max |exact - direct once| = {w.exact_error:.1e} '
    f'{"<=" if passed else ">"} {w.tolerance:g}: '
    f'{"PASS" if passed else "FAIL"}')
  p('  the whole example against full attention, |out - full| / |full|, as '
    'rounds are added (same hash key):')
  p('  n_hashes | duplicates counted | exact')
  for n_hashes, error, exact_error in w.sweep:
    p(f'  {n_hashes:>8} | {error:18.4f} | {exact_error:.4f}')


def render(walkthrough, out=None):
  """Prints a `Walkthrough` step by step (to `out`, default stdout)."""
  p = lambda *a: print(*a, file=out or sys.stdout)
  for part in (_render_inputs, _render_hash, _render_sort, _render_chunks,
               _render_undo, _render_combine, _render_exact):
    part(walkthrough, p)
