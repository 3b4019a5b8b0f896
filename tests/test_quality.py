"""`quality`: LSH attention against full attention on clustered queries.

Expected values: with one chunk per round LSH attention is dense attention
(docs/algorithm.md), so the error must vanish and the covered mass be 1;
the covered mass must equal the full-attention probability on the support of
`attention_weights` (an independent route to the candidate sets); more hash
rounds must find more of the mass and cut the error.
"""
import re

import numpy as np
import pytest

from lsh_jax.apps import quality
from lsh_jax.core import weights

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# Small and fast; the same shapes in every test, so compilations are shared.
LENGTH, DEPTH, D_V, CLUSTERS, CHUNK = 128, 16, 8, 8, 16


def _sample(seed=0):
  return quality.clustered_queries(seed, LENGTH, DEPTH, D_V,
                                   n_clusters=CLUSTERS)


def test_clustered_queries():
  sample = _sample()
  assert sample.q.shape == (LENGTH, DEPTH) and sample.v.shape == (LENGTH, D_V)
  np.testing.assert_allclose(np.linalg.norm(sample.q, axis=-1), 8.0,
                             rtol=1e-6)
  np.testing.assert_array_equal(_sample().q, sample.q)  # deterministic
  # Full attention stays mostly within a token's cluster, spread over it:
  # the structure LSH should find.
  probs = quality.full_probabilities(sample.q, causal=False)
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-12)
  same = sample.labels[:, None] == sample.labels[None, :]
  assert np.mean(np.sum(probs * same, -1)) > 0.8
  assert np.mean(np.max(probs, -1)) < 0.5


def test_error_falls_and_covered_mass_grows_with_n_hashes():
  rows = quality.measure_grid([_sample()], data='clustered',
                              n_hashes_list=(1, 2, 8), chunk_lens=(CHUNK,),
                              seeds=2, repeats=0)
  lsh = [r for r in rows if r['n_hashes'] is not None]
  errors = [r['rel_error'] for r in lsh]
  masses = [r['covered_mass'] for r in lsh]
  assert errors[0] > errors[1] > errors[2]
  assert errors[2] < 0.5 * errors[0]
  assert masses[0] < masses[1] < masses[2] <= 1.0
  assert masses[2] > 0.9
  assert rows[-1]['n_hashes'] is None  # the dense reference row


def test_one_chunk_per_round_is_exact():
  result = quality.measure([_sample()], n_hashes=1, chunk_len=LENGTH,
                           n_chunks_before=0, repeats=0)
  assert result['rel_error'] < 1e-5
  assert result['covered_mass'] == pytest.approx(1.0, abs=1e-12)


def test_covered_mass_is_full_probability_on_the_weights_support():
  sample = _sample()
  result = quality.measure([sample], n_hashes=2, chunk_len=CHUNK,
                           repeats=0)
  import jax  # pylint: disable=import-outside-toplevel
  matrix = np.asarray(weights.attention_weights(
      sample.q, hash_key=jax.random.PRNGKey(0), n_buckets=2 * LENGTH // CHUNK,
      n_hashes=2, chunk_len=CHUNK))
  probs = quality.full_probabilities(sample.q, causal=False)
  expected = np.mean(np.sum(probs * (matrix > 0), -1))
  assert result['covered_mass'] == pytest.approx(expected, abs=1e-6)


@pytest.mark.plots
def test_command_prints_the_table_and_writes_the_plot(tmp_path, capsys):
  path = tmp_path / 'quality.png'
  argv = ['--length', str(LENGTH), '--depth', str(DEPTH), '--d-v', str(D_V),
          '--n-clusters', str(CLUSTERS), '--chunk-lens', str(CHUNK), '48',
          '--n-hashes', '2', '--seeds', '1', '--repeats', '1',
          '--run-dir', str(tmp_path / 'no_run'), '--plot', str(path)]
  assert quality.main(argv) == 0
  captured = capsys.readouterr()
  table = [line for line in captured.out.splitlines()
           if line.startswith('| clustered')]
  assert len(table) == 2  # n_hashes 2 at chunk_len 16 (48 skipped), dense
  # rel. error, exact error (allow_duplicate_attention=False), mass, time.
  assert re.match(r'\| clustered L=128 \(8 clusters\) \| 16 \| 16 \| 2 \| '
                  r'\d\.\d{3} \| \d\.\d{3} \| \d+\.\d% \| \d+\.\d\d \|',
                  table[0])
  assert 'full attention' in table[1]
  assert 'skipping --run-dir' in captured.err
  assert 'config.gin not found' in captured.err
  data = path.read_bytes()
  assert data.startswith(PNG_SIGNATURE) and len(data) < 300_000


def test_no_chunk_length_dividing_the_length_exits_2(capsys):
  assert quality.main(['--length', '100', '--chunk-lens', '32', '64']) == 2
  assert 'no --chunk-lens divide --length 100' in capsys.readouterr().err
