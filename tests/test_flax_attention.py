"""lsh_jax.flax: the NNX modules LSHSelfAttention and SelfAttention.

Expected values: `lsh_jax.lsh_self_attention` / `full_attention` applied to
the module's own projections (computed here with the module's Linear
layers), and the dense twin where one chunk covers the sequence (every
round then sees every token). Sizes differ from each other (B=3, T=24,
F=12, N=2, H=4, Hv=3, out 10) so a swapped axis cannot pass.
"""
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lsh_jax
from lsh_jax.flax import LSHSelfAttention
from lsh_jax.flax import SelfAttention

B, T, F, N = 3, 24, 12, 2
SIZES = dict(qk_features=8, v_features=6, out_features=10)
LSH = dict(n_hashes=2, n_buckets=4, chunk_len=8)


def _x(seed=1, shape=(B, T, F)):
  return jax.random.normal(jax.random.PRNGKey(seed), shape)


def _lsh(seed=0, **kwargs):
  return LSHSelfAttention(N, F, **dict(SIZES, **LSH, **kwargs),
                          rngs=nnx.Rngs(seed))


def test_parameter_and_output_shapes():
  module = _lsh(causal=True)
  shapes = jax.tree.map(jnp.shape, nnx.to_pure_dict(nnx.state(module,
                                                               nnx.Param)))
  assert shapes == {
      'qk': {'kernel': (F, N, 4), 'bias': (N, 4)},
      'value': {'kernel': (F, N, 3), 'bias': (N, 3)},
      'out': {'kernel': (N, 3, 10), 'bias': (10,)}}
  assert module(_x()).shape == (B, T, 10)
  assert module(_x()[0]).shape == (T, 10)  # one sequence [T, F]
  dense = SelfAttention(N, F, **SIZES, rngs=nnx.Rngs(0))
  assert jax.tree.map(jnp.shape, nnx.to_pure_dict(
      nnx.state(dense, nnx.Param))) == shapes


@pytest.mark.parametrize('causal,masked', [(False, False), (True, True)])
def test_output_equals_lsh_self_attention_of_its_projections(causal, masked):
  module = _lsh(causal=causal, n_chunks_after=1)
  x = _x()
  mask = (jnp.arange(T)[None] < jnp.array([[T], [T - 5], [T - 11]])
          if masked else None)
  got = module(x, mask, deterministic=True)
  attended = lsh_jax.lsh_self_attention(
      module.qk(x), module.value(x), hash_key=module.hash_key[...],
      causal=causal, mask=mask, n_chunks_after=1, **LSH)
  expected = module.out(attended)
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('causal,masked', [(False, True), (True, False)])
def test_dense_twin_equals_lsh_when_one_chunk_covers_the_sequence(causal,
                                                                  masked):
  lsh = LSHSelfAttention(N, F, **SIZES, n_hashes=3, chunk_len=T,
                         n_chunks_before=0, causal=causal, rngs=nnx.Rngs(0))
  dense = SelfAttention(N, F, **SIZES, causal=causal, rngs=nnx.Rngs(7))
  nnx.update(dense, nnx.state(lsh, nnx.Param))  # the documented recipe
  x = _x()
  mask = jnp.arange(T) % 5 != 1 if masked else None
  got, expected = lsh(x, mask), dense(x, mask)
  # docs/algorithm.md §5 float32 caveat: a causal query at position 0 sees
  # only itself, accurate to ~1e-2; every other query to ~1e-5.
  start = 1 if causal else 0
  np.testing.assert_allclose(got[:, start:], expected[:, start:], rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(got[:, :start], expected[:, :start], atol=1e-2)


def test_dense_twin_equals_full_attention_of_its_projections():
  dense = SelfAttention(N, F, **SIZES, causal=True, rngs=nnx.Rngs(0))
  x = _x()
  q, v = dense.qk(x), dense.value(x)
  heads = jnp.stack([jnp.stack([
      lsh_jax.full_attention(q[b, :, n], v[b, :, n], causal=True)
      for n in range(N)], axis=1) for b in range(B)])
  np.testing.assert_allclose(dense(x), dense.out(heads), rtol=1e-6,
                             atol=1e-6)


def test_nnx_jit_and_split_merge_round_trip():
  module = _lsh(causal=True)
  module.eval()
  x = _x()
  eager = module(x)
  np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(module, x), eager,
                             rtol=1e-6, atol=1e-6)
  graphdef, state = nnx.split(module)
  restored = nnx.merge(graphdef, state)
  np.testing.assert_array_equal(restored(x), eager)


def test_nnx_grad_matches_the_functional_gradient():
  module = _lsh(causal=True)
  module.eval()
  x = _x()
  loss = lambda m: jnp.sum(jnp.sin(m(x)))
  grads = nnx.grad(loss)(module)
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)
  expected = jax.grad(lambda p: loss(nnx.merge(graphdef, p, rest)))(params)
  flat_got = jax.tree.leaves(nnx.to_pure_dict(grads))
  flat_expected = jax.tree.leaves(nnx.to_pure_dict(expected))
  assert len(flat_got) == 6
  for g, e in zip(flat_got, flat_expected):
    np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(g))) > 0


def test_training_rehashes_every_call_evaluation_is_fixed():
  module = _lsh()
  x = _x()
  first, second = module(x), module(x)  # deterministic=False by default
  assert float(jnp.max(jnp.abs(first - second))) > 1e-3
  module.eval()
  fixed = module(x)
  np.testing.assert_array_equal(module(x), fixed)
  # A per-call override still draws a fresh hash.
  assert float(jnp.max(jnp.abs(module(x, deterministic=False) - fixed))) > 1e-3


