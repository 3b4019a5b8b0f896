"""Any length, numerical safety and determinism of the public functions.

Where expected values come from:
  * any length: the NumPy oracle (float64, docs/algorithm.md) run on the padded,
    masked input with the rotations the JAX code drew, and `lsh_attention`
    itself run on that padded input (the documented contract: real
    positions get what the padded, masked computation gives);
  * L == 1: derivation (a lone token's only candidate is itself, so its
    output is its own value);
  * half precision: the oracle on the same rounded inputs; the output is
    the float32 result rounded once to the input dtype;
  * edge cases: finiteness of outputs and gradients (no reference needed).
Tolerances: float32 vs oracle 1e-5; self-only queries (causal position 0, a
lone token) 2e-2 (docs/algorithm.md §5 float32 caveat); bfloat16 relative 2**-8
(half an ulp of its 8-bit significand) and float16 2**-11, plus 1e-5.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lsh_jax
from lsh_jax.core import hashing
from lsh_jax import oracle
from lsh_jax.core import padding
from lsh_jax.core import weights
from helpers import hash_margin
from helpers import random_qv

KEY = jax.random.PRNGKey(7)
# Float32 resolves logits near the -1e5 self penalty only to 2**-7.
SELF_ONLY_ATOL = 2e-2
SELF_ONLY_LSE = -1e4


def _padded_oracle(q, v, key, *, n_buckets, n_hashes, chunk_len, mask=None,
                   **kwargs):
  """The oracle on q, v padded to a multiple of chunk_len, masked there.

  Returns (output for the real positions [L, Dv], normal rows bool[L],
  self-only rows bool[L]).
  """
  q = np.asarray(q, np.float64)
  v = np.asarray(v, np.float64)
  length = q.shape[0]
  if n_buckets is None:  # documented: the real length decides
    n_buckets = oracle.auto_n_buckets(length, chunk_len)
  extra = padding.padded_length(length, chunk_len) - length
  valid = np.ones(length, bool) if mask is None else np.asarray(mask)
  qp = np.pad(q, ((0, extra), (0, 0)))
  vp = np.pad(v, ((0, extra), (0, 0)))
  maskp = np.pad(valid, (0, extra))
  rotations = np.asarray(lsh_jax.core.random_rotations(key, q.shape[1], n_buckets,
                                                  n_hashes))
  assert hash_margin(q, rotations, hashing.bucket_factors(n_buckets)) > 1e-4
  out, _, lse = oracle.lsh_attention(
      qp, vp, rotations, n_buckets=n_buckets, n_hashes=n_hashes,
      chunk_len=chunk_len, mask=maskp, return_rounds=True, **kwargs)
  self_only = lse.max(axis=0)[:length] <= SELF_ONLY_LSE
  return out[:length], valid & ~self_only, valid & self_only


ANY_LENGTH = {
    'L=37 C=8 causal after': dict(length=37, chunk_len=8, n_buckets=4,
                                  n_hashes=2, causal=True, n_chunks_after=1),
    'L=50 C=16 factors padded': dict(length=50, chunk_len=16,
                                     n_buckets=[2, 4], n_hashes=2,
                                     padded=True),
    'L=21 C=4 auto buckets, 2 before': dict(
        length=21, chunk_len=4, n_buckets=None, n_hashes=2,
        n_chunks_before=2),
    'C > L causal padded': dict(length=6, chunk_len=8, n_buckets=4,
                                n_hashes=3, causal=True, padded=True),
}


# `make test` runs the first two; the hypothesis campaign draws many more.
LONG_SETTINGS = ('L=50 C=16 factors padded', 'L=21 C=4 auto buckets, 2 before')


@pytest.mark.parametrize('setting', [
    pytest.param(value, id=name, marks=[pytest.mark.long] * (
        name in LONG_SETTINGS)) for name, value in ANY_LENGTH.items()])
def test_any_length_matches_oracle_on_padded_input(setting):
  setting = dict(setting)
  length, padded = setting.pop('length'), setting.pop('padded', False)
  q, v = random_qv(length, length, 5, 3)
  mask = None
  if padded:
    mask = np.arange(length) % 5 != 1
    mask[0] = True
  got = lsh_jax.lsh_attention(q, v, hash_key=KEY, mask=None if mask is None else
                              jnp.asarray(mask), **setting)
  assert got.shape == (length, 3)
  expected, normal, self_only = _padded_oracle(q, v, KEY, mask=mask,
                                               **setting)
  np.testing.assert_allclose(np.asarray(got)[normal], expected[normal],
                             rtol=0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(got)[self_only], expected[self_only],
                             rtol=0, atol=SELF_ONLY_ATOL)
  if mask is not None:
    np.testing.assert_array_equal(np.asarray(got)[~mask], 0)


def test_any_length_is_the_padded_masked_computation_exactly():
  """The contract: pad by hand, mask, strip. n_buckets=None resolves with
  the real length (auto_n_buckets(29, 8) = 6, where the padded length would
  give 8). Same buckets and sort, so equal to a few ulp (the two compiled
  programs fuse the padding differently, not bit for bit)."""
  q, v, kwargs = _determinism_inputs()
  length, mask = q.shape[0], kwargs.pop('mask')
  assert kwargs['n_buckets'] is None
  got = lsh_jax.lsh_attention(q, v, hash_key=KEY, mask=mask, **kwargs)
  qp, vp = jnp.pad(q, ((0, 3), (0, 0))), jnp.pad(v, ((0, 3), (0, 0)))
  by_hand = lsh_jax.lsh_attention(
      qp, vp, hash_key=KEY, mask=jnp.pad(mask, (0, 3)),
      **dict(kwargs, n_buckets=oracle.auto_n_buckets(length, 8)))
  np.testing.assert_allclose(got, by_hand[:length], rtol=1e-6, atol=1e-6)


def test_from_buckets_any_length():
  """Appended positions take the round's largest id and sort last: the same
  as lsh_attention, whose hash gives padding the largest id."""
  q, v, kwargs = _determinism_inputs()
  buckets = lsh_jax.hash_vectors(q, hash_key=KEY, n_buckets=6, n_hashes=3,
                                 mask=kwargs['mask'])
  # Trax-style round offsets and a bound on the ids (6 buckets + the
  # padding id per round): the appended ids stay below the bound.
  offsets = 7 * jnp.arange(3)[:, None]
  got = lsh_jax.lsh_attention_from_buckets(
      q, v, buckets + offsets, n_ids=21,
      **{k: x for k, x in kwargs.items() if k not in ('n_buckets',
                                                      'n_hashes')})
  np.testing.assert_array_equal(got, lsh_jax.lsh_attention(q, v, hash_key=KEY,
                                                           **kwargs))


@pytest.mark.parametrize('chunk_len,before,after,causal', [
    (1, 0, 0, True), pytest.param(128, 2, 1, False, marks=pytest.mark.long)])
def test_single_token_attends_to_itself(chunk_len, before, after, causal):
  """Derivation: with L == 1 the only candidate is the token itself."""
  q, v = random_qv(5, 1, 3, 4)
  got = lsh_jax.lsh_attention(q, v, hash_key=KEY, n_buckets=4, n_hashes=3,
                              chunk_len=chunk_len, n_chunks_before=before,
                              n_chunks_after=after, causal=causal)
  np.testing.assert_allclose(got, v, rtol=0, atol=SELF_ONLY_ATOL)


def test_attention_weights_for_any_length():
  """weights @ v equals lsh_attention (its contract) at a non-multiple L."""
  length = 19
  q, v = random_qv(6, length, 4, 3)
  kwargs = dict(n_buckets=4, n_hashes=2, chunk_len=4, n_chunks_after=1,
                mask=jnp.arange(length) != 5)
  w = weights.attention_weights(q, hash_key=KEY, **kwargs)
  assert w.shape == (length, length)
  np.testing.assert_allclose(w @ v, lsh_jax.lsh_attention(q, v, hash_key=KEY,
                                                          **kwargs),
                             rtol=0, atol=1e-5)
  rows = np.asarray(kwargs['mask'])
  np.testing.assert_allclose(np.asarray(w).sum(1)[rows], 1, atol=1e-5)


def test_nan_and_inf_in_padding_do_not_leak():
  """Masked positions are cleared before attention: garbage there changes
  nothing (0 * inf would otherwise be NaN)."""
  length = 24
  q, v = random_qv(8, length, 4, 3)
  mask = jnp.arange(length) % 4 != 1
  kwargs = dict(n_buckets=4, n_hashes=2, chunk_len=8, n_chunks_after=1,
                mask=mask)
  run = jax.jit(lambda q, v: _values_and_grads(q, v, **kwargs))
  clean, _ = run(q, v)
  bad_q = jnp.where(mask[:, None], q, jnp.nan)
  bad_v = jnp.where(mask[:, None], v, jnp.inf)
  dirty, grads = run(bad_q, bad_v)
  np.testing.assert_array_equal(dirty, clean)
  for g in grads:
    assert np.all(np.isfinite(np.asarray(g)[np.asarray(mask)]))


# Inputs that push the numerics, one example each of a batch (same shapes,
# one compilation): huge query norms (logits ~1e4 * sqrt(D)), every token
# identical (all in one bucket, every logit tied), all-zero queries (the key
# normalisation's epsilon), a sequence that is all padding.
BATCHED_CASES = ['plain', 'query norm 1e4', 'every token identical',
                 'all zero queries', 'all padding']


def _batched_edge_cases(dtype, length=24, depth=4):
  q, v = random_qv(9, length, depth, 3)
  qs = [q, q / jnp.linalg.norm(q, axis=-1, keepdims=True) * 1e4,
        jnp.broadcast_to(q[:1], q.shape), jnp.zeros_like(q), q]
  vs = [v, v, jnp.broadcast_to(v[:1], v.shape), v, v]
  masks = [jnp.ones(length, bool)] * 4 + [jnp.zeros(length, bool)]
  return (jnp.stack(qs).astype(dtype), jnp.stack(vs).astype(dtype),
          jnp.stack(masks))


def _values_and_grads(q, v, mask, **kwargs):
  """(output, (dq, dv)) of sum(sin(output)); one compiled program."""
  def loss(q, v):
    out = lsh_jax.lsh_attention(q, v, hash_key=KEY, mask=mask, **kwargs)
    return jnp.sum(jnp.sin(out.astype(jnp.float32))), out
  (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
      q, v)
  return out, grads


EDGE_KWARGS = dict(n_buckets=4, n_hashes=3, chunk_len=8, n_chunks_after=1,
                   causal=True)


def _assert_finite(dtype, out, grads):
  assert out.dtype == dtype
  assert bool(jnp.all(jnp.isfinite(out)))
  for g in grads:
    assert g.dtype == dtype
    assert bool(jnp.all(jnp.isfinite(g)))


@pytest.mark.parametrize('dtype', [
    jnp.float32, jnp.bfloat16,
    pytest.param(jnp.float16, marks=pytest.mark.long)])
def test_no_nan_or_inf_in_outputs_or_gradients(dtype):
  qs, vs, masks = _batched_edge_cases(dtype)
  run = jax.jit(jax.vmap(lambda q, v, m: _values_and_grads(q, v, m,
                                                           **EDGE_KWARGS)))
  outs, grads = run(qs, vs, masks)
  for i, name in enumerate(BATCHED_CASES):
    _assert_finite(dtype, outs[i], (grads[0][i], grads[1][i]))
  # All padding: zeros (padded queries' outputs are defined as zero).
  np.testing.assert_array_equal(outs[-1].astype(jnp.float32), 0)
  # Every candidate holds the same value: the output is that value.
  np.testing.assert_allclose(outs[2].astype(jnp.float32),
                             vs[2].astype(jnp.float32), rtol=2**-7, atol=1e-5)


@pytest.mark.parametrize('name,length,depth,n_buckets', [
    ('L == 1', 1, 4, 4), ('d == 1', 24, 1, 4),
    pytest.param('more buckets than tokens', 24, 4, 64,
                 marks=pytest.mark.long)])
def test_no_nan_or_inf_at_extreme_shapes(name, length, depth, n_buckets):
  q, v = random_qv(10, length, depth, 3)
  out, grads = jax.jit(lambda q, v: _values_and_grads(
      q, v, None, **dict(EDGE_KWARGS, n_buckets=n_buckets)))(q, v)
  _assert_finite(jnp.float32, out, grads)


@pytest.mark.parametrize('dtype,rtol,length', [
    (jnp.bfloat16, 2**-8, 27),
    pytest.param(jnp.float16, 2**-11, 32, marks=pytest.mark.long)])
def test_half_precision_matches_float32_oracle(dtype, rtol, length):
  """Output in the input dtype, equal to the float64 oracle on the same
  (rounded) inputs up to one final rounding: relative half-ulp of the dtype,
  plus the float32 tolerance."""
  q, v = random_qv(11, length, 6, 4)
  q, v = q.astype(dtype), v.astype(dtype)
  mask = np.arange(length) % 6 != 4
  kwargs = dict(n_buckets=[2, 4], n_hashes=3, chunk_len=8, n_chunks_after=1,
                causal=True)
  got = lsh_jax.lsh_attention(q, v, hash_key=KEY, mask=jnp.asarray(mask),
                              **kwargs)
  assert got.dtype == dtype
  expected, normal, self_only = _padded_oracle(
      q.astype(jnp.float32), v.astype(jnp.float32), KEY, mask=mask, **kwargs)
  got = np.asarray(got.astype(jnp.float32))
  np.testing.assert_allclose(got[normal], expected[normal], rtol=rtol,
                             atol=1e-5)
  np.testing.assert_allclose(got[self_only], expected[self_only], rtol=0,
                             atol=SELF_ONLY_ATOL)


DETERMINISM = dict(n_buckets=None, n_hashes=3, chunk_len=8, n_chunks_after=1,
                   causal=True)


def _determinism_inputs():
  length = 29  # padded inside to 32
  q, v = random_qv(12, length, 5, 3)
  return q, v, dict(DETERMINISM, mask=jnp.arange(length) % 3 != 0)


def test_same_key_is_bit_identical_across_calls_jit_and_vmap():
  """Eager (jax.disable_jit) execution is checked in test_core_api: it
  agrees to ~1e-7, not bit for bit, since op-by-op execution sums in
  another order than XLA's fused program."""
  q, v, kwargs = _determinism_inputs()
  f = lambda q, v: lsh_jax.lsh_attention(q, v, hash_key=KEY, **kwargs)
  first = f(q, v)
  np.testing.assert_array_equal(f(q, v), first)
  np.testing.assert_array_equal(jax.jit(f)(q, v), first)
  batched = jax.jit(jax.vmap(f))
  qs, vs = jnp.stack([q, 2 * q, q]), jnp.stack([v, v, -v])
  out = batched(qs, vs)
  np.testing.assert_array_equal(batched(qs, vs), out)
  # Same q, negated v: the output is linear in v and negation is exact.
  np.testing.assert_array_equal(out[2], -out[0])
  # XLA compiles the batched program differently (its matmuls and fusions
  # may sum in another order): equal to the per-example call to a few ulp.
  np.testing.assert_allclose(out[0], first, rtol=1e-6, atol=1e-6)


def test_a_different_key_changes_the_hash_and_the_output():
  q, v, kwargs = _determinism_inputs()
  keys = jax.random.split(KEY, 4)
  buckets = [np.asarray(lsh_jax.hash_vectors(q, hash_key=k, n_buckets=6,
                                             n_hashes=3)) for k in keys]
  outputs = [np.asarray(lsh_jax.lsh_attention(q, v, hash_key=k, **kwargs))
             for k in keys]
  for i in range(1, 4):
    assert not np.array_equal(buckets[0], buckets[i])
    assert not np.array_equal(outputs[0], outputs[i])


@pytest.mark.long
def test_dropout_is_deterministic_given_its_key():
  q, v, kwargs = _determinism_inputs()
  f = lambda k: lsh_jax.lsh_attention(q, v, hash_key=KEY, attention_dropout=0.3,
                                      dropout_key=k, **kwargs)
  np.testing.assert_array_equal(f(jax.random.PRNGKey(1)),
                                f(jax.random.PRNGKey(1)))
  assert not np.array_equal(f(jax.random.PRNGKey(1)),
                            f(jax.random.PRNGKey(2)))
