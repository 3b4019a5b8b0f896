"""lsh_jax against Trax 1.4.1's own functions, same inputs and keys.

Expected values come from Trax (`hash_vecs`, `LSHSelfAttention.hash_vectors`
and `forward_unbatched`, which runs `attend` and `look_adjacent`). Trax's
`forward_unbatched` is driven with identity projections (helpers), so its
q and v are exactly ours and its output is exactly the attention output.
Padding is kept away from positions 0-1, where Trax 1.4.1 fails to mask it
(docs/algorithm.md §3; `test_padding_at_positions_0_1_differs_from_trax`
shows it).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lsh_jax
from helpers import identity_projections
from helpers import random_qv

# float32, same operations in a different association order: ~1e-6 seen.
ATOL = 1e-5


def trax_forward(trax_ea, q, v, hash_key, rng, *, n_hashes, n_buckets,
                 chunk_len, n_chunks_before, n_chunks_after, causal=False,
                 mask=None, attention_dropout=0.0):
  """Trax's LSHSelfAttention.forward_unbatched on given q and v."""
  layer = trax_ea.LSHSelfAttention(
      n_heads=1, d_qk=q.shape[1], d_v=v.shape[1], causal=causal,
      masked=mask is not None, chunk_len=chunk_len,
      n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after,
      n_hashes=n_hashes, n_buckets=n_buckets,
      attention_dropout=attention_dropout)
  weights = identity_projections(q.shape[1], v.shape[1])

  @jax.jit  # compiling beats Trax's op-by-op dispatch even for one call
  def forward(q, v, hash_key, rng, mask):
    state = (jnp.zeros(n_hashes * q.shape[0], jnp.int32), hash_key)
    out, (buckets, _) = layer.forward_unbatched(
        jnp.concatenate([q, v], axis=-1), mask, weights=weights, state=state,
        rng=rng, update_state=True)
    return out, buckets

  return forward(q, v, hash_key, rng, mask)


def lsh_keys(hash_key, rng):
  """The keys Trax's forward_unbatched derives for hashing and dropout."""
  return jax.random.split(hash_key)[1], jax.random.split(rng)[0]


CASES = [
    # n_hashes, n_buckets, before, after, causal, padded, dropout
    (1, 4, 0, 0, False, False, 0.0),
    (3, 4, 1, 0, False, False, 0.0),
    (2, [2, 4], 2, 1, True, True, 0.0),
    (4, 6, 1, 2, True, False, 0.0),
    (8, None, 1, 0, True, True, 0.0),
    (5, (4, 2), 0, 1, False, True, 0.0),
    (2, 4, 1, 1, True, True, 0.3),
    (3, 8, 2, 0, False, False, 0.5),
    # Windows reaching two rounds back: 3 rounds of 2 chunks, 4 chunks back.
    (3, 4, 4, 1, False, False, 0.0),
]


@pytest.mark.parametrize('n_hashes,n_buckets,before,after,causal,padded,rate',
                         CASES)
def test_lsh_attention_matches_trax_forward(trax_ea, n_hashes, n_buckets,
                                            before, after, causal, padded,
                                            rate):
  length = 16 if before == 4 else 48
  q, v = random_qv(11, length, 5, 7)
  hash_key, rng = jax.random.PRNGKey(7), jax.random.PRNGKey(9)
  positions = np.arange(length)
  mask = jnp.asarray(positions % 5 != 3) if padded else None
  kwargs = dict(n_hashes=n_hashes, n_buckets=n_buckets, chunk_len=8,
                n_chunks_before=before, n_chunks_after=after, causal=causal,
                mask=mask, attention_dropout=rate)
  expected, _ = trax_forward(trax_ea, q, v, hash_key, rng, **kwargs)
  our_hash_key, our_dropout_key = lsh_keys(hash_key, rng)
  valid = np.ones(length, bool) if mask is None else np.asarray(mask)
  # Both round schedules: vmapped rounds, and rounds in turn with a running
  # combine.
  for sequential in (False, True):
    got = lsh_jax.lsh_attention(q, v, hash_key=our_hash_key,
                                dropout_key=our_dropout_key,
                                sequential_rounds=sequential, **kwargs)
    np.testing.assert_allclose(np.asarray(got)[valid],
                               np.asarray(expected)[valid], rtol=0, atol=ATOL)


@pytest.mark.parametrize('n_buckets', [2, 8, 32, [4, 2], [2, 4, 6], (8, 8)])
@pytest.mark.parametrize('depth', [1, 3, 64])
def test_hash_vectors_matches_trax_hash_vecs(trax_ea, n_buckets, depth):
  vecs = jax.random.normal(jax.random.PRNGKey(depth), (40, depth))
  key = jax.random.PRNGKey(5)
  expected, _ = trax_ea.hash_vecs(vecs, n_buckets, 3, key)
  got = lsh_jax.hash_vectors(vecs, hash_key=key, n_buckets=n_buckets,
                             n_hashes=3)
  np.testing.assert_array_equal(got, expected)


