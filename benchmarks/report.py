"""Tables, target checks and the plot, from the cases' JSON records."""
import collections

import report_training

CHUNK_LEN, WINDOW, DEPTH = 64, 2, 64  # chunk 64, itself + one chunk back
MATMUL_N = 2048
LSH = ('lsh_jax', 'trax', 'hf', 'lucidrains', 'lsh_jax_seq')
DENSE = ('dense_blocked', 'dense_plain', 'dense_nn')
LABELS = {
    'lsh_jax': 'lsh_jax', 'lsh_jax_seq': 'lsh_jax, sequential rounds',
    'trax': 'Trax 1.4.1 fast path (jit pure_fn)',
    'hf': 'HF transformers (PyTorch)', 'lucidrains': 'reformer-pytorch (PyTorch)',
    'dense_blocked': 'dense JAX, blocked', 'dense_plain': 'dense JAX, plain',
    'dense_nn': 'jax.nn.dot_product_attention',
    'reformerlm_lsh_jax': 'ReformerLM + lsh_jax.trax',
    'reformerlm_trax': 'ReformerLM + Trax LSHSelfAttention',
}
# Backward counted as twice the forward's matmul FLOPs (the usual convention).
PASS_FACTOR = {'fwd': 1, 'bwd': 3, 'train': 3}


def attention_flops(impl, length, n_hashes, mode):
  """4 R L C W d for LSH (the issue's count), 4 L^2 d for dense; x3 for bwd."""
  if impl in LSH:
    fwd = 4 * n_hashes * length * CHUNK_LEN * WINDOW * DEPTH
  elif impl in DENSE:
    fwd = 4 * length * length * DEPTH
  else:
    return None
  return fwd * PASS_FACTOR[mode]


def fmt_len(n):
  if n >= 2**20 and n % 2**20 == 0:
    return f'{n // 2**20}M'
  if n >= 1024 and n % 1024 == 0:
    return f'{n // 1024}K'
  return str(n)


def one_line(r):
  head = f"{r['impl']} L={fmt_len(r['length'])} R={r['hashes']} {r['mode']}"
  if 'skip' in r:
    return f'{head}: skipped ({r["skip"]})'
  if 'group' in r:
    return (f"{head}: {r['median_ms']:.1f} ms (CPU {r['cpu_median_ms']:.1f}),"
            f" compile {r['compile_s']:.1f} s, XLA {r['xla_temp_mb']:.0f} MB")
  return (f"{head}: {r['median_ms']:.1f} ms (min {r['min_ms']:.1f}), "
          f"compile {r['compile_s'] or 0:.1f} s, "
          f"peak +{_delta_mb(r):.0f} MB")


def _delta_mb(r):
  return max(0.0, r['peak_rss_mb'] - r['base_rss_mb'])


def merge(records):
  """Per case: the faster round, with the spread over all rounds' calls."""
  groups = collections.defaultdict(list)
  for r in records:
    groups[(r['impl'], r['length'], r['hashes'], r['mode'])].append(r)
  merged = {}
  for key, rs in groups.items():
    ok = [r for r in rs if 'skip' not in r]
    if not ok:
      merged[key] = dict(rs[-1])
      continue
    best = dict(min(ok, key=lambda r: r['median_ms']))
    times = [t for r in ok for t in r['times_ms']]
    best['spread'] = (max(times) - min(times)) / best['median_ms']
    best['peak_delta_mb'] = max(_delta_mb(r) for r in ok)
    best['n_calls'] = len(times)
    best['n_rounds_ok'] = len(ok)
    merged[key] = best
  return merged


def matmul_gflops(merged):
  r = next((r for k, r in merged.items() if k[0] == 'matmul'), None)
  if not r or 'skip' in r:
    return None, None
  flops = 2 * MATMUL_N**3
  return flops / r['median_ms'] / 1e6, flops / r['min_ms'] / 1e6


def _ms(x):
  return f'{x:,.0f}' if x >= 100 else f'{x:.3g}'


