"""lsh_self_attention: multi-head LSH attention in jax.nn's [B, T, N, H] layout.

Expected values come from the single-head entry points: `lsh_attention` per
(example, head) with the documented keys `head_keys(key, B, N)[b, n]`, and
`full_attention` per head where one chunk covers the sequence (every round
then sees every token, docs/algorithm.md §6 checks). Dimensions differ from
each other (B=2, T=40, N=3, H=5, Hv=7) so a swapped axis cannot pass.
"""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import jax.test_util as jtu
import numpy as np
import pytest

import lsh_jax
from lsh_jax.core import multihead

ROOT = pathlib.Path(__file__).resolve().parent.parent
B, T, N, H, HV = 2, 40, 3, 5, 7
KEY = jax.random.PRNGKey(3)
SETTINGS = dict(n_buckets=4, n_hashes=2, chunk_len=8)


def _inputs(seed=0, batch=B, length=T, dtype=jnp.float32):
  kq, kv = jax.random.split(jax.random.PRNGKey(seed))
  return (jax.random.normal(kq, (batch, length, N, H), dtype),
          jax.random.normal(kv, (batch, length, N, HV), dtype))


def _mask(length=T):
  return jnp.arange(length)[None, :] < jnp.array([[length], [length - 9]])


def _per_head(q, v, key, mask, dropout_key=None, **settings):
  """lsh_attention on every (example, head) pair, looped in Python."""
  batch, _, heads, _ = q.shape
  keys = multihead.head_keys(key, batch, heads)
  drop = (None if dropout_key is None
          else multihead.head_keys(dropout_key, batch, heads))
  return jnp.stack([jnp.stack([
      lsh_jax.lsh_attention(
          q[b, :, n], v[b, :, n], hash_key=keys[b, n],
          mask=None if mask is None else mask[b],
          dropout_key=None if drop is None else drop[b, n], **settings)
      for n in range(heads)], axis=1) for b in range(batch)])


@pytest.mark.parametrize('settings', [
    dict(SETTINGS),
    dict(n_buckets=None, n_hashes=2, chunk_len=8, causal=True, masked=True),
    # T % C != 0 (padded inside), factorised buckets, a chunk after.
    dict(n_buckets=[2, 4], n_hashes=3, chunk_len=12, n_chunks_before=0,
         n_chunks_after=1, masked=True),
])
def test_equals_lsh_attention_per_head(settings):
  settings = dict(settings)
  mask = _mask() if settings.pop('masked', False) else None
  q, v = _inputs()
  got = lsh_jax.lsh_self_attention(q, v, hash_key=KEY, mask=mask, **settings)
  assert got.shape == (B, T, N, HV) and got.dtype == jnp.float32
  expected = _per_head(q, v, KEY, mask, **settings)
  # Measured: <= 5e-7 (the vmapped program batches the matmuls, so the
  # float32 sums may run in another order than one head's).
  np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize('n_parallel_heads', [1, 4, 5, B * N])
def test_pairs_at_once_do_not_change_results(n_parallel_heads):
  """Pairs one at a time (the CPU default), in steps of 4 or 5 (a remainder
  step), or all vmapped: each equals the per-head loop (expected values:
  `lsh_attention` per pair, as above), masked and with dropout."""
  q, v = _inputs()
  settings = dict(SETTINGS, causal=True, attention_dropout=0.2)
  drop = jax.random.PRNGKey(9)
  got = lsh_jax.lsh_self_attention(q, v, hash_key=KEY, mask=_mask(),
                                   dropout_key=drop,
                                   n_parallel_heads=n_parallel_heads,
                                   **settings)
  expected = _per_head(q, v, KEY, _mask(), dropout_key=drop, **settings)
  np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)


def test_heads_and_examples_hash_independently():
  """Identical heads in identical examples still get different keys."""
  q, v = _inputs(batch=1)
  q = jnp.tile(q[:, :, :1], (2, 1, N, 1))
  v = jnp.tile(v[:, :, :1], (2, 1, N, 1))
  keys = multihead.head_keys(KEY, 2, N)
  buckets = [tuple(np.asarray(lsh_jax.hash_vectors(
      q[b, :, n], hash_key=keys[b, n], n_buckets=8, n_hashes=1)).ravel())
             for b in range(2) for n in range(N)]
  assert len(set(buckets)) == 2 * N  # six different hashes of one input
  out = lsh_jax.lsh_self_attention(q, v, hash_key=KEY, n_buckets=8, n_hashes=1,
                                   chunk_len=8, n_chunks_before=0)
  assert float(jnp.max(jnp.abs(out[0, :, 0] - out[1, :, 1]))) > 1e-3