# Lengths that are not multiples of the chunk (Trax rounds L / C down): one
# count below 128 and two factorised ones, each of which rounding up changes.
@pytest.mark.parametrize('length,chunk_len', [(61, 8), (637, 4), (2047, 8)])
def test_auto_n_buckets_matches_trax(trax_ea, length, chunk_len):
  """Trax's layer picks n_buckets itself when given None; so do we."""
  layer = trax_ea.LSHSelfAttention(n_heads=1, d_qk=4, d_v=4, n_hashes=2,
                                   chunk_len=chunk_len, n_buckets=None)
  vecs = jax.random.normal(jax.random.PRNGKey(1), (length, 4))
  key = jax.random.PRNGKey(2)
  expected = np.asarray(layer.hash_vectors(vecs, key)).reshape(2, length)
  n_buckets = lsh_jax.auto_n_buckets(length, chunk_len)
  offsets = np.arange(2)[:, None] * np.prod(n_buckets)
  got = np.asarray(lsh_jax.hash_vectors(vecs, hash_key=key, n_buckets=n_buckets,
                                        n_hashes=2)) + offsets
  np.testing.assert_array_equal(got, expected)


def test_padding_buckets_match_trax(trax_ea):
  layer = trax_ea.LSHSelfAttention(n_heads=1, d_qk=4, d_v=4, n_hashes=3,
                                   chunk_len=4, n_buckets=6, masked=True)
  vecs = jax.random.normal(jax.random.PRNGKey(1), (24, 4))
  mask = jnp.arange(24) % 4 != 1
  key = jax.random.PRNGKey(2)
  expected = np.asarray(layer.hash_vectors(vecs, key, mask)).reshape(3, 24)
  offsets = np.arange(3)[:, None] * 7  # 6 buckets + the padding id
  got = np.asarray(lsh_jax.hash_vectors(vecs, hash_key=key, n_buckets=6,
                                        n_hashes=3, mask=mask)) + offsets
  np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize('causal,padded', [(False, False), (True, True)])
def test_gradients_match_trax(trax_ea, causal, padded):
  """d(out . cot)/d(q, v) equals Trax's d/dx through identity projections."""
  length, d_qk, d_v = 32, 3, 5
  q, v = random_qv(2, length, d_qk, d_v)
  cotangent = jax.random.normal(jax.random.PRNGKey(3), (length, d_v))
  mask = jnp.arange(length) % 7 != 4 if padded else None
  hash_key, rng = jax.random.PRNGKey(4), jax.random.PRNGKey(5)
  kwargs = dict(n_hashes=3, n_buckets=4, chunk_len=8, n_chunks_before=1,
                n_chunks_after=1, causal=causal, mask=mask)
  valid = jnp.ones(length) if mask is None else mask.astype(jnp.float32)
  weight = cotangent * valid[:, None]  # padded outputs differ by design

  def trax_loss(q, v):
    out, _ = trax_forward(trax_ea, q, v, hash_key, rng, **kwargs)
    return jnp.sum(out * weight)

  def our_loss(q, v, sequential):
    out = lsh_jax.lsh_attention(q, v, hash_key=lsh_keys(hash_key, rng)[0],
                                sequential_rounds=sequential, **kwargs)
    return jnp.sum(out * weight)

  expected = jax.grad(trax_loss, argnums=(0, 1))(q, v)
  for sequential in (False, True):  # both round schedules
    got = jax.grad(our_loss, argnums=(0, 1))(q, v, sequential)
    for g, e in zip(got, expected):
      np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


def test_padding_at_positions_0_1_differs_from_trax(trax_ea):
  """The deliberate difference: we mask padding at every position.

  With padding only at positions 0 and 1 and one chunk, Trax lets valid
  queries attend to them; lsh_jax equals dense attention over the valid
  tokens alone (an independent derivation: drop the padded rows).
  """
  length = 8
  q, v = random_qv(6, length, 4, 3)
  mask = jnp.arange(length) >= 2
  kwargs = dict(n_hashes=1, n_buckets=2, chunk_len=length, n_chunks_before=0,
                n_chunks_after=0, mask=mask)
  hash_key, rng = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
  trax_out, _ = trax_forward(trax_ea, q, v, hash_key, rng, **kwargs)
  ours = lsh_jax.lsh_attention(q, v, hash_key=lsh_keys(hash_key, rng)[0],
                               **kwargs)
  reference = lsh_jax.full_attention(q[2:], v[2:])
  np.testing.assert_allclose(ours[2:], reference, rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(trax_out[2:] - reference)).max() > 1e-2


def test_window_wider_than_all_chunks_wraps_modulo(trax_ea):
  """docs/algorithm.md §3 takes window chunks modulo the chunk count, also
  past one full turn; Trax's `look_adjacent` slicing does not wrap past one
  turn.

  One round of 2 chunks, 3 chunks back: the windows are (f-3, f-2, f-1, f)
  mod 2, so every chunk sees each chunk twice. The expected value is
  independent: every query sees all tokens, each key twice, which is dense
  attention (duplicating every key leaves a softmax unchanged).
  """
  length = 16
  q, v = random_qv(8, length, 4, 3)
  got = lsh_jax.lsh_attention(q, v, hash_key=jax.random.PRNGKey(0), n_hashes=1,
                              n_buckets=2, chunk_len=8, n_chunks_before=3,
                              n_chunks_after=0)
  np.testing.assert_allclose(got, lsh_jax.full_attention(q, v), rtol=1e-5,
                             atol=1e-5)
