"""Tests of the NumPy oracle itself (lsh_jax/reference/, `lsh_jax.oracle`).

The oracle is the reference every other implementation is checked against,
so its own expected values here are derived independently of it: by hand
(values written out in the test), with plain Python loops and lists
(sorting with `sorted`, attention over explicit candidate sets), or from a
property that must hold whatever the inputs (docs/algorithm.md "Checks that must
hold"). Dimensions are distinct small primes where possible, so that a
swapped axis cannot pass. Everything is float64: tolerances are ~1e-12
unless a test says otherwise.
"""
import ast
import glob
import math
import os
import sys

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from lsh_jax import oracle
from lsh_jax import reference

TIGHT = dict(rtol=1e-10, atol=1e-12)


def random_qv(seed, length, d_qk, d_v):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(length, d_qk)), rng.normal(size=(length, d_v))


def random_rotations(seed, d_qk, n_buckets, n_hashes):
  rot_size = sum(oracle.bucket_factors(n_buckets))
  rng = np.random.default_rng(1000 + seed)
  return rng.normal(size=(d_qk, n_hashes, rot_size // 2))


def _imported_modules(path):
  """Every module an `import` statement of the file at `path` names."""
  with open(path) as f:
    tree = ast.parse(f.read())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      yield '.' * node.level + (node.module or '')


def test_oracle_is_plain_numpy():
  """The oracle must not share a bug with the JAX code: every module of
  lsh_jax/reference/ (and the lsh_jax.oracle alias) imports NumPy, the
  standard library and the reference itself, nothing else (no jax, no
  lsh_jax.core)."""
  folder = os.path.dirname(reference.__file__)
  paths = sorted(glob.glob(os.path.join(folder, '*.py'))) + [oracle.__file__]
  assert {'__init__.py', 'spec.py', 'lab.py', 'decode.py'} <= {
      os.path.basename(path) for path in paths}
  for path in paths:
    for name in _imported_modules(path):
      top = name.split('.')[0]
      assert (top in sys.stdlib_module_names or top == 'numpy' or
              name.startswith(('lsh_jax.reference.', '.'))), (path, name)


# ---------------------------------------------------------------------------
# our_softmax, our_simple_attend
# ---------------------------------------------------------------------------


def test_our_softmax_rows_sum_to_one_and_lse_is_direct():
  """lse is compared with np.log(np.sum(np.exp(x))) written out directly."""
  x = np.random.default_rng(0).normal(size=(3, 5)) * 4
  probs, lse = oracle.our_softmax(x)
  assert lse.shape == (3, 1)
  np.testing.assert_allclose(probs.sum(-1), np.ones(3), **TIGHT)
  np.testing.assert_allclose(lse[:, 0], np.log(np.sum(np.exp(x), -1)),
                             **TIGHT)
  direct = np.exp(x) / np.exp(x).sum(-1, keepdims=True)
  np.testing.assert_allclose(probs, direct, **TIGHT)
  # Stable: a shift of 1000 would overflow a naive exp.
  probs_shifted, lse_shifted = oracle.our_softmax(x + 1000)
  np.testing.assert_allclose(probs_shifted, probs, **TIGHT)
  np.testing.assert_allclose(lse_shifted, lse + 1000, **TIGHT)


def test_our_softmax_passthrough_returns_x_and_zeros():
  x = np.arange(15.0).reshape(3, 5)
  out, lse = oracle.our_softmax(x, passthrough=True)
  np.testing.assert_array_equal(out, x)
  np.testing.assert_array_equal(lse, np.zeros((3, 1)))


def test_our_simple_attend_with_explicit_keys():
  """k given: keys are NOT normalised, only divided by sqrt(D).

  Expected: the textbook formula with an explicit loop over queries.
  """
  rng = np.random.default_rng(1)
  q, k, v = (rng.normal(size=shape) for shape in [(5, 3), (7, 3), (7, 2)])
  out, lse = oracle.our_simple_attend(q, k, v)
  for i in range(5):
    logits = np.array([q[i] @ k[j] / math.sqrt(3) for j in range(7)])
    weights = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(out[i], weights @ v, **TIGHT)
    np.testing.assert_allclose(lse[i], np.log(np.exp(logits).sum()), **TIGHT)


def test_our_simple_attend_shared_qk_normalises_keys():
  """k is None: keys are q / rms(q) / sqrt(D); scaling q's rows by 7 must
  change the queries but not the keys."""
  q, v = random_qv(2, 5, 3, 2)
  out, _ = oracle.our_simple_attend(q, v=v)
  rms = np.sqrt(np.mean(q**2, -1, keepdims=True) + 1e-6)
  logits = q @ (q / rms).T / math.sqrt(3)
  weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  np.testing.assert_allclose(out, weights @ v, **TIGHT)


def test_our_simple_attend_mask_fn_and_passthrough():
  """mask_fn gets q_info [Lq, 1] and kv_info [1, Lv]; passthrough keeps the
  raw (masked) logits and a zero lse."""
  rng = np.random.default_rng(3)
  q, k, v = (rng.normal(size=shape) for shape in [(5, 3), (7, 3), (7, 2)])
  seen = []

  def mask_fn(dots, q_info, kv_info):
    seen.append((q_info.shape, kv_info.shape))
    return dots - 1e9 * (q_info < kv_info)

  out, lse = oracle.our_simple_attend(q, k, v, mask_fn=mask_fn,
                                      passthrough=True)
  assert seen == [((5, 1), (1, 7))]
  logits = q @ k.T / math.sqrt(3) - 1e9 * np.triu(np.ones((5, 7)), k=1)
  np.testing.assert_allclose(out, logits @ v, rtol=1e-12)
  np.testing.assert_array_equal(lse, np.zeros(5))


# ---------------------------------------------------------------------------
# Hashing
# ---------------------------------------------------------------------------


def test_hash_by_construction():
  """Rotations chosen so the argmax is known by hand.

  Round 0 rotates by the identity, so vector s * e_i lands in bucket i when
  s > 0 and i + 3 when s < 0 (argmax over [r, -r]); round 1 rotates by
  -identity, which swaps the two. Round 1's ids are offset by NB = 6.
  """
  vecs = np.array([[1., 0, 0], [0, -1, 0], [0, 0, 2], [-1, 0, 0], [0, 1, 0]])
  rotations = np.stack([np.eye(3), -np.eye(3)], axis=1)  # [D=3, R=2, 3]
  buckets = oracle.our_hash_vectors(vecs, rotations, 6, 2)
  np.testing.assert_array_equal(
      buckets, [0, 4, 2, 3, 1] + [3 + 6, 1 + 6, 5 + 6, 0 + 6, 4 + 6])


def test_hash_factorised_buckets_combine_as_specified():
  """n_buckets [2, 4]: factor 1 uses column 0, factor 2 columns 1-2;
  b = a_1 + 2 * a_2. Hand-derived:
    [ 1,  0, -2]: a_1 = 0, a_2 = argmax[0, -2, 0, 2] = 3  -> 6
    [-1,  3,  0]: a_1 = 1, a_2 = argmax[3, 0, -3, 0] = 0  -> 1
    [-.5, -1, .2]: a_1 = 1, a_2 = argmax[-1, .2, 1, -.2] = 2 -> 5
  (the other order, a_2 + 4 * a_1, would give 3, 4, 6).
  """
  vecs = np.array([[1., 0, -2], [-1, 3, 0], [-.5, -1, .2]])
  rotations = np.eye(3)[:, None, :]  # [D=3, R=1, (2 + 4) // 2]
  np.testing.assert_array_equal(
      oracle.our_hash_vectors(vecs, rotations, [2, 4], 1), [6, 1, 5])


def test_hash_padding_gets_the_extra_id_and_offsets_count_it():
  """With a mask, NB = 6 real ids + padding id 6: 7 ids per round."""
  vecs = np.array([[1., 0, 0], [0, -1, 0], [0, 0, 2], [-1, 0, 0], [0, 1, 0]])
  rotations = np.stack([np.eye(3), -np.eye(3)], axis=1)
  mask = np.array([True, False, True, True, False])
  buckets = oracle.our_hash_vectors(vecs, rotations, 6, 2, mask=mask)
  np.testing.assert_array_equal(
      buckets, [0, 6, 2, 3, 6] + [3 + 7, 6 + 7, 5 + 7, 0 + 7, 6 + 7])


@hypothesis.given(
    length=st.integers(1, 11), d_qk=st.integers(1, 5),
    n_hashes=st.integers(1, 4),
    n_buckets=st.one_of(st.sampled_from([2, 4, 6, 10]),
                        st.lists(st.sampled_from([2, 4, 6]), min_size=1,
                                 max_size=3)),
    padded=st.booleans(), seed=st.integers(0, 2**16))
def test_hash_buckets_stay_in_range(length, d_qk, n_hashes, n_buckets, padded,
                                    seed):
  """Round h's entries lie in [h * ids, (h + 1) * ids); padding is exactly
  h * ids + NB."""
  rng = np.random.default_rng(seed)
  vecs = rng.normal(size=(length, d_qk))
  mask = rng.random(length) > 0.4 if padded else None
  rotations = random_rotations(seed, d_qk, n_buckets, n_hashes)
  n_total = math.prod(oracle.bucket_factors(n_buckets))
  ids = n_total + 1 if padded else n_total
  buckets = oracle.our_hash_vectors(vecs, rotations, n_buckets, n_hashes,
                                    mask).reshape(n_hashes, length)
  local = buckets - ids * np.arange(n_hashes)[:, None]
  valid = np.ones(length, bool) if mask is None else mask
  assert np.all((local[:, valid] >= 0) & (local[:, valid] < n_total))
  assert np.all(local[:, ~valid] == n_total)


@pytest.mark.parametrize('length,chunk_len,expected', [
    (3, 8, 2),  # fewer tokens than a chunk: still 2 buckets
    (96, 8, 24),
    (512, 8, 128),  # the largest unfactorised count
    (65, 1, [16, 8]),  # n=130: f = 2**ceil(log2(11.4)) = 16, 2*(130//32) = 8
    (1280, 10, [16, 16]),  # n=256: sqrt is exactly 16
    (2048, 8, [32, 16]),  # n=512: f = 2**ceil(log2(22.6)) = 32
    (4096, 1, [128, 64]),  # n=8192: f = 2**ceil(log2(90.5)) = 128
])
def test_auto_n_buckets(length, chunk_len, expected):
  """Values worked out by hand from docs/algorithm.md §1's formula."""
  assert oracle.auto_n_buckets(length, chunk_len) == expected


def test_auto_n_buckets_factor_forms_agree():
  """Trax writes f = 2**ceil(log2(sqrt(n))); 2**ceil(log(n, 2) / 2) is the
  same for every even n checked (floating-point log could differ at powers
  of 4)."""
  for n in range(130, 1 << 16, 2):
    assert (2**math.ceil(math.log2(math.sqrt(n)))
            == 2**math.ceil(math.log(n, 2) / 2))


# ---------------------------------------------------------------------------
# Sorting
# ---------------------------------------------------------------------------


def test_sort_buckets_lab_example():
  """The lab's example: L=8, R=2, NB=4, bucket of j is j % 4 (+4 in round 1).

  By hand: round 0 sorts positions to [0, 4, 1, 5, 2, 6, 3, 7]; round 1 is
  the same plus 8; undo_sort is the inverse, [0, 2, 4, 6, 1, 3, 5, 7] (+8).
  """
  q = (np.arange(8) % 4)[:, None] * np.ones(3)
  v = np.ones((8, 5))
  buckets = np.array([(j % 4) + 4 * i for i in range(2) for j in range(8)])
  sq, sv, sticker, undo_sort = oracle.sort_buckets(buckets, q, v, 4, 2, 8)
  order = [0, 4, 1, 5, 2, 6, 3, 7]
  np.testing.assert_array_equal(sticker, order + [8 + t for t in order])
  inverse = [0, 2, 4, 6, 1, 3, 5, 7]
  np.testing.assert_array_equal(undo_sort, inverse + [8 + t for t in inverse])
  np.testing.assert_array_equal(sq, np.repeat([0, 0, 1, 1, 2, 2, 3, 3] * 2,
                                              3).reshape(16, 3))
  np.testing.assert_array_equal(sv, np.ones((16, 5)))


def test_dotandv_lab_example():
  """The lab's dotandv on the example above, C = 2.

  Each sorted chunk holds two copies of c * ones(3) (c = j % 4), so the raw
  chunk @ chunk^T is 3c^2 everywhere. Passed through, times sv = ones:
  6c^2 in each round; the zero lse weights the 2 rounds by 1/2 each, so
  o[j] = 6 (j % 4)^2. With the softmax, each row is [1/2, 1/2] and o = 1.
  """
  q = (np.arange(8) % 4)[:, None] * np.ones(3)
  v = np.ones((8, 5))
  buckets = np.array([(j % 4) + 4 * i for i in range(2) for j in range(8)])
  sq, sv, _, undo_sort = oracle.sort_buckets(buckets, q, v, 4, 2, 8)
  passed = oracle.dotandv(sq, sv, undo_sort, 2, 2, 8, passthrough=True)
  np.testing.assert_allclose(
      passed, 6.0 * ((np.arange(8) % 4)**2)[:, None] * np.ones(5), **TIGHT)
  applied = oracle.dotandv(sq, sv, undo_sort, 2, 2, 8, passthrough=False)
  np.testing.assert_allclose(applied, np.ones((8, 5)), **TIGHT)


@hypothesis.given(length=st.integers(1, 13), n_hashes=st.integers(1, 4),
                  n_buckets=st.sampled_from([2, 4, 6]),
                  seed=st.integers(0, 2**16))
def test_sort_buckets_properties(length, n_hashes, n_buckets, seed):
  """sticker sorts the keys; undo_sort inverts it; rounds stay in their own
  blocks; within a bucket, positions ascend (compared with Python's sorted
  over (round, bucket, position) tuples)."""
  rng = np.random.default_rng(seed)
  local = rng.integers(0, n_buckets, size=(n_hashes, length))
  buckets = (local + n_buckets * np.arange(n_hashes)[:, None]).reshape(-1)
  q = rng.normal(size=(length, 3))
  v = rng.normal(size=(length, 2))
  sq, sv, sticker, undo_sort = oracle.sort_buckets(buckets, q, v, n_buckets,
                                                   n_hashes, length)
  keys = length * buckets + np.arange(n_hashes * length) % length
  assert np.all(np.diff(keys[sticker]) > 0)
  np.testing.assert_array_equal(undo_sort[sticker],
                                np.arange(n_hashes * length))
  np.testing.assert_array_equal(sticker[undo_sort],
                                np.arange(n_hashes * length))
  expected = sorted(range(n_hashes * length),
                    key=lambda i: (i // length, local.reshape(-1)[i],
                                   i % length))
  np.testing.assert_array_equal(sticker, expected)
  np.testing.assert_array_equal(sq, q[sticker % length])
  np.testing.assert_array_equal(sv, v[sticker % length])


# ---------------------------------------------------------------------------
# Chunked attention on the flat layout: look-adjacent wraps across rounds
# ---------------------------------------------------------------------------

# R=2, L=4, C=2: four flat chunks, chunk f holds flat entries 2f and 2f+1;
# chunks 0-1 are round 0, chunks 2-3 round 1. Windows written out by hand
# (f - before, ..., f + after, modulo 4):
HAND_WINDOWS = {
    (1, 0): [[3, 0], [0, 1], [1, 2], [2, 3]],  # chunk 0 looks into round 1
    (0, 1): [[0, 1], [1, 2], [2, 3], [3, 0]],  # chunk 3 looks into round 0
    (1, 1): [[3, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 0]],
    (2, 3): [[2, 3, 0, 1, 2, 3], [3, 0, 1, 2, 3, 0],  # wider than all:
             [0, 1, 2, 3, 0, 1], [1, 2, 3, 0, 1, 2]],  # chunks repeat
}
# Original positions of the 8 sorted entries (round 1 in reverse order).
FLAT_POS = np.array([0, 1, 2, 3, 3, 2, 1, 0])


def expected_uniform_attention(window_chunks, row, causal, valid):
  """Expected weights over the 8 flat entries when all logits are equal.

  With equal logits d, softmax puts equal weight on the keys with the
  smallest penalty (penalties differ by >= 1e5, so exp underflows to 0 for
  the others); a key listed twice in a window counts twice.
  Returns (weights [8], penalty of the winners, number of winners).
  """
  keys = [j for c in window_chunks for j in (2 * c, 2 * c + 1)]
  penalty = {}
  for slot, j in enumerate(keys):
    penalty[slot] = (1e9 * (causal and FLAT_POS[row] < FLAT_POS[j])
                     + 1e5 * (FLAT_POS[row] == FLAT_POS[j])
                     + 1e9 * (not valid[j]))
  best = min(penalty.values())
  winners = [keys[slot] for slot in penalty if penalty[slot] == best]
  weights = np.zeros(8)
  for j in winners:
    weights[j] += 1 / len(winners)
  return weights, best, len(winners)


@pytest.mark.parametrize('window', sorted(HAND_WINDOWS))
@pytest.mark.parametrize('causal', [False, True])
@pytest.mark.parametrize('padded', [False, True])
def test_attend_look_adjacent_wraps_across_rounds(window, causal, padded):
  """Identical queries make every logit equal, so with one-hot values (entry
  j carries e_j) each output row shows exactly which flat entries its chunk
  saw. The equal logit is ones(3) . (ones(3) / rms) / sqrt(3), with
  rms = sqrt(1 + 1e-6); lse = that - winners' penalty + log(#winners).
  Padding (when on) sits at positions 0 and 1: masked there too.

  Rows whose winners carry a penalty P are exact only to a few float64
  spacings of P (the logits are stored as d - P): ~1e-11 at P = 1e5, ~5e-7
  at P = 1e9 (padded or fully masked queries); the tolerance follows."""
  before, after = window
  sq = np.ones((8, 3))
  sv = np.eye(8)
  valid = FLAT_POS >= 2 if padded else np.ones(8, bool)
  so, slse = oracle.attend(sq, sv, FLAT_POS, chunk_len=2, n_hashes=2,
                           n_chunks_before=before, n_chunks_after=after,
                           causal=causal,
                           kv_valid=valid if padded else None)
  logit = 3 / math.sqrt(1 + 1e-6) / math.sqrt(3)
  for row in range(8):
    assert oracle.adjacent_chunks(row // 2, 4, before, after) == \
        HAND_WINDOWS[window][row // 2]
    weights, penalty, count = expected_uniform_attention(
        HAND_WINDOWS[window][row // 2], row, causal, valid)
    atol = max(1e-12, 4 * np.spacing(penalty))
    np.testing.assert_allclose(so[row], weights, rtol=0, atol=atol)
    np.testing.assert_allclose(slse[row], logit - penalty + math.log(count),
                               rtol=1e-12, atol=1e-12)


def test_attend_first_chunk_sees_last_rounds_last_chunk():
  """The wrap spelled out: flat entry 0 (round 0, position 0) with one chunk
  before sees entries 6, 7 (round 1's last chunk, positions 1, 0) and
  0, 1; positions 0 are self -> half on entry 6, half on entry 1."""
  so, _ = oracle.attend(np.ones((8, 3)), np.eye(8), FLAT_POS, chunk_len=2,
                        n_hashes=2, n_chunks_before=1)
  np.testing.assert_allclose(so[0], [0, .5, 0, 0, 0, 0, .5, 0], atol=1e-12)


def test_attend_dropout_multiplies_probabilities_not_lse():
  """One [C, W*C] multiplier, the same for every chunk, applied after lse.

  Chunk 1 (entries 2, 3 at positions 2, 3) with one chunk before sees
  entries [0, 1, 2, 3]. Entry 2's weights, self excluded: [1/3, 1/3, 0, 1/3];
  times multiplier row 0 = [0, 1, 1, 3] -> [0, 1/3, 0, 1].
  """
  multiplier = np.array([[0., 1, 1, 3], [2, 2, 2, 2]])
  common = dict(chunk_len=2, n_hashes=2, n_chunks_before=1)
  so, slse = oracle.attend(np.ones((8, 3)), np.eye(8), FLAT_POS, **common)
  so_drop, slse_drop = oracle.attend(np.ones((8, 3)), np.eye(8), FLAT_POS,
                                     dropout_multiplier=multiplier, **common)
  np.testing.assert_allclose(so_drop[2], [0, 1 / 3, 0, 1, 0, 0, 0, 0],
                             atol=1e-12)
  np.testing.assert_allclose(so_drop[1::2], 2 * so[1::2], atol=1e-12)
  np.testing.assert_array_equal(slse_drop, slse)


# ---------------------------------------------------------------------------
# Combining the rounds
# ---------------------------------------------------------------------------


def test_combine_rounds_equals_attention_over_the_union():
  """docs/algorithm.md §5: per-round outputs over candidate sets C_h,
  combined, equal
  sum_h sum_{j in C_h} exp(s_j) v_j / sum_h sum_{j in C_h} exp(s_j),
  computed here with explicit loops (pairs in several rounds count once per
  round)."""
  rng = np.random.default_rng(5)
  n_rounds, n_queries, n_keys, d_v = 3, 5, 7, 2
  logits = rng.normal(size=(n_queries, n_keys)) * 3
  v = rng.normal(size=(n_keys, d_v))
  candidates = rng.random((n_rounds, n_queries, n_keys)) < 0.5
  candidates[:, :, 0] = True  # no empty set
  o = np.zeros((n_rounds, n_queries, d_v))
  lse = np.zeros((n_rounds, n_queries))
  for h in range(n_rounds):
    for i in range(n_queries):
      z = sum(np.exp(logits[i, j]) for j in range(n_keys)
              if candidates[h, i, j])
      o[h, i] = sum(np.exp(logits[i, j]) * v[j] for j in range(n_keys)
                    if candidates[h, i, j]) / z
      lse[h, i] = np.log(z)
  union = np.zeros((n_queries, d_v))
  for i in range(n_queries):
    pairs = [(h, j) for h in range(n_rounds) for j in range(n_keys)
             if candidates[h, i, j]]
    union[i] = (sum(np.exp(logits[i, j]) * v[j] for _, j in pairs)
                / sum(np.exp(logits[i, j]) for _, j in pairs))
  np.testing.assert_allclose(oracle.combine_rounds(o, lse), union, **TIGHT)
  np.testing.assert_allclose(oracle.combine_rounds(o[:1], lse[:1]), o[0],
                             **TIGHT)


@pytest.mark.parametrize('causal', [False, True])
def test_pipeline_equals_union_over_sorted_chunks(causal):
  """lsh_attention without adjacent chunks against a direct build:
  per round, sort positions with Python's sorted by (bucket, position),
  cut into chunks of C, and let each query attend to its chunk; then the
  union formula above with logits q_i . k_j - penalties."""
  length, d_qk, d_v, chunk_len, n_hashes, n_buckets = 12, 5, 3, 4, 3, 6
  q, v = random_qv(6, length, d_qk, d_v)
  rotations = random_rotations(6, d_qk, n_buckets, n_hashes)
  got, o, lse = oracle.lsh_attention(
      q, v, rotations, n_buckets=n_buckets, n_hashes=n_hashes,
      chunk_len=chunk_len, n_chunks_before=0, causal=causal,
      return_rounds=True)
  assert o.shape == (n_hashes, length, d_v) and lse.shape == (n_hashes, length)
  np.testing.assert_allclose(got, oracle.combine_rounds(o, lse), **TIGHT)

  keys = q / np.sqrt(np.mean(q**2, -1, keepdims=True) + 1e-6) / np.sqrt(d_qk)
  buckets = oracle.our_hash_vectors(q, rotations, n_buckets, n_hashes)
  buckets = buckets.reshape(n_hashes, length) - n_buckets * np.arange(
      n_hashes)[:, None]
  candidates = [[] for _ in range(length)]  # (logit, j) over all rounds
  for h in range(n_hashes):
    order = sorted(range(length), key=lambda t: (buckets[h, t], t))
    for start in range(0, length, chunk_len):
      chunk = order[start:start + chunk_len]
      for i in chunk:
        for j in chunk:
          s = q[i] @ keys[j] - 1e5 * (i == j) - 1e9 * (causal and i < j)
          candidates[i].append((s, j))
  expected = np.zeros((length, d_v))
  for i in range(length):
    top = max(s for s, _ in candidates[i])  # shift: self-only rows sit at -1e5
    weights = [(np.exp(s - top), j) for s, j in candidates[i]]
    expected[i] = (sum(w * v[j] for w, j in weights)
                   / sum(w for w, _ in weights))
  np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
  if causal:  # position 0 sees only itself
    np.testing.assert_allclose(got[0], v[0], rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------
# docs/algorithm.md checks on the whole pipeline
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('n_buckets', [4, [2, 6]])
@pytest.mark.parametrize('n_hashes', [1, 2, 5])
@pytest.mark.parametrize('causal,padded', [(False, False), (True, False),
                                           (False, True), (True, True)])
def test_single_chunk_equals_full_attention(n_buckets, n_hashes, causal,
                                            padded):
  """chunk_len == L, no adjacent chunks: every round sees every token, so
  the result is dense attention whatever the rotations (docs/algorithm.md
  §3)."""
  length, d_qk, d_v = 13, 5, 3
  q, v = random_qv(7, length, d_qk, d_v)
  mask = np.arange(length) % 4 != 1 if padded else None
  expected = oracle.full_attention(q, v, causal=causal, mask=mask)
  for seed in range(3):
    rotations = random_rotations(seed, d_qk, n_buckets, n_hashes)
    got = oracle.lsh_attention(
        q, v, rotations, n_buckets=n_buckets, n_hashes=n_hashes,
        chunk_len=length, n_chunks_before=0, causal=causal, mask=mask)
    np.testing.assert_allclose(got, expected, **TIGHT)


@pytest.mark.parametrize('causal', [False, True])
def test_full_attention_with_identical_queries(causal):
  """All queries equal -> all logits equal, self excluded: out_i is the mean
  of v_j over the other visible valid j (j < i when causal); causal
  position 0 sees only itself."""
  length, d_v = 11, 3
  q = np.tile([[.3, -1.2, 2.0, .7, .1]], (length, 1))
  v = np.random.default_rng(8).normal(size=(length, d_v))
  mask = np.ones(length, bool)
  mask[[0, 4, 5]] = False
  out = oracle.full_attention(q, v, causal=causal, mask=mask)
  for i in range(length):
    visible = [j for j in range(length)
               if j != i and mask[j] and not (causal and j > i)]
    if visible:
      np.testing.assert_allclose(out[i], v[visible].mean(0), **TIGHT)
  unmasked = oracle.full_attention(q, v, causal=causal)
  if causal:
    np.testing.assert_allclose(unmasked[0], v[0], **TIGHT)
  else:
    np.testing.assert_allclose(unmasked[0], v[1:].mean(0), **TIGHT)


def test_round_order_does_not_matter_without_adjacent_chunks():
  """Permuting the rounds of the rotation array permutes the rounds; the
  combine is symmetric in them."""
  length, d_qk, d_v, n_hashes = 24, 5, 3, 4
  q, v = random_qv(9, length, d_qk, d_v)
  rotations = random_rotations(9, d_qk, 6, n_hashes)
  outputs = [oracle.lsh_attention(
      q, v, rotations[:, order], n_buckets=6, n_hashes=n_hashes, chunk_len=4,
      n_chunks_before=0, causal=True)
             for order in ([0, 1, 2, 3], [3, 1, 0, 2], [2, 3, 1, 0])]
  np.testing.assert_allclose(outputs[1], outputs[0], **TIGHT)
  np.testing.assert_allclose(outputs[2], outputs[0], **TIGHT)


@pytest.mark.parametrize('causal', [False, True])
def test_padding_is_invisible(causal):
  """Changing padded positions' q and v (padding at 0 and 1 included)
  leaves every valid output unchanged, with adjacent chunks on."""
  length, d_qk, d_v = 24, 5, 3
  q, v = random_qv(10, length, d_qk, d_v)
  mask = np.arange(length) % 3 != 0
  mask[1] = False
  rng = np.random.default_rng(11)
  q2, v2 = q.copy(), v.copy()
  q2[~mask] = rng.normal(size=(int((~mask).sum()), d_qk)) * 10
  v2[~mask] = rng.normal(size=(int((~mask).sum()), d_v)) * 10
  common = dict(n_buckets=4, n_hashes=3, chunk_len=4, n_chunks_before=1,
                n_chunks_after=1, causal=causal, mask=mask)
  rotations = random_rotations(10, d_qk, 4, 3)
  a = oracle.lsh_attention(q, v, rotations, **common)
  b = oracle.lsh_attention(q2, v2, rotations, **common)
  np.testing.assert_allclose(a[mask], b[mask], **TIGHT)
  assert not np.allclose(a[~mask], b[~mask])  # the change did reach them


def test_auto_buckets_and_float64():
  """n_buckets=None equals passing auto_n_buckets(L, C); float32 inputs
  give float64 outputs."""
  q, v = random_qv(12, 16, 3, 2)
  auto = oracle.auto_n_buckets(16, 4)  # 8
  rotations = random_rotations(12, 3, auto, 2)
  common = dict(n_hashes=2, chunk_len=4)
  a = oracle.lsh_attention(q.astype(np.float32), v.astype(np.float32),
                           rotations, n_buckets=None, **common)
  b = oracle.lsh_attention(q.astype(np.float32), v.astype(np.float32),
                           rotations, n_buckets=auto, **common)
  assert a.dtype == np.float64
  np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def test_length_not_a_multiple_of_chunk_len_raises():
  q, v = random_qv(13, 10, 3, 2)
  rotations = random_rotations(13, 3, 4, 2)
  match = r'multiple of chunk_len: got L=10, chunk_len=4'
  with pytest.raises(ValueError, match=match):
    oracle.lsh_attention(q, v, rotations, n_buckets=4, n_hashes=2,
                         chunk_len=4)
  with pytest.raises(ValueError, match=match):
    oracle.attend(np.tile(q, (2, 1)), np.tile(v, (2, 1)),
                  np.tile(np.arange(10), 2), chunk_len=4, n_hashes=2)
  with pytest.raises(ValueError, match=match):
    oracle.dotandv(np.tile(q, (2, 1)), np.tile(v, (2, 1)), np.arange(20), 4,
                   2, 10, passthrough=False)


def test_rotations_of_the_wrong_width_raise():
  q, v = random_qv(14, 8, 3, 2)
  with pytest.raises(ValueError, match=r'rotations should have shape .* '
                     r'= \(3, 2, 2\) for n_buckets=4: but got \(3, 2, 3\)'):
    oracle.lsh_attention(q, v, random_rotations(14, 3, 6, 2),
                         n_buckets=4, n_hashes=2, chunk_len=4)