def test_head_keys_are_split_of_key():
  keys = multihead.head_keys(KEY, B, N)
  flat = jax.random.split(KEY, B * N)
  assert keys.shape == (B, N, 2)
  np.testing.assert_array_equal(keys[1, 2], flat[1 * N + 2])
  typed = multihead.head_keys(jax.random.key(3), B, N)
  assert typed.shape == (B, N)
  np.testing.assert_array_equal(jax.random.key_data(typed[1, 0]),
                                jax.random.key_data(
                                    jax.random.split(jax.random.key(3),
                                                     B * N)[N]))


def test_keys_given_per_pair_are_used_as_they_are():
  """One hash key per (example, head) (what a Trax LSH layer's state
  holds): pair (b, n) hashes with keys[b, n]. Expected: the per-head loop
  with those keys; and keys equal to head_keys(KEY) give the one-key
  output."""
  q, v = _inputs()
  keys = jax.random.split(jax.random.PRNGKey(11), B * N).reshape(B, N, 2)
  got = lsh_jax.lsh_self_attention(q, v, hash_key=keys, causal=True,
                                   **SETTINGS)
  for b in range(B):
    for n in range(N):
      expected = lsh_jax.lsh_attention(q[b, :, n], v[b, :, n],
                                       hash_key=keys[b, n], causal=True,
                                       **SETTINGS)
      np.testing.assert_allclose(got[b, :, n], expected, rtol=0, atol=2e-6)
  np.testing.assert_array_equal(
      lsh_jax.lsh_self_attention(q, v, hash_key=multihead.head_keys(KEY, B, N),
                                 **SETTINGS),
      lsh_jax.lsh_self_attention(q, v, hash_key=KEY, **SETTINGS))
  typed = jax.random.key(2)
  np.testing.assert_array_equal(
      lsh_jax.lsh_self_attention(q[0], v[0],
                                 hash_key=multihead.head_keys(typed, 1, N),
                                 **SETTINGS),
      lsh_jax.lsh_self_attention(q[0], v[0], hash_key=typed, **SETTINGS))


def test_three_dimensional_input_is_one_example():
  q, v = _inputs()
  mask = _mask()
  got = lsh_jax.lsh_self_attention(q[1], v[1], hash_key=KEY, mask=mask[1],
                                   causal=True, **SETTINGS)
  assert got.shape == (T, N, HV)
  batch_of_one = lsh_jax.lsh_self_attention(q[1:], v[1:], hash_key=KEY,
                                            mask=mask[1:], causal=True,
                                            **SETTINGS)
  np.testing.assert_array_equal(got, batch_of_one[0])  # documented keys
  keys = jax.random.split(KEY, N)
  expected = lsh_jax.lsh_attention(q[1, :, 2], v[1, :, 2], hash_key=keys[2],
                                   mask=mask[1], causal=True, **SETTINGS)
  np.testing.assert_allclose(got[:, 2], expected, rtol=0, atol=2e-6)


def test_mask_of_length_t_is_shared_by_examples():
  q, v = _inputs()
  mask = jnp.arange(T) % 7 != 3
  got = lsh_jax.lsh_self_attention(q, v, hash_key=KEY, mask=mask, **SETTINGS)
  tiled = lsh_jax.lsh_self_attention(q, v, hash_key=KEY,
                                     mask=jnp.tile(mask, (B, 1)), **SETTINGS)
  np.testing.assert_array_equal(got, tiled)
  assert bool(jnp.all(got[:, 3] == 0))  # masked positions are zeros


