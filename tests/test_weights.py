"""attention_weights and the candidate sets.

Expected values come from elsewhere than the code under test:
  * `lsh_attention` itself for `W @ v` (the contract of `attention_weights`);
  * the float64 NumPy oracle run on one-hot values (an independent
    implementation of docs/algorithm.md, given the same rotations) for W itself;
  * dense attention (`oracle.full_attention` on one-hot values) for the
    single-chunk case;
  * a loop over chunks with `oracle.adjacent_chunks` for `candidate_counts`.
Tolerances: float32 against float64 ~1e-5, except rows of queries that see
only themselves (causal position 0, a token among padding), where
docs/algorithm.md §5's float32 caveat allows ~1e-2.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lsh_jax
from lsh_jax import oracle
from lsh_jax.core import weights
from helpers import hash_margin
from helpers import random_qv

LENGTH, D_QK, D_V = 24, 5, 3
# Padding at the start (0, 1), in the middle and at the end.
PADDED = np.ones(LENGTH, bool)
PADDED[[0, 1, 9, 20, 21, 22, 23]] = False

SETTINGS = {
    'one round': dict(n_buckets=4, n_hashes=1, chunk_len=4),
    'three rounds causal': dict(n_buckets=4, n_hashes=3, chunk_len=4,
                                causal=True),
    'factors, look ahead': dict(n_buckets=[2, 4], n_hashes=2, chunk_len=8,
                                n_chunks_before=0, n_chunks_after=1),
    'padding': dict(n_buckets=4, n_hashes=2, chunk_len=4, mask=PADDED),
    'wide window, padding, causal': dict(
        n_buckets=6, n_hashes=3, chunk_len=6, n_chunks_before=2,
        n_chunks_after=1, causal=True, mask=PADDED),
}


def _inputs(seed=0):
  q, v = random_qv(seed, LENGTH, D_QK, D_V)
  return q, v, jax.random.PRNGKey(seed + 100)


def _window_kwargs(kwargs):
  return dict(chunk_len=kwargs['chunk_len'],
              n_chunks_before=kwargs.get('n_chunks_before', 1),
              n_chunks_after=kwargs.get('n_chunks_after', 0))


def _self_only_rows(counts, kwargs):
  """Valid queries whose every unmasked candidate is themselves."""
  mask = kwargs.get('mask')
  valid = np.ones(LENGTH, bool) if mask is None else np.asarray(mask)
  seen = counts.sum(0) > 0  # [L, L]
  seen &= valid[None, :]
  if kwargs.get('causal'):
    seen &= np.tril(np.ones((LENGTH, LENGTH), bool))
  np.fill_diagonal(seen, False)
  return valid & ~seen.any(1)


def _sticker(q, key, kwargs):
  """The oracle's sorted positions [R, L] for the rotations `key` draws."""
  n_buckets, n_hashes = kwargs['n_buckets'], kwargs['n_hashes']
  rotations = lsh_jax.core.random_rotations(key, D_QK, n_buckets, n_hashes)
  factors = lsh_jax.core.hashing.bucket_factors(n_buckets)
  # A float32/float64 tie in the hash would change buckets, not a bug.
  assert hash_margin(q, rotations, factors) > 1e-4
  buckets = oracle.our_hash_vectors(q, rotations, n_buckets, n_hashes,
                                    kwargs.get('mask'))
  _, _, sticker, _ = oracle.sort_buckets(buckets, q, q, n_buckets, n_hashes,
                                         LENGTH)
  return (sticker % LENGTH).reshape(n_hashes, LENGTH)


@functools.lru_cache(maxsize=None)
def _weights(name):
  """attention_weights for SETTINGS[name], computed once per module."""
  q, _, key = _inputs()
  return np.asarray(weights.attention_weights(q, hash_key=key,
                                              **SETTINGS[name]))


@pytest.mark.parametrize('name', SETTINGS)
def test_weights_times_values_is_lsh_attention(name):
  kwargs = SETTINGS[name]
  q, _, key = _inputs()
  matrix = weights.attention_weights(q, hash_key=key, **kwargs)
  assert matrix.shape == (LENGTH, LENGTH) and matrix.dtype == jnp.float32
  # Random values of the one-hot values' shape: no second compilation.
  v = jax.random.normal(jax.random.PRNGKey(7), (LENGTH, LENGTH))
  np.testing.assert_allclose(matrix @ v, lsh_jax.lsh_attention(q, v,
                                                               hash_key=key,
                                                               **kwargs),
                             atol=1e-5, rtol=0)


@pytest.mark.parametrize('name', SETTINGS)
def test_weights_equal_the_oracle_and_valid_rows_sum_to_one(name):
  kwargs = SETTINGS[name]
  q, _, key = _inputs()
  rotations = lsh_jax.core.random_rotations(key, D_QK, kwargs['n_buckets'],
                                       kwargs['n_hashes'])
  matrix = _weights(name)
  expected = oracle.lsh_attention(
      q, np.eye(LENGTH), rotations, **kwargs)  # float64, one-hot values
  mask = kwargs.get('mask')
  valid = np.ones(LENGTH, bool) if mask is None else np.asarray(mask)
  only_self = _self_only_rows(
      weights.candidate_counts(_sticker(q, key, kwargs),
                               **_window_kwargs(kwargs)), kwargs)
  if kwargs.get('causal'):
    assert only_self[np.argmax(valid)]  # the first real token sees itself
  normal = valid & ~only_self
  np.testing.assert_allclose(matrix[normal], expected[normal], atol=1e-5,
                             rtol=0)
  np.testing.assert_allclose(matrix[only_self], expected[only_self],
                             atol=1e-2, rtol=0)
  sums = matrix.sum(1)
  np.testing.assert_allclose(sums[normal], 1.0, atol=1e-5, rtol=0)
  np.testing.assert_allclose(sums[only_self], 1.0, atol=1e-2, rtol=0)
  np.testing.assert_array_equal(matrix[~valid], 0.0)  # padded queries
  np.testing.assert_array_equal(matrix[:, ~valid], 0.0)  # padding keys


