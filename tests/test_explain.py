"""`explain`: the walkthrough runs, prints every step, and its check works.

The step-5 check compares the JAX combine with attention computed directly
in float64 over the union of the query's candidate sets; here the combined
output is also compared with the float64 NumPy oracle's full pipeline (an
independent implementation) and the check is shown to fail when the combine
is wrong.
"""
import io
import re
import subprocess
import sys

import numpy as np
import pytest

import lsh_jax
from lsh_jax.apps import explain
from lsh_jax import oracle

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
STEPS = ['STEP 1  hash', 'STEP 2  sort', 'STEP 3  chunked attention',
         'STEP 4  undo the sort', 'STEP 5  combine the rounds',
         'STEP 5b exact multi-round attention']


def _walk(**changes):
  out = io.StringIO()
  result = explain.walk(explain.Settings(**changes), out=out)
  return result, out.getvalue()


@pytest.mark.parametrize('seed', [0, 1, 2, 3])
def test_default_walkthrough_passes_for_several_seeds(seed, capsys):
  assert explain.main(['--seed', str(seed)]) == 0
  text = capsys.readouterr().out
  positions = [text.index(step) for step in STEPS]
  assert positions == sorted(positions)  # in the order of docs/algorithm.md
  assert re.search(r'check: max \|combined - direct\| = \S+ <= 1e-05: PASS',
                   text)
  for shape in ('rotations [4, 2, 2]', 'buckets [2, 16]', 'sticker [2, 16]',
                'probabilities [4, 8]', 'o [2, 16, 3]', 'lse [2, 16]'):
    assert shape in text


@pytest.mark.parametrize('changes', [
    dict(causal=True, n_hashes=3, seed=5),
    dict(n_buckets=(2, 4), length=32, chunk_len=8, n_chunks_before=0,
         n_chunks_after=1, seed=6),
], ids=['causal, 3 rounds', 'factors, look ahead'])
def test_combined_output_equals_the_oracle(changes):
  result, text = _walk(**changes)
  s = result.settings
  assert result.passed and 'PASS' in text
  expected = oracle.lsh_attention(
      result.q, result.v, result.rotations, n_buckets=s.n_buckets,
      n_hashes=s.n_hashes, chunk_len=s.chunk_len,
      n_chunks_before=s.n_chunks_before, n_chunks_after=s.n_chunks_after,
      causal=s.causal)
  query = result.query
  np.testing.assert_allclose(result.combined[query], expected[query],
                             atol=1e-5)
  np.testing.assert_allclose(result.direct, expected[query], atol=1e-10)
  np.testing.assert_allclose(result.round_weights[:, query].sum(), 1.0,
                             atol=1e-6)
  # The chosen query shows a real combine: its rounds' candidates differ.
  sets = {frozenset(c.tolist()) - {query}
          for c in explain.candidates(result.sticker, query, s)}
  assert len(sets) > 1


def test_exact_attention_and_the_sweep_equal_the_oracle():
  """Step 5b against the float64 oracle: the query's exact output, and
  every error of the n_hashes sweep recomputed from the oracle's outputs
  with the rotations lsh_attention draws from the same key."""
  result, text = _walk(causal=True, n_hashes=3, seed=5)
  s = result.settings
  assert result.passed and 'STEP 5b' in text
  args = dict(n_buckets=s.n_buckets, chunk_len=s.chunk_len,
              n_chunks_before=s.n_chunks_before,
              n_chunks_after=s.n_chunks_after, causal=s.causal)
  expected = oracle.lsh_attention(
      result.q, result.v, result.rotations, n_hashes=s.n_hashes,
      allow_duplicate_attention=False, **args)
  query = result.query
  np.testing.assert_allclose(result.exact[query], expected[query],
                             atol=1e-5)
  np.testing.assert_allclose(result.direct_exact, expected[query],
                             atol=1e-10)
  full = oracle.full_attention(result.q, result.v, causal=s.causal)
  np.testing.assert_allclose(result.full, full[query], atol=1e-10)
  for n_hashes, error, exact_error in result.sweep:
    rotations = np.asarray(lsh_jax.core.random_rotations(
        result.hash_key, s.depth, s.n_buckets, n_hashes))
    for allow, got in ((True, error), (False, exact_error)):
      out = oracle.lsh_attention(
          result.q, result.v, rotations, n_hashes=n_hashes,
          allow_duplicate_attention=allow, **args)
      want = np.linalg.norm(out - full) / np.linalg.norm(full)
      # Measured <= 2.8e-5: causal position 0 sees only itself, where
      # float32 resolves its output to ~1e-2 (§5 caveat), which moves a
      # relative error over 16 rows by ~1e-4 at most.
      np.testing.assert_allclose(got, want, rtol=0, atol=2e-4)