@pytest.mark.parametrize('causal,masked', [(False, False), (True, True)])
def test_one_chunk_equals_full_attention_per_head(causal, masked):
  q, v = _inputs()
  mask = _mask() if masked else None
  got = lsh_jax.lsh_self_attention(q, v, hash_key=KEY, n_buckets=4, n_hashes=3,
                                   chunk_len=T, n_chunks_before=0,
                                   causal=causal, mask=mask)
  expected = jnp.stack([jnp.stack([
      lsh_jax.full_attention(q[b, :, n], v[b, :, n], causal=causal,
                             mask=None if mask is None else mask[b])
      for n in range(N)], axis=1) for b in range(B)])
  # docs/algorithm.md §5 float32 caveat: a causal query at position 0 sees
  # only itself (logit -1e5), accurate to ~1e-2; every other query ~1e-5.
  start = 1 if causal else 0
  np.testing.assert_allclose(got[:, start:], expected[:, start:], rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(got[:, :start], expected[:, :start], atol=1e-2)


def test_gradients_match_finite_differences():
  q, v = _inputs(batch=1, length=16)
  mask = jnp.arange(16)[None] < 13
  f = lambda q, v: lsh_jax.lsh_self_attention(
      q, v, hash_key=KEY, n_buckets=4, n_hashes=2, chunk_len=4,
      n_chunks_after=1, causal=True, mask=mask)
  # As tests/test_core_api.py: float32 central differences with eps = 1e-3
  # (far below the hash margins of these inputs, so no token changes
  # bucket); tolerance 2e-2 for float32 difference quotients.
  jtu.check_grads(f, (q, v), order=1, modes=['rev'], eps=1e-3, atol=2e-2,
                  rtol=2e-2)


def test_composes_with_jit_grad_and_vmap():
  q, v = _inputs()
  f = lambda q, v: lsh_jax.lsh_self_attention(q, v, hash_key=KEY, causal=True,
                                              **SETTINGS)
  np.testing.assert_array_equal(jax.jit(f)(q, v), f(q, v))
  # vmap over a leading axis of two batches equals each batch on its own.
  qs, vs = jnp.stack([q, 2 * q]), jnp.stack([v, -v])
  mapped = jax.vmap(f)(qs, vs)
  for i in range(2):
    np.testing.assert_allclose(mapped[i], f(qs[i], vs[i]), rtol=0, atol=2e-6)
  # The gradient of the multi-head call equals the per-head gradients.
  loss = lambda q, v: jnp.sum(jnp.sin(f(q, v)))
  loss_per_head = lambda q, v: jnp.sum(jnp.sin(_per_head(
      q, v, KEY, None, causal=True, **SETTINGS)))
  got = jax.jit(jax.grad(loss, argnums=(0, 1)))(q, v)
  expected = jax.grad(loss_per_head, argnums=(0, 1))(q, v)
  for g, e in zip(got, expected):
    np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


def test_attention_dropout_uses_per_head_dropout_keys():
  q, v = _inputs()
  drop = jax.random.PRNGKey(11)
  got = lsh_jax.lsh_self_attention(q, v, hash_key=KEY, attention_dropout=0.3,
                                   dropout_key=drop, **SETTINGS)
  expected = _per_head(q, v, KEY, None, dropout_key=drop,
                       attention_dropout=0.3, **SETTINGS)
  np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)
  plain = lsh_jax.lsh_self_attention(q, v, hash_key=KEY, **SETTINGS)
  assert float(jnp.max(jnp.abs(got - plain))) > 1e-2


def test_half_precision_in_half_precision_out():
  q, v = _inputs(dtype=jnp.bfloat16)
  got = lsh_jax.lsh_self_attention(q, v, hash_key=KEY, **SETTINGS)
  assert got.dtype == jnp.bfloat16
  expected = _per_head(q, v, KEY, None, **SETTINGS)
  np.testing.assert_array_equal(got.astype(jnp.float32),
                                expected.astype(jnp.float32))


def test_one_compilation_per_static_configuration():
  # pylint: disable=protected-access
  compiled = multihead._lsh_self_attention
  q, v = _inputs(length=24)  # a length no other test uses
  before = compiled._cache_size()
  lsh_jax.lsh_self_attention(q, v, hash_key=KEY, **SETTINGS)
  lsh_jax.lsh_self_attention(2 * q, v, hash_key=jax.random.PRNGKey(9),
                             **SETTINGS)
  assert compiled._cache_size() == before + 1
  lsh_jax.lsh_self_attention(q, v, hash_key=KEY, **dict(SETTINGS, n_hashes=3))
  assert compiled._cache_size() == before + 2


@pytest.mark.parametrize('q_shape,v_shape,mask_shape,match', [
    ((T, H), (T, HV), None, r'query must be a 4-D array \[batch, length, '
     r'heads, depth\] or a 3-D array \[length, heads, depth\], got shape '
     r'\(40, 5\)'),
    ((B, T, N, H), (B, T, N), None, r'value must have shape \(2, 40, 3, '
     r'depth\) to match query'),
    ((B, T, N, H), (B, T, 2, HV), None, r'value must have shape'),
    ((B, 0, N, H), (B, 0, N, HV), None, r'query must have every dimension '
     r'>= 1, got shape \(2, 0, 3, 5\)'),
    ((B, T, N, H), (B, T, N, HV), (B, T, N), r'mask must have shape \(40,\) '
     r'or \(2, 40\) \(one flag per token, shared by the heads\), got '
     r'\(2, 40, 3\)'),
    ((T, N, H), (T, N, HV), (B, T), r'mask must have shape \(40,\) \(one '
     r'flag'),
])
def test_bad_shapes_raise_clear_errors(q_shape, v_shape, mask_shape, match):
  mask = None if mask_shape is None else jnp.ones(mask_shape, bool)
  with pytest.raises(ValueError, match=match):
    lsh_jax.lsh_self_attention(jnp.ones(q_shape), jnp.ones(v_shape),
                               hash_key=KEY, mask=mask, **SETTINGS)


