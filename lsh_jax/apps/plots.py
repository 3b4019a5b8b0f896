"""Figures for `explain` and `quality` (imports matplotlib when called).

Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas: no
pyplot, no display, no global backend switch, so they work headless and
leave a caller's matplotlib state alone. `import lsh_jax` never imports
this module.
"""
import os

import numpy as np

__all__ = ['plot_explain', 'plot_quality']


def _figure(width, height):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  figure = Figure(figsize=(width, height), dpi=100)
  FigureCanvasAgg(figure)
  return figure


def _save(figure, path):
  folder = os.path.dirname(path)
  if folder:  # `--plot runs/x.png` on a fresh clone: no runs/ yet
    os.makedirs(folder, exist_ok=True)
  figure.savefig(path, format='png', dpi=100)
  return path


def _bucket_colors(n_ids):
  from matplotlib import colormaps
  from matplotlib.colors import ListedColormap
  base = colormaps['tab20' if n_ids > 10 else 'tab10']
  return ListedColormap([base(i % base.N) for i in range(n_ids)])


def plot_explain(walkthrough, path):
  """One figure: buckets per round, sorted chunks, effective vs full matrix.

  Args:
    walkthrough: an `lsh_jax.apps.explain.Walkthrough`.
    path: the PNG file to write.

  Returns:
    path.
  """
  import lsh_jax  # pylint: disable=import-outside-toplevel
  from lsh_jax.core import weights as weights_lib  # pylint: disable=import-outside-toplevel
  w = walkthrough
  s = w.settings
  n_rounds, length = w.buckets.shape
  n_ids = int(w.buckets.max()) + 1
  cmap = _bucket_colors(n_ids)
  effective = np.asarray(weights_lib.attention_weights(
      w.q, hash_key=w.hash_key, n_buckets=s.n_buckets, n_hashes=s.n_hashes,
      chunk_len=s.chunk_len, n_chunks_before=s.n_chunks_before,
      n_chunks_after=s.n_chunks_after, causal=s.causal))
  full = np.asarray(lsh_jax.full_attention(
      w.q, np.eye(length, dtype=np.float32), causal=s.causal))

  figure = _figure(11, 9.5)
  grid = figure.add_gridspec(3, 2, height_ratios=[0.5, 0.5, 1.6],
                             hspace=0.55, wspace=0.25)
  small = length <= 32

  axis = figure.add_subplot(grid[0, :])
  axis.imshow(w.buckets, cmap=cmap, vmin=-0.5, vmax=n_ids - 0.5,
              aspect='auto')
  if small:
    for h in range(n_rounds):
      for t in range(length):
        axis.text(t, h, str(w.buckets[h, t]), ha='center', va='center',
                  fontsize=8)
  axis.set_title('1. hash: bucket of each position, per round')
  axis.set_xlabel('position')
  axis.set_yticks(range(n_rounds), [f'round {h}' for h in range(n_rounds)])

  axis = figure.add_subplot(grid[1, :])
  sorted_buckets = np.take_along_axis(w.buckets, w.sticker, axis=1)
  axis.imshow(sorted_buckets, cmap=cmap, vmin=-0.5, vmax=n_ids - 0.5,
              aspect='auto')
  if small:
    for h in range(n_rounds):
      for i in range(length):
        axis.text(i, h, str(w.sticker[h, i]), ha='center', va='center',
                  fontsize=8)
  for boundary in range(s.chunk_len, length, s.chunk_len):
    axis.axvline(boundary - 0.5, color='black', linewidth=2)
  axis.set_title('2. sort: positions in (bucket, position) order, colour = '
                 f'bucket; lines = chunks of {s.chunk_len}')
  axis.set_xlabel('sorted slot')
  axis.set_yticks(range(n_rounds), [f'round {h}' for h in range(n_rounds)])

  vmax = float(max(effective.max(), full.max()))
  from matplotlib import colormaps  # pylint: disable=import-outside-toplevel
  from matplotlib.ticker import MaxNLocator  # pylint: disable=import-outside-toplevel
  cmap = colormaps['viridis'].with_extremes(bad='white')
  for column, (matrix, title) in enumerate([
      (effective, f'3-5. effective LSH attention (R={n_rounds})\n'
       'attention_weights; white: exactly 0'),
      (full, 'full attention, same masks\n(white: exactly 0)')]):
    axis = figure.add_subplot(grid[2, column])
    image = axis.imshow(np.ma.masked_equal(matrix, 0.0), cmap=cmap,
                        vmin=0.0, vmax=vmax)
    axis.set_title(title, fontsize=10)
    axis.set_xlabel('key position')
    axis.set_ylabel('query position')
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    if column == 1:
      figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
  axis = figure.axes[2]
  axis.axhline(w.query, color='red', linewidth=0.8)
  figure.suptitle(
      f'LSH attention step by step: L={length}, R={n_rounds}, '
      f'NB={s.n_buckets}, C={s.chunk_len}, seed {s.seed} (red: query '
      f'{w.query} of step 5)')
  return _save(figure, path)


# Relative errors below this are drawn at it (plot_quality).
_ERROR_FLOOR = 1e-3


def plot_quality(rows, path, title='LSH attention vs full attention'):
  """Relative error against n_hashes, one line per chunk_len (log-log).

  Args:
    rows: dicts with 'data', 'chunk_len', 'n_hashes', 'rel_error' and
      'covered_mass' (as `lsh_jax.apps.quality.measure_grid` returns them).
    path: the PNG file to write.

  Returns:
    path.
  """
  datasets = list(dict.fromkeys(r['data'] for r in rows))
  figure = _figure(5.5 * len(datasets), 4.2)
  for index, data in enumerate(datasets):
    axis = figure.add_subplot(1, len(datasets), index + 1)
    subset = [r for r in rows if r['data'] == data]
    for chunk_len in sorted({r['chunk_len'] for r in subset}):
      line = sorted((r['n_hashes'], r['rel_error']) for r in subset
                    if r['chunk_len'] == chunk_len)
      # An exact setting (the window covers the whole sequence) has error
      # ~1e-7: drawn at the floor, labelled, so the log axis stays readable.
      axis.plot([x for x, _ in line], [max(y, _ERROR_FLOOR) for _, y in line],
                marker='o', label=f'chunk_len {chunk_len}')
      for x, y in line:
        if y < _ERROR_FLOOR:
          axis.annotate('exact', (x, _ERROR_FLOOR), textcoords='offset points',
                        xytext=(4, 4), fontsize=8)
    axis.set_xscale('log', base=2)
    ticks = sorted({r['n_hashes'] for r in subset})
    axis.set_xticks(ticks, [str(t) for t in ticks])
    axis.minorticks_off()
    axis.set_yscale('log')
    axis.set_xlabel('n_hashes')
    axis.set_ylabel('relative output error ||lsh - full|| / ||full||')
    axis.set_title(data, fontsize=10)
    axis.grid(True, which='both', alpha=0.3)
    axis.legend(fontsize=8)
  figure.suptitle(title)
  figure.tight_layout()
  return _save(figure, path)