def test_compute_prints_nothing_and_render_prints_the_walk(capsys):
  settings = explain.Settings(causal=True, n_hashes=3, seed=5)
  result = explain.compute(settings)
  assert capsys.readouterr().out == ''
  assert len(result.chunks) == 3 * 16 // 4  # R * N chunk views
  _, walked = _walk(causal=True, n_hashes=3, seed=5)
  rendered = io.StringIO()
  explain.render(result, rendered)
  assert rendered.getvalue() == walked


def test_a_query_that_sees_only_itself_uses_the_float32_caveat():
  result, text = _walk(causal=True, n_hashes=3, seed=5, query=0)
  assert result.passed and result.tolerance == explain.SELF_ONLY_TOLERANCE
  assert 'sees only itself' in text
  np.testing.assert_allclose(result.direct, result.v[0], atol=1e-12)


def test_the_check_fails_when_the_combine_is_wrong(monkeypatch, capsys):
  # Averaging the rounds instead of weighting them by their lse.
  monkeypatch.setattr(lsh_jax.core, 'combine_rounds',
                      lambda o, lse: o.mean(0))
  assert explain.main(['--seed', '0']) == 1
  assert re.search(r'> 1e-05: FAIL', capsys.readouterr().out)


@pytest.mark.parametrize('argv,match', [
    (['--chunk-len', '5'], r'--length \(16\) must be a multiple of '
     r'--chunk-len \(5\)'),
    (['--n-buckets', '3'], r'n_buckets must be an even int >= 2, got 3'),
    (['--length', '512', '--chunk-len', '4'], r'--length must be in 1\.\.128'),
    (['--query', '16'], r'--query must be in 0\.\.15, got 16'),
])
def test_bad_settings_exit_2_with_one_line(argv, match, capsys):
  assert explain.main(argv) == 2
  err = capsys.readouterr().err
  assert re.search(match, err) and len(err.strip().splitlines()) == 1


@pytest.mark.plots
def test_plot_is_a_valid_png(tmp_path, capsys):
  path = tmp_path / 'explain.png'
  assert explain.main(['--plot', str(path)]) == 0
  assert f'figure written to {path}' in capsys.readouterr().out
  data = path.read_bytes()
  assert data.startswith(PNG_SIGNATURE) and len(data) < 300_000
  from matplotlib import image  # pylint: disable=import-outside-toplevel
  pixels = image.imread(path)
  assert pixels.ndim == 3 and pixels.shape[0] > 400 and pixels.shape[1] > 400


def test_importing_lsh_jax_and_these_modules_stays_light():
  code = ('import sys, lsh_jax, lsh_jax.core.weights, lsh_jax.apps.explain, '
          'lsh_jax.apps.quality\n'
          'heavy = [m for m in ("trax", "tensorflow", "matplotlib") '
          'if m in sys.modules]\n'
          'assert not heavy, heavy')
  subprocess.run([sys.executable, '-c', code], check=True)


def test_lsh_jax_command_line_dispatches_to_explain(capsys):
  from lsh_jax.apps import cli  # pylint: disable=import-outside-toplevel
  assert cli.main(['explain', '--seed', '1']) == 0
  assert 'PASS' in capsys.readouterr().out
