"""lsh_jax against the NumPy oracle over many random settings (hypothesis).

The oracle (float64, written from docs/algorithm.md step by step) is given
the very rotation array that the JAX code drew from the same key, so both
hash the same way; expected values are the oracle's. Any length is
generated: when L is not a multiple of chunk_len the oracle runs on the
input padded to the next multiple with masked positions (the documented
contract of `lsh_attention`). Half-precision inputs are compared with the
oracle on the same rounded inputs.

Valid queries are compared at 1e-5 (float32), and for bfloat16/float16
outputs at a relative 2**-8 / 2**-11 (one final rounding) on top. Queries
whose only unmasked candidate in every round is themselves (e.g. causal
position 0) carry logits near -1e5, where float32 resolves only steps of
2**-7: those are compared at 2e-2 in a test of their own (docs/algorithm.md §5
caveat). Padded queries' outputs must be exactly zero.

`make fuzz` runs the same properties over 2,000 settings each (fixed seed:
derandomized); `make test` runs the `ci` profile's 30.
"""
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lsh_jax
from lsh_jax.core import combine
from lsh_jax.core import hashing
from lsh_jax import oracle
from lsh_jax.core import padding
from helpers import hash_margin

# Below this float64 gap between the two best hash scores, float32 rounding
# may pick another bucket than float64 does; such draws are skipped.
MIN_HASH_MARGIN = 1e-4
# A query is "self only" when all its rounds' normalisers sit near -1e5.
SELF_ONLY_LSE = -1e4
# One final rounding to the output dtype: half its unit in the last place.
DTYPE_RTOL = {'float32': 0.0, 'bfloat16': 2**-8, 'float16': 2**-11}


