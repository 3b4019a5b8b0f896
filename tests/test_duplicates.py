"""Exact multi-round attention (allow_duplicate_attention=False) and the
per-bucket candidate sets (attend_across_buckets=False).

Expected values come from
  * the float64 NumPy oracle (`lsh_jax.oracle.lsh_attention`, which
    counts the duplicates explicitly, pair by pair);
  * an independent derivation in this file: the candidate union of every
    query, built here from the buckets (sort, chunk, look-adjacent over the
    flat chunk axis of docs/algorithm.md §3), and dense softmax attention
    restricted to it (the paper's Appendix A: with the correction the
    output *is* that).
Tolerances: float32 outputs 1e-5 (relative and absolute 2e-5); queries
whose only candidate is themselves (logits near -1e5, the float32 caveat of
docs/algorithm.md §5) 1e-2; gradients 2e-3.
"""
import functools
import re

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lsh_jax
from lsh_jax import oracle
from lsh_jax.core import hashing
from tests import helpers

TOL = dict(rtol=2e-5, atol=2e-5)
SELF_ONLY_TOL = dict(rtol=1e-2, atol=1e-2)


def candidate_union(buckets, *, chunk_len, n_chunks_before, n_chunks_after,
                    across_buckets):
  """bool[L, L]: key j sits in a window of query i in some round.

  From the buckets alone: each round sorted by (bucket, position), all
  rounds' chunks on one flat axis, a window = chunks f - before .. f +
  after modulo their number; without `across_buckets`, only keys of the
  query entry's own round and bucket.
  """
  buckets = np.asarray(buckets)
  n_rounds, length = buckets.shape
  order = [np.lexsort((np.arange(length), b)) for b in buckets]  # [R][L]
  flat_pos = np.concatenate(order)  # position of each flat entry
  flat_round = np.repeat(np.arange(n_rounds), length)
  flat_bucket = np.concatenate([b[o] for b, o in zip(buckets, order)])
  n_flat_chunks = n_rounds * length // chunk_len
  union = np.zeros((length, length), bool)
  for entry in range(n_rounds * length):
    chunk = entry // chunk_len
    for step in range(-n_chunks_before, n_chunks_after + 1):
      other = (chunk + step) % n_flat_chunks
      keys = np.arange(other * chunk_len, (other + 1) * chunk_len)
      if not across_buckets:
        keys = keys[(flat_round[keys] == flat_round[entry])
                    & (flat_bucket[keys] == flat_bucket[entry])]
      union[flat_pos[entry], flat_pos[keys]] = True
  return union


def union_logits(q, union, *, causal, mask):
  """Dense shared-QK logits (float64) restricted to the union: [L, L]."""
  q = np.asarray(q, np.float64)
  length = q.shape[0]
  keys = oracle.shared_qk_keys(q)
  positions = np.arange(length)
  dots = oracle.mask_logits(q @ keys.T, positions, positions, mask,
                            causal=causal)
  return np.where(union, dots, -np.inf)


def union_attention(q, v, union, *, causal, mask):
  dots = union_logits(q, union, causal=causal, mask=mask)
  probs = np.exp(dots - oracle.logsumexp(dots, axis=-1, keepdims=True))
  return probs @ np.asarray(v, np.float64)


def self_only(q, union, *, causal, mask):
  """bool[L]: valid queries whose every candidate other than self is masked."""
  dots = union_logits(q, union, causal=causal, mask=mask)
  length = dots.shape[0]
  others = np.where(np.eye(length, dtype=bool), -np.inf, dots)
  valid = np.ones(length, bool) if mask is None else np.asarray(mask)
  return valid & (np.max(others, axis=-1) < -1e4)


def compare(actual, expected, special, valid):
  actual = np.asarray(actual, np.float64)
  np.testing.assert_allclose(actual[valid & ~special],
                             expected[valid & ~special], **TOL)
  np.testing.assert_allclose(actual[valid & special],
                             expected[valid & special], **SELF_ONLY_TOL)


@st.composite
def settings(draw):
  chunk_len = draw(st.sampled_from([2, 4]))
  n_chunks = draw(st.integers(1, 4))
  return dict(
      n_hashes=draw(st.integers(1, 8)), chunk_len=chunk_len,
      length=chunk_len * n_chunks,
      n_chunks_before=draw(st.integers(0, 2)),
      n_chunks_after=draw(st.integers(0, 1)),
      causal=draw(st.booleans()),
      across=draw(st.booleans()),
      padded=draw(st.booleans()),
      sequential=draw(st.booleans()),
      seed=draw(st.integers(0, 2**16)))


def _draw_inputs(s, n_buckets=4, d_qk=5, d_v=3, check_margin=True):
  q, v = helpers.random_qv(s['seed'], s['length'], d_qk, d_v)
  key = jax.random.PRNGKey(s['seed'])
  mask = None
  if s['padded']:
    mask = np.ones(s['length'], bool)
    mask[s['seed'] % s['length']] = False
  rotations = hashing.random_rotations(key, d_qk, n_buckets, s['n_hashes'])
  # A hash decided at float32 rounding level may differ from the oracle's.
  margin = helpers.hash_margin(q, rotations, [n_buckets])
  if check_margin:
    hypothesis.assume(margin > 1e-4)
  else:  # a fixed draw, chosen clear of that
    assert margin > 1e-4
  return q, v, key, mask, np.asarray(rotations)