@pytest.mark.parametrize('change,match', [
    (dict(n_hashes=0), r'n_hashes must be >= 1, got 0'),
    (dict(chunk_len=0), r'chunk_len must be >= 1, got 0'),
    (dict(n_buckets=5), r'n_buckets must be an even int >= 2, got 5'),
    (dict(n_chunks_before=-1), r'n_chunks_before must be >= 0, got -1'),
    (dict(mask=jnp.ones((B, T), jnp.int32)), r'mask must be boolean'),
    (dict(attention_dropout=1.0), r'attention_dropout must be in \[0, 1\)'),
    (dict(attention_dropout=0.1), r'dropout_key is required when '
     r'attention_dropout > 0'),
    (dict(attention_dropout=0.1, dropout_key=0.5), r'dropout_key must be a '
     r'PRNG key'),
    (dict(hash_key=jax.random.split(KEY, 2)), r'hash_key must be a PRNG key'),
    (dict(n_parallel_heads=0), r'n_parallel_heads must be >= 1, got 0'),
    (dict(hash_key=jax.random.split(jax.random.key(0), B)), r'hash_key must '
     r'be a single PRNG key, got a key array of shape \(2,\)'),
    (dict(hash_key=jnp.zeros((B, N + 1, 2), jnp.uint32)), r'or one key per '
     r'\(example, head\): keys of shape \(2, 3\), raw uint32\[2, 3, 2\]'),
])
def test_bad_arguments_raise_clear_errors(change, match):
  q, v = _inputs()
  kwargs = dict(SETTINGS, **change)
  kwargs.setdefault('hash_key', KEY)
  with pytest.raises(ValueError, match=match):
    lsh_jax.lsh_self_attention(q, v, **kwargs)


def test_integer_query_is_rejected():
  with pytest.raises(ValueError, match='query must have a floating dtype, '
                     'got int32'):
    lsh_jax.lsh_self_attention(jnp.ones((B, T, N, H), jnp.int32),
                               jnp.ones((B, T, N, HV)), hash_key=KEY,
                               **SETTINGS)


_SHARDED_CHECK = textwrap.dedent('''
    import json, os
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import lsh_jax
    devices = jax.devices()
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    q = jax.random.normal(k[0], (2, 40, 4, 5))
    v = jax.random.normal(k[1], (2, 40, 4, 7))
    mask = jnp.arange(40)[None] < jnp.array([[40], [31]])
    f = jax.jit(lambda q, v, m: lsh_jax.lsh_self_attention(
        q, v, hash_key=k[2], n_buckets=4, n_hashes=2, chunk_len=8,
        causal=True, mask=m))
    one = jax.device_put((q, v, mask), devices[0])
    expected = np.asarray(f(*one))
    mesh = Mesh(np.array(devices).reshape(2, 4), ('batch', 'heads'))
    report = dict(n_devices=len(devices))
    for name, spec in (('batch', P('batch')),
                       ('heads', P(None, None, 'heads'))):
      sharding = NamedSharding(mesh, spec)
      args = (jax.device_put(q, sharding), jax.device_put(v, sharding),
              jax.device_put(mask, NamedSharding(mesh, P(spec[0]))))
      got = f(*args)
      report[name] = dict(
          devices=len(got.sharding.device_set),
          max_diff=float(np.max(np.abs(np.asarray(got) - expected))))
    print('REPORT ' + json.dumps(report))
''')


def test_named_sharding_over_batch_and_heads_equals_one_device():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT))
  result = subprocess.run([sys.executable, '-c', _SHARDED_CHECK], cwd=ROOT,
                          env=env, capture_output=True, text=True,
                          timeout=600)
  reports = [line for line in result.stdout.splitlines()
             if line.startswith('REPORT ')]
  assert result.returncode == 0 and reports, result.stderr[-3000:]
  report = json.loads(reports[-1][len('REPORT '):])
  assert report['n_devices'] == 8
  for name in ('batch', 'heads'):
    assert report[name]['devices'] > 1, report  # really partitioned
    # Each device runs the same per-(example, head) program.
    assert report[name]['max_diff'] <= 1e-6, report
