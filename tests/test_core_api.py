"""The public API's contract: errors, jit/vmap/grad composition, no retrace.

Expected values here are independent derivations: a loop over examples for
vmap, finite differences for gradients, the inverse permutation for sorting.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lsh_jax
from lsh_jax.core import attention
from lsh_jax.core import hashing
from lsh_jax.core import schedule
from lsh_jax.core import sorting
from helpers import assert_rows_close
from helpers import random_qv

KW = dict(n_buckets=4, n_hashes=2, chunk_len=4)
KEY = jax.random.PRNGKey(0)


def _qv(length=16, d_qk=3, d_v=5):
  return random_qv(0, length, d_qk, d_v)


@pytest.mark.parametrize('change,match', [
    (dict(chunk_len=0), r'chunk_len must be >= 1, got 0'),
    (dict(chunk_len=-4), r'chunk_len must be >= 1, got -4'),
    (dict(chunk_len=4.0), r'chunk_len must be an int, got float 4.0'),
    (dict(n_buckets=3), r'n_buckets must be an even int >= 2, got 3'),
    (dict(n_buckets=0), r'n_buckets must be an even int >= 2, got 0'),
    (dict(n_buckets=-4), r'n_buckets must be an even int >= 2, got -4'),
    (dict(n_buckets=[4, -2]), r'every n_buckets factor must be an even int'),
    (dict(n_buckets=[0]), r'every n_buckets factor must be an even int'),
    (dict(n_buckets=[4, 3]), r'every n_buckets factor must be an even int'),
    (dict(n_buckets=[]), r'non-empty list'),
    (dict(n_buckets=4.5), r'n_buckets must be an int'),
    (dict(n_hashes=0), r'n_hashes must be >= 1, got 0'),
    (dict(n_hashes=-1), r'n_hashes must be >= 1, got -1'),
    (dict(n_hashes=True), r'n_hashes must be an int, got the bool'),
    (dict(n_chunks_before=-1), r'n_chunks_before must be >= 0, got -1'),
    (dict(n_chunks_after=-2), r'n_chunks_after must be >= 0, got -2'),
    (dict(mask=jnp.ones(15, bool)), r'mask must have shape \(16,\) to match q'),
    (dict(mask=jnp.ones((16, 1), bool)), r'mask must have shape \(16,\)'),
    (dict(mask=jnp.ones(16, jnp.int32)), r'mask must be boolean'),
    (dict(mask=jnp.ones(16, jnp.float32)), r'mask must be boolean .* float32'),
    (dict(attention_dropout=1.0), r'attention_dropout must be in \[0, 1\)'),
    (dict(attention_dropout=-0.1), r'attention_dropout must be in \[0, 1\), '
     r'got -0.1'),
    (dict(attention_dropout=float('nan')), r'attention_dropout must be in'),
    (dict(attention_dropout='high'), r'attention_dropout must be a float'),
    (dict(attention_dropout=0.1), r'dropout_key is required'),
    (dict(attention_dropout=0.1, dropout_key=0.5),
     r'dropout_key must be a PRNG key'),
])
def test_bad_arguments_raise_clear_errors(change, match):
  q, v = _qv()
  kwargs = dict(KW, **change)
  with pytest.raises(ValueError, match=match):
    lsh_jax.lsh_attention(q, v, hash_key=KEY, **kwargs)


@pytest.mark.parametrize('q_shape,v_shape,match', [
    ((2, 16, 3), (16, 5), r'q must be a 2-D array \[length, depth\], got '
     r'shape \(2, 16, 3\)'),
    ((16,), (16, 5), r'q must be a 2-D array'),
    ((16, 3), (12, 5), r'v must have the same length as q \(16\), got shape '
     r'\(12, 5\)'),
    ((16, 3), (16,), r'v must be a 2-D array'),
])
def test_bad_shapes_raise_clear_errors(q_shape, v_shape, match):
  with pytest.raises(ValueError, match=match):
    lsh_jax.lsh_attention(jnp.ones(q_shape), jnp.ones(v_shape), hash_key=KEY,
                          **KW)


@pytest.mark.parametrize('q_shape,v_shape,match', [
    ((0, 3), (0, 5), r'q must have length and depth >= 1, got shape \(0, 3\)'),
    ((16, 0), (16, 5), r'q must have length and depth >= 1'),
    ((16, 3), (16, 0), r'v must have length and depth >= 1'),
])
def test_empty_inputs_are_rejected(q_shape, v_shape, match):
  with pytest.raises(ValueError, match=match):
    lsh_jax.lsh_attention(jnp.ones(q_shape), jnp.ones(v_shape), hash_key=KEY,
                          **KW)


@pytest.mark.parametrize('q_dtype,v_dtype,match', [
    (jnp.int32, jnp.float32, 'q must have a floating dtype, got int32'),
    (jnp.float32, jnp.int32, 'v must have a floating dtype, got int32'),
    (jnp.bool_, jnp.float32, 'q must have a floating dtype, got bool'),
    (jnp.complex64, jnp.float32, 'q must have a floating dtype, got '
     'complex64'),
])
def test_non_float_inputs_are_rejected(q_dtype, v_dtype, match):
  with pytest.raises(ValueError, match=match):
    lsh_jax.lsh_attention(jnp.ones((16, 3), q_dtype), jnp.ones((16, 5),
                                                               v_dtype),
                          hash_key=KEY, **KW)


@pytest.mark.parametrize('key,match', [
    (0, r'hash_key must be a PRNG key .* got int'),
    (jnp.zeros(2, jnp.float32), r'hash_key must be a PRNG key .* got '
     r'float32\[2\]'),
    (jax.random.split(KEY, 3), r'hash_key must be a PRNG key .* got '
     r'uint32\[3, 2\]; use jax.vmap'),
    (jax.random.split(jax.random.key(0), 3), r'hash_key must be a single '
     r'PRNG key, got a key array of shape \(3,\)'),
])
def test_bad_keys_are_rejected(key, match):
  q, v = _qv()
  with pytest.raises(ValueError, match=match):
    lsh_jax.lsh_attention(q, v, hash_key=key, **KW)


def test_typed_and_raw_keys_give_the_same_result():
  """jax.random.key(0) and PRNGKey(0) hold the same bits: same hash."""
  q, v = _qv()
  np.testing.assert_array_equal(
      lsh_jax.lsh_attention(q, v, hash_key=jax.random.key(0), **KW),
      lsh_jax.lsh_attention(q, v, hash_key=KEY, **KW))


def test_errors_surface_before_tracing_under_jit_and_vmap():
  q, v = _qv()
  bad = jax.jit(lambda q, v: lsh_jax.lsh_attention(q, v, hash_key=KEY,
                                                   n_buckets=5, n_hashes=2,
                                                   chunk_len=4))
  with pytest.raises(ValueError, match='n_buckets must be an even int'):
    bad(q, v)
  with pytest.raises(ValueError, match='mask must have shape'):
    jax.vmap(lambda q, v: lsh_jax.lsh_attention(
        q, v, hash_key=KEY, mask=jnp.ones(3, bool), **KW))(q[None], v[None])


def test_buckets_argument_is_checked():
  q, v = _qv()
  with pytest.raises(ValueError, match=r'buckets must have shape '
                     r'\[n_hashes, 16\], got \(32,\)'):
    lsh_jax.lsh_attention_from_buckets(q, v, jnp.zeros(32, jnp.int32),
                                       chunk_len=4)
  with pytest.raises(ValueError, match=r'buckets must have shape '
                     r'\[n_hashes, 16\], got \(0, 16\)'):
    lsh_jax.lsh_attention_from_buckets(q, v, jnp.zeros((0, 16), jnp.int32),
                                       chunk_len=4)
  with pytest.raises(ValueError, match='buckets must be integers'):
    lsh_jax.lsh_attention_from_buckets(q, v, jnp.zeros((2, 16)), chunk_len=4)
  with pytest.raises(ValueError, match='v must have the same length as q'):
    lsh_jax.lsh_attention_from_buckets(q, v[:8], jnp.zeros((2, 16), jnp.int32),
                                       chunk_len=4)


def test_hash_vectors_checks_its_arguments():
  with pytest.raises(ValueError, match='vecs must be a 2-D array'):
    lsh_jax.hash_vectors(jnp.ones(5), hash_key=KEY, n_buckets=4, n_hashes=2)
  with pytest.raises(ValueError, match='needs n_buckets'):
    lsh_jax.hash_vectors(jnp.ones((5, 2)), hash_key=KEY, n_buckets=None,
                         n_hashes=2)


def test_from_buckets_equals_lsh_attention():
  q, v = _qv()
  buckets = lsh_jax.hash_vectors(q, hash_key=KEY, n_buckets=4, n_hashes=2)
  offsets = 4 * jnp.arange(2)[:, None]  # Trax-style offsets change nothing
  for b in (buckets, buckets + offsets):
    got = lsh_jax.lsh_attention_from_buckets(q, v, b, chunk_len=4)
    np.testing.assert_array_equal(
        got, lsh_jax.lsh_attention(q, v, hash_key=KEY, **KW))


def test_vmap_over_batch_and_heads_equals_a_loop():
  batch, heads, length = 2, 3, 16
  keys = jax.random.split(KEY, 3)
  q = jax.random.normal(keys[0], (batch, heads, length, 3))
  v = jax.random.normal(keys[1], (batch, heads, length, 5))
  rngs = jax.random.split(keys[2], batch * heads).reshape(batch, heads, 2)
  attend = lambda q, v, r: lsh_jax.lsh_attention(q, v, hash_key=r,
                                                 causal=True, **KW)
  got = jax.jit(jax.vmap(jax.vmap(attend)))(q, v, rngs)
  for b in range(batch):
    for h in range(heads):
      np.testing.assert_allclose(got[b, h], attend(q[b, h], v[b, h],
                                                   rngs[b, h]),
                                 rtol=1e-6, atol=1e-6)


def test_same_key_is_deterministic_jit_or_not():
  q, v = _qv()
  first = lsh_jax.lsh_attention(q, v, hash_key=KEY, **KW)
  np.testing.assert_array_equal(
      first, lsh_jax.lsh_attention(q, v, hash_key=KEY, **KW))
  with jax.disable_jit():
    eager = lsh_jax.lsh_attention(q, v, hash_key=KEY, **KW)
  np.testing.assert_allclose(eager, first, rtol=1e-6, atol=1e-6)
  other = lsh_jax.hash_vectors(q, hash_key=jax.random.PRNGKey(1), n_buckets=4,
                               n_hashes=2)
  assert not np.array_equal(
      other, lsh_jax.hash_vectors(q, hash_key=KEY, n_buckets=4, n_hashes=2))


def test_second_call_with_same_shapes_does_not_retrace(monkeypatch):
  traces = []
  real = attention._attend_buckets

  def counting(*args, **kwargs):
    traces.append(1)
    return real(*args, **kwargs)

  monkeypatch.setattr(attention, '_attend_buckets', counting)
  jax.clear_caches()
  q, v = random_qv(1, 24, 7, 2)  # shapes no other test uses
  lsh_jax.lsh_attention(q, v, hash_key=KEY, n_buckets=4, n_hashes=3,
                        chunk_len=8)
  q2, v2 = random_qv(2, 24, 7, 2)
  lsh_jax.lsh_attention(q2, v2, hash_key=jax.random.PRNGKey(5), n_buckets=4,
                        n_hashes=3, chunk_len=8)
  assert len(traces) == 1
  lsh_jax.lsh_attention(q2, v2, hash_key=KEY, n_buckets=4, n_hashes=2,
                        chunk_len=8)
  assert len(traces) == 2  # a new static setting compiles once more


@pytest.mark.parametrize('causal,padded', [(False, False), (True, True)])
def test_gradients_match_finite_differences(causal, padded):
  """Every row of d loss/dq and d loss/dv against a central difference
  along a random direction within that row (expected: the difference).

  Causal position 0 sees only itself (docs/algorithm.md §5, float32
  caveat): its rows at SELF_ONLY_TOL. Every other row at the noise of a
  float32 central difference with eps=1e-3 (measured <= 1.1e-3 absolute).
  """
  q, v = _qv()
  mask = jnp.arange(16) % 5 != 2 if padded else None
  f = lambda q, v: lsh_jax.lsh_attention(
      q, v, hash_key=KEY, n_buckets=4, n_hashes=3, chunk_len=4,
      n_chunks_after=1, causal=causal, mask=mask)
  rng = np.random.default_rng(0)
  ct = jnp.asarray(rng.normal(size=(16, 5)), jnp.float32)
  loss = jax.jit(lambda q, v: jnp.vdot(f(q, v), ct))
  grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(q, v)
  # A finite-difference step that moved a token to another bucket would
  # break the comparison loudly; eps is far below these inputs' margins.
  eps = 1e-3
  for arg, (x, grad) in enumerate(zip((q, v), grads)):
    numeric, analytic = [], []
    for row in range(x.shape[0]):
      direction = np.zeros(x.shape, np.float32)
      direction[row] = rng.normal(size=x.shape[1])
      step = [q, v]
      step[arg] = x + eps * direction
      back = [q, v]
      back[arg] = x - eps * direction
      numeric.append((float(loss(*step)) - float(loss(*back))) / (2 * eps))
      analytic.append(float(jnp.vdot(grad, direction)))
    assert_rows_close(numeric, analytic, rtol=2e-3, atol=3e-3,
                      self_only_rows=[0] if causal else [],
                      err_msg='dq' if arg == 0 else 'dv')


def test_undo_sort_gradient_is_a_gather_not_a_scatter():
  x = jax.random.normal(KEY, (16, 3))
  sticker, undo = lsh_jax.core.sort_buckets(
      lsh_jax.hash_vectors(x, hash_key=KEY, n_buckets=4, n_hashes=1))
  loss = lambda x: jnp.sum(jnp.sin(sorting.undo_sort(x, undo[0], sticker[0])))
  hlo = jax.jit(jax.grad(loss)).lower(x).as_text()
  assert 'scatter' not in hlo and 'gather' in hlo
  expected = jnp.cos(x[undo[0]])[sticker[0]]  # chain rule by hand
  np.testing.assert_allclose(jax.grad(loss)(x), expected, rtol=1e-6)


def test_sort_buckets_orders_by_bucket_then_position():
  buckets = jnp.array([[2, 0, 2, 1, 0, 1], [1, 1, 1, 0, 0, 0]])
  sticker, undo = lsh_jax.core.sort_buckets(buckets)
  # By hand: stable order of positions by bucket.
  np.testing.assert_array_equal(sticker, [[1, 4, 3, 5, 0, 2],
                                          [3, 4, 5, 0, 1, 2]])
  for h in range(2):
    np.testing.assert_array_equal(np.asarray(sticker[h])[np.asarray(undo[h])],
                                  np.arange(6))


def test_full_attention_checks_and_matches_softmax_by_hand():
  q, v = _qv(8, 2, 3)
  keys = q / jnp.sqrt(jnp.mean(q**2, -1, keepdims=True) + 1e-6) / jnp.sqrt(2.)
  dots = q @ keys.T - 1e5 * jnp.eye(8)
  expected = jax.nn.softmax(dots, -1) @ v
  np.testing.assert_allclose(lsh_jax.full_attention(q, v), expected,
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='v must have the same length as q'):
    lsh_jax.full_attention(q, v[:4])


@pytest.mark.parametrize('before,after,causal', [(1, 0, False), (2, 1, True)])
def test_chunk_blocks_do_not_change_results(before, after, causal):
  """Processing query chunks B at a time (lax.map) equals all at once."""
  from lsh_jax.core import chunked
  from lsh_jax.core import rounds
  n_rounds, length = 3, 96  # 12 chunks of 8 per round
  q, v = _qv(length, 3, 5)
  sticker, undo = lsh_jax.core.sort_buckets(
      lsh_jax.hash_vectors(q, hash_key=KEY, n_buckets=6, n_hashes=n_rounds))
  results = []
  for block in (None, 1, 3, 12):
    one_round = functools.partial(
        rounds.attend_round, q=q, keys=chunked.normalize_keys(q), v=v,
        mask=jnp.arange(length) % 5 != 1, sticker=sticker, undo=undo,
        chunk_len=8, n_chunks_before=before, n_chunks_after=after,
        causal=causal, chunks_per_block=block)
    results.append(jax.jit(jax.vmap(one_round))(jnp.arange(n_rounds)))
  for o, lse in results[1:]:
    np.testing.assert_allclose(o, results[0][0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(lse, results[0][1], rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match=r'chunks_per_block \(5\) must divide'):
    one_round(0, chunks_per_block=5)


def test_chunks_per_block_whole_round_up_to_2_19_logits():
  """The rule in schedule.py's comments, at chunk 64 with one chunk back
  (8,192 logits a chunk): a whole round's logits up to 2**19 in one step
  (1K and 4K in turn, 1K x 4 at once), else blocks of <= 2**15 logits."""
  per_chunk = 64 * 128
  assert schedule.chunks_per_block(1, 16, per_chunk) == 16  # 1K, in turn
  assert schedule.chunks_per_block(1, 64, per_chunk) == 64  # 4K
  assert schedule.chunks_per_block(4, 16, per_chunk) == 16  # 1K x 4 at once
  assert schedule.chunks_per_block(1, 128, per_chunk) == 4  # 8K: 2**15
  assert schedule.chunks_per_block(1, 1024, per_chunk) == 4  # 64K
  assert schedule.chunks_per_block(1, 129, per_chunk) == 3  # a divisor


@pytest.mark.parametrize('causal,padded', [(False, False), (True, True)])
def test_sequential_rounds_give_the_same_results(causal, padded):
  """lax.map over rounds (memory-bounded) equals vmap, values and grads."""
  q, v = _qv(32, 3, 5)
  kwargs = dict(n_buckets=4, n_hashes=3, chunk_len=8, n_chunks_before=1,
                n_chunks_after=1, causal=causal,
                mask=jnp.arange(32) % 6 != 2 if padded else None)
  loss = lambda q, v, seq: jnp.sum(jnp.sin(lsh_jax.lsh_attention(
      q, v, hash_key=KEY, sequential_rounds=seq, **kwargs)))
  np.testing.assert_allclose(
      lsh_jax.lsh_attention(q, v, hash_key=KEY, sequential_rounds=True,
                            **kwargs),
      lsh_jax.lsh_attention(q, v, hash_key=KEY, **kwargs), rtol=1e-6,
      atol=1e-6)
  for a, b in zip(jax.grad(loss, argnums=(0, 1))(q, v, True),
                  jax.grad(loss, argnums=(0, 1))(q, v, False)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_automatic_rounds_schedule(monkeypatch):
  """None picks by R * L; the automatic choice gives the same results."""
  assert not schedule.round_schedule(None, 4, 128)
  assert schedule.round_schedule(None, 4, 256)
  assert not schedule.round_schedule(None, 1, 65536)
  assert schedule.round_schedule(None, 8, 2**20)
  assert schedule.round_schedule(True, 2, 8)
  assert not schedule.round_schedule(False, 8, 2**20)
  q, v = _qv(32, 3, 5)
  kwargs = dict(n_buckets=4, n_hashes=3, chunk_len=8, n_chunks_before=1,
                n_chunks_after=1, causal=True)
  loss = lambda q, v, seq: jnp.sum(jnp.sin(lsh_jax.lsh_attention(
      q, v, hash_key=KEY, sequential_rounds=seq, **kwargs)))
  want = jax.grad(loss, argnums=(0, 1))(q, v, False)
  # Here 96 token-rounds: lower the threshold to take the sequential path,
  # compiled afresh.
  monkeypatch.setattr(schedule, '_SEQUENTIAL_FROM', 1)
  jax.clear_caches()
  try:
    assert schedule.round_schedule(None, 3, 32)
    got = jax.grad(loss, argnums=(0, 1))(q, v, None)
  finally:
    jax.clear_caches()
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_full_attention_with_separate_keys_matches_softmax_by_hand():
  """Separate keys: k / sqrt(D), no normalisation, no exclude-self."""
  q, v = _qv(8, 2, 3)
  k = jax.random.normal(jax.random.PRNGKey(9), (8, 2))
  dots = q @ k.T / jnp.sqrt(2.) - 1e9 * jnp.triu(jnp.ones((8, 8)), 1)
  expected = jax.nn.softmax(dots, -1) @ v
  np.testing.assert_allclose(lsh_jax.full_attention(q, v, k=k, causal=True),
                             expected, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match=r'k must have the shape of q'):
    lsh_jax.full_attention(q, v, k=k[:, :1])


def test_from_buckets_bound_changes_nothing_but_speed():
  q, v = _qv()
  buckets = lsh_jax.hash_vectors(q, hash_key=KEY, n_buckets=4, n_hashes=2)
  np.testing.assert_array_equal(
      lsh_jax.lsh_attention_from_buckets(q, v, buckets, chunk_len=4, n_ids=4),
      lsh_jax.lsh_attention_from_buckets(q, v, buckets, chunk_len=4))
  with pytest.raises(ValueError, match='n_ids must be >= 1'):
    lsh_jax.lsh_attention_from_buckets(q, v, buckets, chunk_len=4, n_ids=0)


@pytest.mark.parametrize('dtype,atol', [
    # Half-precision outputs are rounded once at the end: bf16 keeps 8
    # significant bits (~4e-3 relative), fp16 11 bits (~5e-4).
    (jnp.bfloat16, 2e-2), (jnp.float16, 3e-3)])
def test_half_precision_inputs_compute_in_float32(dtype, atol):
  """Output dtype follows the inputs; the expected value is the float32
  pipeline on the same (rounded) inputs."""
  q, v = _qv(32, 4, 3)
  q, v = q.astype(dtype), v.astype(dtype)
  kwargs = dict(n_buckets=4, n_hashes=3, chunk_len=8, causal=True,
                mask=jnp.arange(32) % 7 != 3)
  got = lsh_jax.lsh_attention(q, v, hash_key=KEY, **kwargs)
  assert got.dtype == dtype
  expected = lsh_jax.lsh_attention(q.astype(jnp.float32),
                                   v.astype(jnp.float32), hash_key=KEY,
                                   **kwargs)
  np.testing.assert_allclose(got.astype(jnp.float32), expected, rtol=0,
                             atol=atol)
  grads = jax.grad(lambda q: jnp.sum(lsh_jax.lsh_attention(
      q, v, hash_key=KEY, **kwargs).astype(jnp.float32)))(q)
  assert grads.dtype == dtype and bool(jnp.all(jnp.isfinite(grads)))


def test_all_padding_gives_zeros_not_nan():
  q, v = _qv()
  mask = jnp.zeros(16, bool)
  for f in (lambda q: lsh_jax.lsh_attention(q, v, hash_key=KEY, mask=mask,
                                            **KW),
            lambda q: lsh_jax.full_attention(q, v, mask=mask)):
    np.testing.assert_array_equal(f(q), jnp.zeros((16, 5)))
    assert bool(jnp.all(jnp.isfinite(jax.grad(lambda q: f(q).sum())(q))))


def test_hash_token_blocks_and_ties_match_argmax_of_the_concatenation():
  """Long inputs hash in token blocks with plain reductions; same buckets.

  Integer-valued q and rotations make exact ties common (also between r
  and -r), where the first occurrence in concat([r, -r]) must win.
  """
  length, depth = 3 * hashing._TOKENS_PER_BLOCK, 4
  q = jax.random.randint(jax.random.PRNGKey(3), (length, depth), -2, 3
                         ).astype(jnp.float32)
  rotations = jax.random.randint(jax.random.PRNGKey(4), (depth, 3, 5), -1, 2
                                 ).astype(jnp.float32)
  got = lsh_jax.core.hash_with_rotations(q, rotations, [4, 6])
  rotated = jnp.einsum('tf,fhb->htb', q, rotations)  # [R, L, 5]
  first = jnp.argmax(jnp.concatenate([rotated[..., :2], -rotated[..., :2]],
                                     -1), -1)
  second = jnp.argmax(jnp.concatenate([rotated[..., 2:], -rotated[..., 2:]],
                                      -1), -1)
  np.testing.assert_array_equal(got, first + 4 * second)
