"""Tables of the training groups (training.py): layer, ReformerLM, multi-head.

Every ratio here compares functions timed in one process, interleaved
(`training.time_group`), never numbers from different processes.
"""
import collections

LABELS = {
    'layer_lsh_jax': 'lsh_jax.trax.LSHSelfAttention',
    'layer_trax': 'Trax 1.4.1 LSHSelfAttention',
    'layer_flax': 'lsh_jax.flax.LSHSelfAttention (NNX)',
    'lm_lsh_jax': 'ReformerLM + lsh_jax.trax',
    'lm_trax': 'ReformerLM + Trax LSHSelfAttention',
    'lm_flax': 'lsh_jax.flax.ReformerLM (reversible, optax Adam)',
    'multihead_lsh_self_attention': 'lsh_jax.lsh_self_attention',
    'multihead_nested_vmap': 'vmap(vmap(lsh_jax.lsh_attention))',
    'multihead_dense_nn': 'jax.nn.dot_product_attention (dense, causal)',
    'seqpar_1dev': 'lsh_jax.lsh_self_attention, 1 of 2 CPU devices',
    'seqpar_2dev': 'the same, sequence-parallel over 2 CPU devices',
}


def _label(impl):
  base, _, option = impl.partition('[')
  return LABELS.get(base, base) + (f' [{option}' if option else '')


def _ms(x):
  return f'{x:,.0f}' if x >= 100 else f'{x:.3g}'


def _spread(r):
  return (r['max_ms'] - r['min_ms']) / r['median_ms'] / 2


def _reference(kind, impl, mode, by_name):
  """The function a row is compared with (the ratio column), or None."""
  if kind == 'layer' and impl.startswith('layer_lsh_jax'):
    return by_name.get((impl.replace('lsh_jax', 'trax'), mode))
  if kind == 'layer' and impl == 'layer_flax':
    return by_name.get(('layer_trax[nph=1]', mode))
  if kind == 'lm' and impl == 'lm_lsh_jax':
    return by_name.get(('lm_trax', mode))
  if kind == 'flax_lm' and impl == 'lm_flax':
    return by_name.get(('lm_trax', mode))
  if kind == 'lm' and impl.startswith('layer_lsh_jax'):
    return by_name.get((impl.replace('lsh_jax', 'trax'), mode))
  if kind == 'multihead' and impl != 'multihead_nested_vmap':
    return by_name.get(('multihead_nested_vmap', mode))
  if kind == 'seqpar' and impl == 'seqpar_2dev':
    return by_name.get(('seqpar_1dev', mode))
  return None


def _summary(kind, size, by_name):
  """Best-against-best and default-against-default lines, attention share."""
  ok = {k: r for k, r in by_name.items() if 'skip' not in r}
  lines = []
  if kind == 'layer':
    ours = [r for (i, m), r in ok.items() if 'lsh_jax' in i and m == 'bwd']
    theirs = [r for (i, m), r in ok.items() if 'trax' in i and m == 'bwd']
    if ours and theirs:
      best = lambda rs: min(rs, key=lambda r: r['median_ms'])
      o, t = best(ours), best(theirs)
      lines.append(f'best against best, fwd+bwd: {_label(o["impl"])} '
                   f'{_ms(o["median_ms"])} ms vs {_label(t["impl"])} '
                   f'{_ms(t["median_ms"])} ms: '
                   f'**{t["median_ms"] / o["median_ms"]:.2f}x**')
  if kind == 'lm':
    for impl in ('lsh_jax', 'trax'):
      step = ok.get((f'lm_{impl}', 'train'))
      layer = ok.get((f'layer_{impl}[nph=1]', 'bwd'))
      if step and layer:
        share = size * layer['median_ms'] / step['median_ms']
        lines.append(f'attention share of the {impl} step: {size} layers x '
                     f'{_ms(layer["median_ms"])} ms / '
                     f'{_ms(step["median_ms"])} ms = {100 * share:.0f}%')
  return lines


def render(records):
  """Markdown: one table per group, in the order the groups ran."""
  groups = collections.OrderedDict()
  for r in records:
    if 'group' in r:
      groups.setdefault(r['group'], []).append(r)
  if not groups:
    return ''
  out = ['Training groups (each in one process, its functions called in '
         'turn; ratio = the reference\'s median / this one\'s, > 1 is '
         'faster). layer: the multi-head Trax layer, jit of grad of '
         'pure_fn in x and weights (bwd) or pure_fn (fwd), B = batch; '
         'lm: ReformerLM training step with Adam, and one attention layer '
         'at batch 1 (its share of the step = layers x layer / step); '
         'multihead: attention without projections, grad in q and v. '
         'd_model 512, 8 heads, d = 64, chunk 64, one chunk back, causal, '
         '4 rounds. CPU ms: process CPU time per call (both cores count). '
         'XLA MB: the compiled function\'s temporaries.', '']
  for spec, rs in groups.items():
    kind, length, size = spec.split(':')[:3]
    what = {'layer': f'batch {size}', 'lm': f'{size} layers',
            'multihead': f'batch {size}',
            'flax_lm': f'{size} layers, batch '
                       f'{(spec.split(":")[3:] or ["1"])[0]}'}.get(kind, size)
    out += [f'**{kind}, L = {length}, {what}**', '']
    if len(rs) == 1 and 'skip' in rs[0]:
      out += [f'skipped: {rs[0]["skip"]}', '']
      continue
    by_name = {(r['impl'], r['mode']): r for r in rs}
    out += ['| function | pass | median ms | spread | CPU ms | XLA MB | '
            'compile s | ratio | against |',
            '|---|---|---|---|---|---|---|---|---|']
    for r in rs:
      if 'skip' in r:
        out.append(f'| {_label(r["impl"])} | {r["mode"]} | skipped: '
                   f'{r["skip"]} | | | | | | |')
        continue
      ref = _reference(kind, r['impl'], r['mode'], by_name)
      ratio = against = ''
      if ref and 'skip' not in ref:
        ratio = f'{ref["median_ms"] / r["median_ms"]:.2f}x'
        against = _label(ref['impl'])
      out.append(
          f'| {_label(r["impl"])} | {r["mode"]} | {_ms(r["median_ms"])} | '
          f'±{100 * _spread(r):.0f}% | {_ms(r["cpu_median_ms"])} | '
          f'{r["xla_temp_mb"]:,.0f} | {r["compile_s"]:.1f} | {ratio} | '
          f'{against} |')
    lines = _summary(kind, int(size), by_name)
    out += [''] + [f'- {line}' for line in lines] + ([''] if lines else [])
  return '\n'.join(out)
