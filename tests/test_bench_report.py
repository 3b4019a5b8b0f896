"""The training groups' report (benchmarks/report_training.py) and specs.

Expected ratios and shares are computed here by hand from the records'
medians (an independent derivation of what the table must print). The
benchmarks are not a package: their folder goes on sys.path, as the
scripts themselves do.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'benchmarks'))

import report_training  # noqa: E402  (after the path tweak)


def _record(group, impl, mode, median_ms, **extra):
  return dict(group=group, impl=impl, mode=mode, length=4096, hashes=4,
              median_ms=median_ms, min_ms=median_ms * 0.9,
              max_ms=median_ms * 1.1, cpu_median_ms=median_ms * 2,
              xla_temp_mb=10.0, compile_s=1.0, **extra)


def test_layer_rows_compare_with_trax_at_the_same_setting_and_best():
  g = 'layer:4K:8'
  text = report_training.render([
      _record(g, 'layer_lsh_jax[nph=1]', 'bwd', 100.0),
      _record(g, 'layer_lsh_jax[nph=8]', 'bwd', 150.0),
      _record(g, 'layer_trax[nph=1]', 'bwd', 250.0),
      _record(g, 'layer_trax[nph=8]', 'bwd', 210.0),
  ])
  rows = {line.split(' | ')[0].strip('| '): line
          for line in text.splitlines() if line.startswith('| lsh_jax')}
  # 250 / 100 at nph=1, 210 / 150 at nph=8; best 100 against best 210.
  assert '| 2.50x |' in rows['lsh_jax.trax.LSHSelfAttention [nph=1]']
  assert '| 1.40x |' in rows['lsh_jax.trax.LSHSelfAttention [nph=8]']
  assert '**2.10x**' in text
  assert '±10%' in rows['lsh_jax.trax.LSHSelfAttention [nph=1]']


def test_lm_attention_share_is_layers_times_layer_over_step():
  g = 'lm:1K:6'
  text = report_training.render([
      _record(g, 'lm_lsh_jax', 'train', 600.0),
      _record(g, 'lm_trax', 'train', 900.0),
      _record(g, 'layer_lsh_jax[nph=1]', 'bwd', 50.0),
      _record(g, 'layer_trax[nph=1]', 'bwd', 75.0),
  ])
  # 6 x 50 / 600 = 50%, 6 x 75 / 900 = 50%; step ratio 900 / 600 = 1.50x.
  assert ('attention share of the lsh_jax step: 6 layers x 50 ms / '
          '600 ms = 50%') in text
  assert ('attention share of the trax step: 6 layers x 75 ms / 900 ms = '
          '50%') in text
  step_row = next(line for line in text.splitlines()
                  if line.startswith('| ReformerLM + lsh_jax'))
  assert '| 1.50x |' in step_row


def test_flax_lm_step_compares_with_trax_and_names_the_batch():
  g = 'flax_lm:4K:2:3'
  text = report_training.render([
      _record(g, 'lm_flax', 'train', 400.0),
      _record(g, 'lm_trax', 'train', 600.0),
  ])
  assert '**flax_lm, L = 4K, 2 layers, batch 3**' in text
  flax_row = next(line for line in text.splitlines()
                  if line.startswith('| lsh_jax.flax.ReformerLM'))
  assert '| 1.50x |' in flax_row  # 600 / 400


def test_a_failed_group_is_reported_not_dropped():
  text = report_training.render([dict(
      group='multihead:16K:1', impl='multihead:16K:1', mode='-', length=0,
      hashes=0, skip='over the 1500 s case limit')])
  assert 'skipped: over the 1500 s case limit' in text


def test_group_specs_parse_and_bad_kinds_are_named():
  training = pytest.importorskip('training')
  assert training.parse_group('layer:4K:8:1+8') == (
      'layer', 4096, 8, {'parallel_heads': (1, 8)})
  assert training.parse_group('lm:1K:2') == ('lm', 1024, 2, {})
  assert training.parse_group('flax_lm:4K:6:2') == (
      'flax_lm', 4096, 6, {'batch': 2})
  with pytest.raises(ValueError, match="group kind must be one of .*'dense'"):
    training.parse_group('dense:1K:2')