def test_same_rngs_seed_gives_the_same_outputs():
  x = _x()
  a, b = _lsh(seed=4), _lsh(seed=4)
  for _ in range(2):  # the streams advance in step
    np.testing.assert_array_equal(a(x), b(x))
  c = _lsh(seed=5)
  assert float(jnp.max(jnp.abs(a(x) - c(x)))) > 1e-3


def test_lsh_stream_draws_the_hash_keys():
  x = _x()
  a = LSHSelfAttention(N, F, **SIZES, **LSH, rngs=nnx.Rngs(params=0, hash=1))
  b = LSHSelfAttention(N, F, **SIZES, **LSH, rngs=nnx.Rngs(params=0, hash=2))
  for leaf_a, leaf_b in zip(jax.tree.leaves(nnx.state(a, nnx.Param)),
                            jax.tree.leaves(nnx.state(b, nnx.Param))):
    np.testing.assert_array_equal(leaf_a, leaf_b)  # same parameters
  assert float(jnp.max(jnp.abs(a(x, deterministic=True) -
                               b(x, deterministic=True)))) > 1e-3
  # An explicit stream at call time gives a reproducible hash.
  np.testing.assert_array_equal(a(x, rngs=nnx.Rngs(hash=9)),
                                b(x, rngs=nnx.Rngs(hash=9)))


def test_dropout_only_in_training():
  module = _lsh(dropout_rate=0.5, attention_dropout=0.2)
  x = _x()
  module.eval()
  evaluated = module(x)
  module.train()
  trained = module(x, rngs=nnx.Rngs(hash=0, dropout=1))
  same_hash = module(x, rngs=nnx.Rngs(hash=0, dropout=1))
  np.testing.assert_array_equal(trained, same_hash)  # reproducible draws
  undropped = module(x, deterministic=True, rngs=nnx.Rngs(hash=0))
  assert float(jnp.max(jnp.abs(trained - undropped))) > 1e-3
  assert evaluated.shape == trained.shape
  # Output dropout: one flag per feature; dropped features are exactly the
  # output bias (zero at init).
  dropped = jnp.all(trained == 0, axis=(0, 1))
  assert 0 < int(jnp.sum(dropped)) < 10


def test_dense_attention_dropout_drops_probabilities_per_head():
  # Expected: full_attention's computation with the [T, T] keep mask of
  # each (example, head) drawn from head_keys, as the module documents.
  module = SelfAttention(N, F, **SIZES, causal=True, attention_dropout=0.3,
                         rngs=nnx.Rngs(0))
  x = _x()
  got = module(x, rngs=nnx.Rngs(dropout=4))
  key = nnx.Rngs(dropout=4)['dropout']()
  keys = lsh_jax.core.head_keys(key, B, N)
  q, v = module.qk(x), module.value(x)
  heads = np.zeros((B, T, N, 3), np.float32)
  for b in range(B):
    for n in range(N):
      keep = jax.random.bernoulli(keys[b, n], 0.7, (T, T)) / 0.7
      heads[b, :, n] = lsh_jax.core.dense.dense_attention(
          q[b, :, n], None, v[b, :, n], None, causal=True,
          dropout_multiplier=keep)
  np.testing.assert_allclose(got, module.out(heads), rtol=1e-5, atol=1e-5)
  undropped = module(x, deterministic=True)
  assert float(jnp.max(jnp.abs(got - undropped))) > 1e-3


@pytest.mark.parametrize('make,match', [
    (lambda: LSHSelfAttention(3, F, qk_features=8, rngs=nnx.Rngs(0)),
     r'qk_features \(8\) must be divisible by num_heads \(3\)'),
    (lambda: LSHSelfAttention(N, F, v_features=5, rngs=nnx.Rngs(0)),
     r'v_features \(5\) must be divisible by num_heads \(2\)'),
    (lambda: LSHSelfAttention(N, F, n_hashes=0, rngs=nnx.Rngs(0)),
     r'n_hashes must be >= 1, got 0'),
    (lambda: LSHSelfAttention(N, F, n_buckets=3, rngs=nnx.Rngs(0)),
     r'n_buckets must be an even int >= 2, got 3'),
    (lambda: LSHSelfAttention(N, F, dropout_rate=1.0, rngs=nnx.Rngs(0)),
     r'dropout_rate must be in \[0, 1\), got 1.0'),
    (lambda: _lsh()(_x(shape=(B, T, F + 1))),
     r'x must have shape \[batch, length, 12\] or \[length, 12\] '
     r'\(in_features\), got \(3, 24, 13\)'),
    (lambda: _lsh()(_x(), jnp.ones((B, T, 1), bool)),
     r'mask must have shape \(24,\) or \(3, 24\)'),
])
def test_bad_arguments_raise_clear_errors(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_import_lsh_jax_does_not_import_flax():
  code = ('import sys, lsh_jax; lsh_jax.lsh_self_attention; '
          'assert "flax" not in sys.modules, "flax imported"')
  root = pathlib.Path(__file__).resolve().parent.parent
  result = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, timeout=300, cwd=root,
                          env=dict(os.environ, PYTHONPATH=str(root)))
  assert result.returncode == 0, result.stderr[-2000:]