@pytest.mark.parametrize('causal,n_chunks_before,mask', [
    (False, 0, None), (True, 1, PADDED)],
                         ids=['plain', 'causal, look back, padding'])
def test_one_chunk_per_round_is_full_attention(causal, n_chunks_before, mask):
  q, _, key = _inputs(1)
  # One chunk per round: every round sees every token (with n_chunks_before
  # = 1 twice, from its own chunk and the previous round's: same softmax).
  matrix = np.asarray(weights.attention_weights(
      q, hash_key=key, n_buckets=4, n_hashes=3, chunk_len=LENGTH,
      n_chunks_before=n_chunks_before, causal=causal, mask=mask))
  dense = oracle.full_attention(q, np.eye(LENGTH), causal=causal, mask=mask)
  valid = np.ones(LENGTH, bool) if mask is None else mask
  first = np.argmax(valid)
  rows = valid.copy()
  if causal:
    rows[first] = False  # sees only itself: the float32 caveat
    np.testing.assert_allclose(matrix[first], dense[first], atol=1e-2)
  np.testing.assert_allclose(matrix[rows], dense[rows], atol=1e-5, rtol=0)


@pytest.mark.parametrize('name', SETTINGS)
def test_weights_vanish_outside_the_candidate_sets(name):
  kwargs = SETTINGS[name]
  q, _, key = _inputs()
  matrix = _weights(name)
  union = weights.candidate_union(_sticker(q, key, kwargs),
                                  **_window_kwargs(kwargs))
  np.testing.assert_array_equal(matrix[~union], 0.0)
  assert (matrix[union] > 0).any()


@pytest.mark.parametrize('n_hashes,chunk_len,before,after', [
    (1, 4, 1, 0), (2, 4, 1, 0), (3, 6, 0, 1), (2, 4, 3, 2), (2, 12, 2, 0)])
def test_candidate_counts_match_a_loop_over_chunks(n_hashes, chunk_len,
                                                   before, after):
  rng = np.random.default_rng(n_hashes * 10 + chunk_len)
  sticker = np.stack([rng.permutation(LENGTH) for _ in range(n_hashes)])
  n_chunks = LENGTH // chunk_len
  flat = sticker.reshape(-1, chunk_len)
  expected = np.zeros((n_hashes, LENGTH, LENGTH), np.int32)
  for f in range(n_hashes * n_chunks):
    keys = np.concatenate([flat[c] for c in oracle.adjacent_chunks(
        f, n_hashes * n_chunks, before, after)])
    for i in flat[f]:
      for j in keys:
        expected[f // n_chunks, i, j] += 1
  counts = weights.candidate_counts(sticker, chunk_len=chunk_len,
                                    n_chunks_before=before,
                                    n_chunks_after=after)
  np.testing.assert_array_equal(counts, expected)
  np.testing.assert_array_equal(
      weights.candidate_union(sticker, chunk_len=chunk_len,
                              n_chunks_before=before, n_chunks_after=after),
      expected.sum(0) > 0)


def test_column_blocks_give_the_same_matrix(monkeypatch):
  kwargs = SETTINGS['three rounds causal']
  q, _, key = _inputs()
  whole = weights.attention_weights(q, hash_key=key, **kwargs)
  # 7 columns per call: 4 calls, the last one running past L.
  monkeypatch.setattr(weights, '_BLOCK_ELEMENTS', 7 * 3 * LENGTH)
  np.testing.assert_array_equal(weights.attention_weights(q, hash_key=key,
                                                          **kwargs),
                                whole)


def test_too_long_for_a_dense_matrix_raises_before_computing():
  with pytest.raises(ValueError, match=(
      r'q has length 64: its dense \[L, L\] attention matrix would take '
      r'16\.0 KiB, above max_bytes=1000 bytes.*use lsh_attention')):
    weights.attention_weights(jnp.zeros((64, 4)),
                              hash_key=jax.random.PRNGKey(0),
                              n_buckets=4, n_hashes=1, chunk_len=8,
                              max_bytes=1000)
  with pytest.raises(ValueError, match=r'q has length 17000: .* 1\.1 GiB, '
                     r'above max_bytes=1\.0 GiB'):
    weights.attention_weights(jnp.zeros((17000, 2)),
                              hash_key=jax.random.PRNGKey(0),
                              n_buckets=4, n_hashes=1, chunk_len=8)


@pytest.mark.parametrize('change,match', [
    (dict(chunk_len=0), r'chunk_len must be >= 1, got 0'),
    (dict(n_hashes=0), r'n_hashes must be >= 1, got 0'),
    (dict(n_buckets=3), r'n_buckets must be an even int >= 2, got 3'),
    (dict(mask=jnp.ones(23, bool)), r'mask must have shape \(24,\)'),
])
def test_bad_arguments_raise_lsh_attention_errors(change, match):
  q, _, key = _inputs()
  kwargs = dict(SETTINGS['one round'], **change)
  with pytest.raises(ValueError, match=match):
    weights.attention_weights(q, hash_key=key, **kwargs)


def test_q_must_be_a_matrix():
  with pytest.raises(ValueError, match=r'q must be a 2-D array'):
    weights.attention_weights(jnp.ones((2, 8, 3)),
                              hash_key=jax.random.PRNGKey(0),
                              **SETTINGS['one round'])