def lsh_table(merged, rate):
  rows = ['| L | rounds | pass | implementation | compile s | median ms | '
          'spread | tokens/s | peak MB | % matmul rate | Trax time / this |',
          '|---|---|---|---|---|---|---|---|---|---|---|']
  keys = sorted((k for k in merged if k[0] in LSH + DENSE),
                key=lambda k: (k[1], k[2], k[3] != 'fwd',
                               (LSH + DENSE).index(k[0])))
  for k in keys:
    impl, length, n_hashes, mode = k
    r = merged[k]
    rounds = '-' if impl in DENSE else str(n_hashes)
    head = (f'| {fmt_len(length)} | {rounds} | {mode} | '
            f'{LABELS.get(impl, impl)} |')
    if 'skip' in r:
      rows.append(f'{head} skipped: {r["skip"]} | | | | | | |')
      continue
    flops = attention_flops(impl, length, n_hashes, mode)
    frac = (f'{100 * flops / r["median_ms"] / 1e6 / rate:.1f}%'
            if rate and flops else '')
    trax = merged.get(('trax', length, n_hashes, mode))
    ratio = ''
    if impl in LSH and trax and 'skip' not in trax:
      ratio = f'{trax["median_ms"] / r["median_ms"]:.2f}x'
    compile_s = ('' if r.get('compile_s') is None
                 else f'{r["compile_s"]:.1f}')
    rows.append(
        f'{head} {compile_s} | {_ms(r["median_ms"])} | '
        f'±{100 * r["spread"] / 2:.0f}% | '
        f'{length / r["median_ms"] * 1e3:,.0f} | {r["peak_delta_mb"]:,.0f} | '
        f'{frac} | {ratio} |')
  return '\n'.join(rows)


def lm_table(merged):
  keys = sorted((k for k in merged if k[0].startswith('reformerlm')),
                key=lambda k: (k[1], k[2], k[0]))
  if not keys:
    return ''
  rows = ['| L | rounds | model | compile s | step ms | steps/s | peak MB | '
          'Trax step / this |', '|---|---|---|---|---|---|---|---|']
  for k in keys:
    r = merged[k]
    head = f'| {fmt_len(k[1])} | {k[2]} | {LABELS[k[0]]} |'
    if 'skip' in r:
      rows.append(f'{head} skipped: {r["skip"]} | | | | |')
      continue
    trax = merged.get(('reformerlm_trax', k[1], k[2], k[3]))
    ratio = ('' if not trax or 'skip' in trax else
             f'{trax["median_ms"] / r["median_ms"]:.2f}x')
    rows.append(f'{head} {r["compile_s"]:.1f} | {_ms(r["median_ms"])} | '
                f'{1e3 / r["median_ms"]:.2f} | {r["peak_delta_mb"]:,.0f} | '
                f'{ratio} |')
  return '\n'.join(rows)