@hypothesis.settings(max_examples=12)
@hypothesis.given(settings())
def test_matches_oracle_and_the_union(s):
  q, v, key, mask, rotations = _draw_inputs(s)
  window = dict(chunk_len=s['chunk_len'], n_chunks_before=s['n_chunks_before'],
                n_chunks_after=s['n_chunks_after'])
  out = lsh_jax.lsh_attention(
      q, v, hash_key=key, n_buckets=4, n_hashes=s['n_hashes'],
      causal=s['causal'], mask=mask, allow_duplicate_attention=False,
      attend_across_buckets=s['across'], sequential_rounds=s['sequential'],
      **window)
  expected = oracle.lsh_attention(
      q, v, rotations, n_buckets=4, n_hashes=s['n_hashes'],
      causal=s['causal'], mask=mask, allow_duplicate_attention=False,
      attend_across_buckets=s['across'], **window)
  buckets = lsh_jax.hash_vectors(q, hash_key=key, n_buckets=4,
                                 n_hashes=s['n_hashes'], mask=mask)
  union = candidate_union(buckets, across_buckets=s['across'], **window)
  special = self_only(q, union, causal=s['causal'], mask=mask)
  valid = np.ones(s['length'], bool) if mask is None else mask
  compare(out, expected, special, valid)
  # The property: the oracle's explicit counts give attention over the
  # union, which this file derived from the buckets alone.
  dense = union_attention(q, v, union, causal=s['causal'], mask=mask)
  np.testing.assert_allclose(expected[valid & ~special],
                             dense[valid & ~special], rtol=1e-9, atol=1e-9)
  compare(out, dense, special, valid)


@pytest.mark.parametrize('across', [True, False])
def test_bucket_restriction_alone_matches_oracle(across):
  """Duplicates allowed, with and without the bucket restriction."""
  s = dict(n_hashes=3, chunk_len=4, length=16, padded=False, seed=7)
  q, v, key, mask, rotations = _draw_inputs(s, check_margin=False)
  window = dict(chunk_len=4, n_chunks_before=1, n_chunks_after=1)
  out = lsh_jax.lsh_attention(q, v, hash_key=key, n_buckets=4, n_hashes=3,
                              causal=True, attend_across_buckets=across,
                              **window)
  expected = oracle.lsh_attention(q, v, rotations, n_buckets=4,
                                  n_hashes=3, causal=True,
                                  attend_across_buckets=across, **window)
  union = candidate_union(lsh_jax.hash_vectors(q, hash_key=key, n_buckets=4,
                                               n_hashes=3),
                          across_buckets=across, **window)
  compare(out, expected, self_only(q, union, causal=True, mask=None),
          np.ones(16, bool))


def test_the_correction_changes_repeated_keys_only():
  """With one round and a window narrower than the round, no key repeats:
  the correction is the identity. With 4 rounds keys repeat, and the
  uncorrected output is not the union attention (so the test above
  checks something)."""
  q, v = helpers.random_qv(3, 32, 6, 4)
  key = jax.random.PRNGKey(3)
  common = dict(n_buckets=4, chunk_len=8, n_chunks_before=1)
  one = functools.partial(lsh_jax.lsh_attention, q, v, hash_key=key,
                          n_hashes=1, **common)
  np.testing.assert_allclose(one(allow_duplicate_attention=False), one(),
                             rtol=1e-6, atol=1e-6)
  four = functools.partial(lsh_jax.lsh_attention, q, v, hash_key=key,
                           n_hashes=4, **common)
  assert np.max(np.abs(four(allow_duplicate_attention=False) - four())) > 1e-2


def test_attention_weights_is_the_union_softmax():
  q, v = helpers.random_qv(5, 24, 4, 3)
  key = jax.random.PRNGKey(5)
  window = dict(chunk_len=4, n_chunks_before=1, n_chunks_after=0)
  weights = lsh_jax.attention_weights(
      q, hash_key=key, n_buckets=4, n_hashes=3, causal=True,
      allow_duplicate_attention=False, **window)
  buckets = lsh_jax.hash_vectors(q, hash_key=key, n_buckets=4, n_hashes=3)
  union = candidate_union(buckets, across_buckets=True, **window)
  dots = union_logits(q, union, causal=True, mask=None)
  expected = np.exp(dots - oracle.logsumexp(dots, axis=-1, keepdims=True))
  special = self_only(q, union, causal=True, mask=None)
  np.testing.assert_allclose(np.asarray(weights)[~special],
                             expected[~special], **TOL)
  np.testing.assert_allclose(np.asarray(weights)[special],
                             expected[special], **SELF_ONLY_TOL)


@pytest.mark.parametrize('sequential', [False, True],
                         ids=['vmapped', 'in_turn'])