@st.composite
def settings(draw, causal=(False, True),
             dtypes=('float32', 'float32', 'bfloat16', 'float16'),
             paddings=('none', 'random', 'first', 'almost_all', 'all')):
  """One generated setting; `causal`, `dtypes` and `paddings` narrow it
  by construction (not by a filter or `assume` that would reject draws)."""
  chunk_len = draw(st.sampled_from([1, 2, 4, 8, 16, 32]))
  n_chunks = draw(st.integers(1, max(1, min(16, 512 // chunk_len))))
  # Any length: a multiple of chunk_len minus a remainder (n_chunks == 1 and
  # a remainder > 0 give chunk_len > L).
  ragged = draw(st.booleans())
  length = chunk_len * n_chunks - (
      draw(st.integers(0, chunk_len - 1)) if ragged else 0)
  n_buckets = draw(st.one_of(
      st.none(),
      st.sampled_from([2, 4, 6, 8, 16, 32]),
      st.lists(st.sampled_from([2, 4, 6]), min_size=1, max_size=3)))
  padding_kind = draw(st.sampled_from(paddings))
  return dict(
      length=length, chunk_len=chunk_len, n_buckets=n_buckets,
      d_qk=draw(st.sampled_from([1, 2, 3, 7, 16, 64])),
      d_v=draw(st.sampled_from([1, 5, 8])),
      n_hashes=draw(st.integers(1, 8)),
      n_chunks_before=draw(st.integers(0, 2)),
      n_chunks_after=draw(st.integers(0, 2)),
      causal=draw(st.sampled_from(causal)), padding=padding_kind,
      dtype=draw(st.sampled_from(dtypes)),
      # Automatic (here always vmapped rounds) or rounds in turn with a
      # running combine.
      sequential_rounds=draw(st.sampled_from([None, True])),
      seed=draw(st.integers(0, 2**16)))


def make_mask(padding_kind, length, rng):
  if padding_kind == 'none':
    return None
  if padding_kind == 'all':
    return np.zeros(length, bool)
  if padding_kind == 'random':
    mask = rng.random(length) > 0.3
  elif padding_kind == 'first':  # padding at position 0 (and maybe 1)
    mask = np.arange(length) >= rng.integers(1, 3)
  else:  # almost all padding: one or two real tokens
    mask = np.zeros(length, bool)
    mask[rng.choice(length, size=min(length, 2), replace=False)] = True
  mask[rng.integers(length)] = True  # at least one real token
  return mask


_COMPILED = [0]


def _bound_compiled_programs(every=200):
  """Every generated setting compiles new programs; a campaign of thousands
  in one process once crashed inside XLA's compiler (SIGSEGV after ~600
  settings, not reproducible per setting): drop JAX's caches now and then."""
  _COMPILED[0] += 1
  if _COMPILED[0] % every == 0:
    jax.clear_caches()


def run_both(s):
  """Returns (lsh_jax output as float32, oracle output, oracle lse [R, L],
  valid bool[L]), the oracle run on the input padded to a multiple of
  chunk_len with masked positions."""
  _bound_compiled_programs()
  rng = np.random.default_rng(s['seed'])
  dtype = jnp.dtype(s['dtype'])
  length = s['length']
  # Rounded to the input dtype first: the oracle sees the same numbers.
  q = np.asarray(jnp.asarray(rng.normal(size=(length, s['d_qk'])), dtype)
                 .astype(jnp.float32))
  v = np.asarray(jnp.asarray(rng.normal(size=(length, s['d_v'])), dtype)
                 .astype(jnp.float32))
  mask = make_mask(s['padding'], length, rng)
  key = jax.random.PRNGKey(s['seed'])
  n_buckets = s['n_buckets']
  if n_buckets is None:  # documented: resolved with the real length
    # The oracle's count, not the code under test's.
    n_buckets = oracle.auto_n_buckets(length, s['chunk_len'])
  rotations = np.asarray(lsh_jax.core.random_rotations(key, s['d_qk'], n_buckets,
                                                  s['n_hashes']))
  valid = np.ones(length, bool) if mask is None else mask
  if valid.any():  # padding hashes to its own id, whatever its q
    hypothesis.assume(hash_margin(q[valid], rotations,
                                  hashing.bucket_factors(n_buckets))
                      > MIN_HASH_MARGIN)
  window = dict(n_hashes=s['n_hashes'], chunk_len=s['chunk_len'],
                n_chunks_before=s['n_chunks_before'],
                n_chunks_after=s['n_chunks_after'], causal=s['causal'])
  got = lsh_jax.lsh_attention(
      jnp.asarray(q, dtype), jnp.asarray(v, dtype), hash_key=key,
      n_buckets=s['n_buckets'], sequential_rounds=s['sequential_rounds'],
      mask=None if mask is None else jnp.asarray(mask), **window)
  assert got.shape == (length, s['d_v']) and got.dtype == dtype
  extra = padding.padded_length(length, s['chunk_len']) - length
  expected, _, lse = oracle.lsh_attention(
      np.pad(q, ((0, extra), (0, 0))), np.pad(v, ((0, extra), (0, 0))),
      rotations, n_buckets=n_buckets, return_rounds=True,
      mask=None if mask is None and not extra else np.pad(valid, (0, extra)),
      **window)
  return (np.asarray(got.astype(jnp.float32)), expected[:length],
          lse[:, :length], valid)


@hypothesis.given(settings())
def test_lsh_attention_matches_oracle(s):
  got, expected, lse, valid = run_both(s)
  normal = valid & (lse.max(axis=0) > SELF_ONLY_LSE)
  np.testing.assert_allclose(got[normal], expected[normal],
                             rtol=DTYPE_RTOL[s['dtype']], atol=1e-5)
  assert np.all(np.isfinite(got))
  np.testing.assert_array_equal(got[~valid], 0)


@hypothesis.settings(
    max_examples=max(10, hypothesis.settings().max_examples // 3))
@hypothesis.given(settings(causal=(True,)))
def test_self_only_queries_match_oracle_at_float32_resolution(s):
  """Causal runs always have self-only queries (position 0 at least)."""
  got, expected, lse, valid = run_both(s)
  self_only = valid & (lse.max(axis=0) <= SELF_ONLY_LSE)
  # float32 steps of 2**-7 at 1e5 in the logits: ~1e-2 in the outputs.
  np.testing.assert_allclose(got[self_only], expected[self_only],
                             rtol=DTYPE_RTOL[s['dtype']], atol=2e-2)


# Finite differences in float32: a central step of FD_EPS along a random
# direction; generated settings whose hash could change within the step are
# skipped (the hash is piecewise constant: its gradient is not taken).
FD_EPS = 1e-3


# At least 20 settings in `make test` (~2 s each: 43 s on the quiet 2-core
# machine, 2026-12-03), a tenth of the campaign in `make fuzz`.
@hypothesis.settings(
    max_examples=max(20, hypothesis.settings().max_examples // 10))
# All-padding settings have no output to differentiate: not generated
# (`assume` rejected 14% of the draws when they were).
@hypothesis.given(settings(dtypes=('float32',),
                           paddings=('none', 'random', 'first', 'almost_all')))
def test_gradients_match_finite_differences(s):
  """Directional derivatives of a random linear loss on the outputs of
  normal valid queries (self-only outputs resolve only ~1e-2, see above):
  jax.grad against central differences, for q and for v."""
  _bound_compiled_programs()
  rng = np.random.default_rng(s['seed'] + 1)
  length = s['length']
  q = jnp.asarray(rng.normal(size=(length, s['d_qk'])), jnp.float32)
  v = jnp.asarray(rng.normal(size=(length, s['d_v'])), jnp.float32)
  mask = make_mask(s['padding'], length, rng)
  valid = np.ones(length, bool) if mask is None else mask
  key = jax.random.PRNGKey(s['seed'])
  n_buckets = s['n_buckets'] or oracle.auto_n_buckets(length, s['chunk_len'])
  rotations = np.asarray(lsh_jax.core.random_rotations(key, s['d_qk'], n_buckets,
                                                  s['n_hashes']))
  dq = rng.normal(size=q.shape) * valid[:, None]
  dq /= max(1.0, np.abs(dq).max())
  # Keys are q / sqrt(|q|^2 + eps), which bends sharply near 0: each row's
  # step (FD_EPS * |dq_t|) stays under a hundredth of its norm (a row with
  # |q_t| = 0.008 in d = 1 put the central difference 2.6% off).
  dq *= np.minimum(1.0, 10 * np.linalg.norm(np.asarray(q), axis=1))[:, None]
  # A step moves any hash score by at most FD_EPS * |dq_t| * |rotation|.
  reach = FD_EPS * np.linalg.norm(dq, axis=1).max() * np.linalg.norm(
      rotations, axis=0).max()
  hypothesis.assume(valid.any())
  hypothesis.assume(hash_margin(np.asarray(q)[valid], rotations,
                                hashing.bucket_factors(n_buckets))
                    > 4 * reach + MIN_HASH_MARGIN)
  attend = lambda q, v: lsh_jax.lsh_attention(
      q, v, hash_key=key, n_buckets=s['n_buckets'], n_hashes=s['n_hashes'],
      chunk_len=s['chunk_len'], n_chunks_before=s['n_chunks_before'],
      n_chunks_after=s['n_chunks_after'], causal=s['causal'],
      sequential_rounds=s['sequential_rounds'],
      mask=None if mask is None else jnp.asarray(mask))
  _, _, lse = oracle.lsh_attention(
      *(np.pad(np.asarray(x), ((0, padding.padded_length(
          length, s['chunk_len']) - length), (0, 0))) for x in (q, v)),
      rotations, n_buckets=n_buckets, n_hashes=s['n_hashes'],
      chunk_len=s['chunk_len'], n_chunks_before=s['n_chunks_before'],
      n_chunks_after=s['n_chunks_after'], causal=s['causal'],
      mask=np.pad(valid, (0, padding.padded_length(length, s['chunk_len'])
                          - length)), return_rounds=True)
  normal = valid & (lse[:, :length].max(axis=0) > SELF_ONLY_LSE)
  hypothesis.assume(normal.any())
  weights = jnp.asarray(rng.normal(size=(length, s['d_v'])) * normal[:, None],
                        jnp.float32)
  # One program for the loss and its gradient: one compilation per setting.
  value_and_grad = jax.jit(jax.value_and_grad(
      lambda q, v: jnp.sum(weights * attend(q, v)), argnums=(0, 1)))
  loss = lambda q, v: value_and_grad(q, v)[0]
  grads = value_and_grad(q, v)[1]
  dv = rng.normal(size=v.shape)
  for arg, direction, grad in ((0, dq, grads[0]), (1, dv, grads[1])):
    step = jnp.asarray(FD_EPS * direction, jnp.float32)
    shifted = [(q, v), (q, v)]
    shifted = [tuple(x + sign * step if i == arg else x
                     for i, x in enumerate(pair))
               for sign, pair in zip((1, -1), shifted)]
    numeric = (float(loss(*shifted[0])) - float(loss(*shifted[1]))) / (
        2 * FD_EPS)
    analytic = float(jnp.sum(grad * jnp.asarray(direction, jnp.float32)))
    # float32 central differences: ~1e-7 * |loss| / eps of noise.
    scale = 1e-3 * float(jnp.sum(jnp.abs(weights))) + abs(analytic)
    np.testing.assert_allclose(numeric, analytic, rtol=0,
                               atol=2e-2 * scale + 1e-3)


@pytest.mark.parametrize('n_hashes', [1, 3])
@pytest.mark.parametrize('causal,padded', [(False, False), (True, True)])
def test_single_chunk_equals_full_attention(n_hashes, causal, padded):
  """chunk_len == L, no neighbours: dense, any hash (docs/algorithm.md §3)."""
  length = 24
  rng = np.random.default_rng(n_hashes)
  q = jnp.asarray(rng.normal(size=(length, 5)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(length, 3)), jnp.float32)
  mask = jnp.asarray(np.arange(length) % 4 != 1) if padded else None
  got = lsh_jax.lsh_attention(q, v, hash_key=jax.random.PRNGKey(3), n_buckets=8,
                              n_hashes=n_hashes, chunk_len=length,
                              n_chunks_before=0, causal=causal, mask=mask)
  expected = lsh_jax.full_attention(q, v, causal=causal, mask=mask)
  dense64 = oracle.full_attention(np.asarray(q), np.asarray(v), causal=causal,
                                  mask=None if mask is None else
                                  np.asarray(mask))
  valid = np.ones(length, bool) if mask is None else np.asarray(mask)
  rows = valid.copy()
  rows[0] = not causal  # causal position 0 is self-only: see the module doc
  np.testing.assert_allclose(got[rows], expected[rows], rtol=0, atol=1e-5)
  np.testing.assert_allclose(got[rows], dense64[rows], rtol=0, atol=1e-5)


def test_round_order_does_not_matter_without_neighbours():
  """Permuting the rounds' rotations permutes rounds: same combined output."""
  length, n_hashes = 32, 4
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(length, 6)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(length, 3)), jnp.float32)
  rotations = lsh_jax.core.random_rotations(jax.random.PRNGKey(1), 6, 8, n_hashes)
  outputs = []
  for order in ([0, 1, 2, 3], [3, 1, 0, 2]):
    buckets = lsh_jax.core.hash_with_rotations(q, rotations[:, order], 8)
    outputs.append(lsh_jax.lsh_attention_from_buckets(
        q, v, buckets, chunk_len=8, n_chunks_before=0))
  np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-6, atol=1e-6)


def test_running_combine_equals_combine_rounds():
  """Rounds combined in turn (`combine.add_round`, as sequential rounds do)
  against all at once: `combine_rounds` in float32 and the oracle's in
  float64. Rows: lse spread widely; a running top that moves up twice past
  rounds whose weight underflows; and self-only rows near -1e5, where
  float32 cannot resolve the normaliser (docs/algorithm.md §5): there the
  running combine must give `combine_rounds`' float32 result (Trax's), and the
  float64 oracle only to the 2e-2 of that caveat."""
  rng = np.random.default_rng(3)
  n_rounds, length, d_v = 5, 6, 4
  o = rng.normal(size=(n_rounds, length, d_v)).astype(np.float32)
  lse = (rng.normal(size=(n_rounds, length)) * 5).astype(np.float32)
  lse[:, 1] = [-1e5, 3.0, -1e5, 40.0, -2.0]
  lse[:, 2] = -1e5 + np.log([1.0, 2.0, 1.0, 3.0, 1.0])  # copies of itself
  lse[:, 3] = -1e5
  state = combine.no_rounds(length, d_v, jnp.float32)
  for h in range(n_rounds):
    state = combine.add_round(state, o[h], lse[h])
  got = np.asarray(combine.finish_rounds(state, lse))
  np.testing.assert_allclose(got, lsh_jax.core.combine_rounds(o, lse),
                             rtol=1e-6, atol=1e-6)
  want64 = oracle.combine_rounds(o.astype(np.float64), lse.astype(np.float64))
  normal = [0, 1, 4, 5]
  np.testing.assert_allclose(got[normal], want64[normal], rtol=0, atol=1e-5)
  np.testing.assert_allclose(got, want64, rtol=0, atol=2e-2)


def test_padding_is_invisible():
  """Changing padded positions' q and v leaves valid outputs unchanged."""
  length = 32
  rng = np.random.default_rng(4)
  q = rng.normal(size=(length, 4)).astype(np.float32)
  v = rng.normal(size=(length, 3)).astype(np.float32)
  mask = np.arange(length) % 3 != 0  # padding at position 0 too
  q2, v2 = q.copy(), v.copy()
  q2[~mask] = rng.normal(size=(int((~mask).sum()), 4)) * 10
  v2[~mask] = rng.normal(size=(int((~mask).sum()), 3)) * 10
  # Same buckets for valid tokens: hashing depends only on each token's q.
  kwargs = dict(n_buckets=4, n_hashes=3, chunk_len=8, n_chunks_before=1,
                n_chunks_after=1, mask=jnp.asarray(mask))
  a = lsh_jax.lsh_attention(jnp.asarray(q), jnp.asarray(v),
                            hash_key=jax.random.PRNGKey(0), **kwargs)
  b = lsh_jax.lsh_attention(jnp.asarray(q2), jnp.asarray(v2),
                            hash_key=jax.random.PRNGKey(0), **kwargs)
  np.testing.assert_allclose(np.asarray(a)[mask], np.asarray(b)[mask],
                             rtol=1e-6, atol=1e-6)


def test_causal_receptive_field():
  """d out[i] / d v[j] is zero for j > i (flax's receptive-field test)."""
  length = 16
  q, v = (jax.random.normal(k, (length, 3)) for k in
          jax.random.split(jax.random.PRNGKey(2)))
  f = lambda v: lsh_jax.lsh_attention(q, v, hash_key=jax.random.PRNGKey(1),
                                      n_buckets=4,
                                      n_hashes=2, chunk_len=4,
                                      n_chunks_after=1, causal=True)
  jac = jax.jacrev(f)(v)  # [L, Dv, L, Dv]
  influence = np.abs(np.asarray(jac)).sum(axis=(1, 3))  # [i, j]
  assert np.all(influence[np.triu_indices(length, k=1)] == 0)
  assert influence[np.tril_indices(length, k=-1)].max() > 0  # can fail