def targets(merged, rate):
  """The issue's targets, checked on this run's numbers."""
  get = lambda *k: (merged.get(k) if merged.get(k) and
                    'skip' not in merged.get(k) else None)
  lines = []

  def check(name, ok, detail):
    mark = 'n/a' if ok is None else ('met' if ok else 'NOT met')
    lines.append(f'- {name}: **{mark}** ({detail})')

  for mode, need in (('fwd', 3.0), ('bwd', 2.0)):
    details, oks = [], []
    for length in (16384, 65536):
      for n_hashes in (4, 8):
        ours, trax = get('lsh_jax', length, n_hashes, mode), get(
            'trax', length, n_hashes, mode)
        if not ours or not trax:
          continue
        ratio = trax['median_ms'] / ours['median_ms']
        peers = [get(p, length, n_hashes, mode) for p in LSH[1:4]]
        fastest = all(p is None or p['median_ms'] > ours['median_ms']
                      for p in peers)
        oks.append(ratio >= need and (fastest or mode == 'bwd'))
        details.append(f'{fmt_len(length)}x{n_hashes}: {ratio:.2f}x'
                       + ('' if fastest else ', a peer is faster'))
    check(f'{mode} at 16K/64K x 4/8 rounds >= {need:g}x faster than Trax'
          + (' and faster than every peer' if mode == 'fwd' else ''),
          all(oks) if oks else None, '; '.join(details) or 'not measured')
  details, oks = [], []
  for (impl, length, n_hashes, mode), r in sorted(merged.items()):
    if impl != 'lsh_jax' or length < 4096 or 'skip' in r:
      continue
    dense = [get(d, length, 0, mode) for d in DENSE]
    dense = [d['median_ms'] for d in dense if d]
    if dense:
      oks.append(r['median_ms'] < min(dense))
      if not oks[-1]:
        details.append(f'{fmt_len(length)}x{n_hashes} {mode}: '
                       f'{r["median_ms"]:.0f} vs {min(dense):.0f} ms')
  check('faster than the best dense from L = 4K', all(oks) if oks else None,
        '; '.join(details) or f'{len(oks)} cases compared')
  details, oks = [], []
  for mode in ('fwd', 'bwd'):
    ours, trax = get('lsh_jax', 65536, 8, mode), get('trax', 65536, 8, mode)
    if ours and trax:
      oks.append(ours['peak_delta_mb'] <= trax['peak_delta_mb'] / 2)
      details.append(f'{mode}: {ours["peak_delta_mb"]:,.0f} vs '
                     f'{trax["peak_delta_mb"]:,.0f} MB')
    small = get('lsh_jax', 16384, 8, mode)
    if ours and small:
      details.append(f'{mode} 64K/16K memory ratio '
                     f'{ours["peak_delta_mb"] / small["peak_delta_mb"]:.1f} '
                     '(4.0 = linear)')
  check('peak memory at 64K x 8 <= half of Trax (and linear in L)',
        all(oks) if oks else None, '; '.join(details) or 'not measured')
  details, oks = [], []
  for impl in ('lsh_jax', 'lsh_jax_seq'):
    both = [merged.get((impl, 2**20, 8, mode)) for mode in ('fwd', 'bwd')]
    if not any(both):
      continue
    oks.append(all(r and 'skip' not in r for r in both))
    for mode, r in zip(('fwd', 'bwd'), both):
      if r:
        details.append(f'{LABELS[impl]} {mode}: ' + (
            r['skip'] if 'skip' in r else f'{r["median_ms"] / 1e3:.1f} s, '
            f'peak {r["peak_rss_mb"] / 1024:.1f} GB'))
  check('L = 1M x 8 forward and backward fit in 24 GB',
        any(oks) if oks else None, '; '.join(details) or 'not measured')
  details, oks = [], []
  for (impl, length, n_hashes, mode), r in sorted(merged.items()):
    if impl == 'lsh_jax' and length >= 16384 and 'skip' not in r and rate:
      frac = attention_flops(impl, length, n_hashes, mode) / r[
          'median_ms'] / 1e6 / rate
      oks.append(frac >= 0.25)
      details.append(f'{fmt_len(length)}x{n_hashes} {mode} {100 * frac:.0f}%')
  check('>= 25% of the matmul rate on attention FLOPs at L >= 16K',
        all(oks) if oks else None, ', '.join(details) or 'not measured')
  return '\n'.join(lines)