@pytest.mark.parametrize('across', [True, False])
def test_gradients(sequential, across):
  """The custom VJPs carry the correction: gradients equal autodiff of the
  dense union attention (float32, from this file's union), and a central
  finite difference along a random direction."""
  length, chunk_len, n_rounds = 16, 4, 3
  q, v = helpers.random_qv(11, length, 4, 3)
  buckets = jax.random.randint(jax.random.PRNGKey(12), (n_rounds, length),
                               0, 3)
  window = dict(chunk_len=chunk_len, n_chunks_before=1, n_chunks_after=0)
  cotangent = jax.random.normal(jax.random.PRNGKey(13), (length, 3))

  def lsh(q, v):
    out = lsh_jax.lsh_attention_from_buckets(
        q, v, buckets, causal=True, allow_duplicate_attention=False,
        attend_across_buckets=across, sequential_rounds=sequential,
        **window)
    return jnp.sum(out[1:] * cotangent[1:])  # position 0: self only

  union = jnp.asarray(candidate_union(buckets, across_buckets=across,
                                      **window))

  def dense(q, v):
    keys = q / jnp.sqrt(jnp.mean(q**2, -1, keepdims=True) + 1e-6) / 2.0
    positions = jnp.arange(length)
    dots = q @ keys.T - 1e9 * (positions[:, None] < positions[None, :])
    dots = dots - 1e5 * jnp.eye(length)
    dots = jnp.where(union, dots, -jnp.inf)
    out = jax.nn.softmax(dots, axis=-1) @ v
    return jnp.sum(out[1:] * cotangent[1:])

  grads = jax.grad(lsh, argnums=(0, 1))(q, v)
  expected = jax.grad(dense, argnums=(0, 1))(q, v)
  for got, want in zip(grads, expected):
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)
  direction = jax.random.normal(jax.random.PRNGKey(14), q.shape)
  eps = 1e-2  # buckets are fixed: the function is smooth in q
  finite = (lsh(q + eps * direction, v) - lsh(q - eps * direction, v)) / (
      2 * eps)
  np.testing.assert_allclose(finite, jnp.vdot(grads[0], direction),
                             rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize('name', ['allow_duplicate_attention',
                                  'attend_across_buckets'])
def test_flags_must_be_bools(name):
  q, v = helpers.random_qv(0, 8, 4, 4)
  with pytest.raises(ValueError, match=f'{name} must be True or False, got '
                     "'no'"):
    lsh_jax.lsh_attention(q, v, hash_key=jax.random.PRNGKey(0), n_buckets=2,
                          n_hashes=2, chunk_len=4, **{name: 'no'})
  with pytest.raises(ValueError, match=f'{name} must be True or False'):
    lsh_jax.lsh_attention_from_buckets(q, v, jnp.zeros((2, 8), jnp.int32),
                                       chunk_len=4, **{name: 1})


_SHAPE = re.compile(r'\b(?:f64|f32|f16|bf16|s64|s32|u32|u8|s8|pred)\[([\d,]+)\]')


@pytest.mark.parametrize('backward', [False, True],
                         ids=['forward', 'backward'])
def test_no_quadratic_buffer_at_64k(backward):
  """Compiled, not run (tests/test_memory.py's approach): no array of the
  corrected program exceeds every round's window logits, R * L * W * C
  values (derivation; an [L, L] array would be 256 times that)."""
  length, n_rounds, chunk_len, n_windows = 65_536, 2, 64, 2
  spec = jax.ShapeDtypeStruct((length, 8), jnp.float32)

  def attend(q, v):
    return lsh_jax.lsh_attention(
        q, v, hash_key=jax.random.PRNGKey(0), n_buckets=64, n_hashes=n_rounds,
        chunk_len=chunk_len, causal=True, allow_duplicate_attention=False,
        attend_across_buckets=False)
  if backward:
    attend = jax.grad(lambda q, v, f=attend: jnp.sum(f(q, v)),
                      argnums=(0, 1))
  text = jax.jit(attend).lower(spec, spec).compile().as_text()
  largest = max(int(np.prod([int(d) for d in dims.split(',') if d]))
                for dims in _SHAPE.findall(text))
  assert largest <= n_rounds * length * n_windows * chunk_len


def test_multihead_entry_point_passes_the_flags():
  """lsh_self_attention's heads equal lsh_attention with the same flags
  and the per-head keys (its documented contract), here with the
  correction on."""
  query = jax.random.normal(jax.random.PRNGKey(20), (2, 16, 3, 4))
  value = jax.random.normal(jax.random.PRNGKey(21), (2, 16, 3, 5))
  key = jax.random.PRNGKey(22)
  flags = dict(allow_duplicate_attention=False, attend_across_buckets=False)
  common = dict(n_buckets=4, n_hashes=3, chunk_len=4, causal=True)
  out = lsh_jax.lsh_self_attention(query, value, hash_key=key, **common,
                                   **flags)
  keys = lsh_jax.core.multihead.head_keys(key, 2, 3)
  for b in range(2):
    for n in range(3):
      expected = lsh_jax.lsh_attention(query[b, :, n], value[b, :, n],
                                       hash_key=keys[b, n], **common, **flags)
      np.testing.assert_allclose(out[b, :, n], expected, rtol=1e-6,
                                 atol=1e-6)