def render(records, meta):
  groups = report_training.render(records)
  records = [r for r in records if 'group' not in r]
  merged = merge(records)
  rate, best_rate = matmul_gflops(merged)
  m = meta['machine']
  versions = {}
  for r in records:
    versions.update(r.get('versions') or {})
  vtext = ', '.join(f'{k} {v}' for k, v in sorted(versions.items()))
  rate_text = (f'{rate:.0f} GFLOP/s (median; best call {best_rate:.0f})'
               if rate else 'not measured')
  out = [
      f'Machine: {m.get("cpu", "?")}, {m.get("cores")} cores, '
      f'{m.get("mem_gb")} GB' + (
          f'; load average {m["load"][0]:.2f} at start, '
          f'{m["load_end"][0]:.2f} at the end' if 'load_end' in m else '')
      + '. '
      f'Python {m.get("python")}; {vtext}.',
      f'Command: `{meta["command"]}` at revision {meta.get("revision", "?")} '
      f'({meta["started"]} to '
      f'{meta.get("finished", "?")}; each case in a fresh process, '
      f'{meta["rounds"]} interleaved round(s), the faster kept).',
  ]
  for run in meta.get('earlier', []):
    out.append(f'Appended to: `{run["command"]}` at revision '
               f'{run["revision"]} ({run["started"]} to {run["finished"]}).')
  out += [
      f'Float32 {MATMUL_N}^3 matmul in JAX: {rate_text}.',
      '',
      'Settings: float32, batch 1, one head, d = 64, chunk 64, one chunk '
      'back, n_buckets = 2L/64 (factorised above 128). *median ms*: median '
      'of the timed calls after compilation (compile s apart); *spread*: '
      '±half of (slowest - fastest call) / median over all rounds; *peak MB*: '
      'resident memory of the timed calls above the process baseline '
      '(after imports and inputs); *% matmul rate*: attention FLOPs '
      '(4·R·L·C·(1+before+after)·d for LSH, 4·L²·d dense; x3 for fwd+bwd) '
      'per second over the matmul rate; *Trax time / this*: > 1 is faster '
      'than Trax. Pass `bwd` = forward + backward: gradient in q and v '
      '(lsh_jax, dense, lucidrains), in the input x (Trax, HF; their layers '
      'include the q/v projections, Trax also its output projection and '
      'weight gradients).',
      '',
      lsh_table(merged, rate),
  ]
  lm = lm_table(merged)
  if lm:
    out += ['', 'ReformerLM training steps (vocab 256, d_model 128, '
            '2 layers, 2 heads, SGD step = jit(grad + update)):', '', lm]
  if groups:
    out += ['', groups]
  out += ['', 'Targets (issue 4), on this run:', '', targets(merged, rate), '']
  return '\n'.join(out)


def plot(records, path):
  """Time and peak memory against length, log-log, fwd and fwd+bwd."""
  records = [r for r in records if 'group' not in r]
  try:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
  except ImportError:
    print('[bench] matplotlib not installed: no plot')
    return False
  merged = merge(records)
  colours = dict(zip(LSH + DENSE,
                     ('C0', 'C1', 'C2', 'C3', 'C4', 'k', '0.5', '0.7')))
  styles = {0: '-', 1: ':', 4: '--', 8: '-'}
  fig, axes = plt.subplots(2, 2, figsize=(12, 9))
  for row, mode in enumerate(('fwd', 'bwd')):
    series = collections.defaultdict(list)
    for (impl, length, n_hashes, m), r in merged.items():
      if m == mode and impl in colours and 'skip' not in r:
        series[(impl, n_hashes)].append(
            (length, r['median_ms'], max(r['peak_delta_mb'], 1.0)))
    for (impl, n_hashes), pts in sorted(series.items()):
      pts.sort()
      xs = [p[0] for p in pts]
      label = LABELS[impl] + (f', R={n_hashes}' if impl in LSH else '')
      kw = dict(color=colours[impl], linestyle=styles.get(n_hashes, '-'),
                marker='o' if n_hashes in (0, 8) else '.', label=label,
                linewidth=2.2 if impl == 'lsh_jax' else 1.2)
      axes[row, 0].plot(xs, [p[1] for p in pts], **kw)
      axes[row, 1].plot(xs, [p[2] for p in pts], **kw)
    title = 'forward' if mode == 'fwd' else 'forward + backward'
    axes[row, 0].set_title(f'{title}: time (median ms)')
    axes[row, 1].set_title(f'{title}: peak memory above baseline (MB)')
    for ax in axes[row]:
      ax.set_xscale('log', base=2)
      ax.set_yscale('log')
      ax.set_xlabel('sequence length L')
      ax.grid(True, which='both', alpha=0.3)
  handles, labels = axes[0, 0].get_legend_handles_labels()
  fig.legend(handles, labels, loc='lower center', ncol=4, fontsize=8)
  fig.tight_layout(rect=(0, 0.08, 1, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True
