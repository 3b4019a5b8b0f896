"""lsh_jax.trax.LSHSelfAttention against Trax 1.4.1's LSHSelfAttention.

Expected values come from Trax's own layer, built with the same arguments
and initialised with the same key, then run on the same inputs with the same
rng (its `pure_fn`, jitted, gradients through its custom backward pass),
except where a test names another source (the lab's printed numbers, an
independent derivation). Padding is kept away from positions 0-1 and padded
positions' outputs are not compared (docs/algorithm.md §3).

Measured (float32, CPU, these cases): outputs within 4.8e-7 of Trax's,
gradients within 2.9e-6 absolute (3.3e-7 of the largest entry); weights and
states bit-identical. With the projections batch-wide (issue 18,
lsh_jax/trax/projected.py): outputs within 3.9e-7, each gradient within
4.8e-7 of its largest entry.
"""
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trax_testing import assert_trees_close
from trax_testing import assert_trees_equal
from trax_testing import init_pair
from trax_testing import run_with_grads
from trax_testing import trax_env  # noqa: F401  (fixture)

OUT_ATOL = 1e-5  # float32, same operations in another order: <= 5e-7 seen
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-5  # <= 2.9e-6 absolute seen

# name: (mode, layer kwargs, (batch, length, d_model), padded lengths or None)
CASES = {
    'lab': ('train', dict(n_heads=3, d_qk=3, d_v=4, chunk_len=8,
                          n_chunks_before=0, n_chunks_after=0, n_hashes=5,
                          n_buckets=4), (1, 8, 5), None),
    'causal_dropout': ('train', dict(
        n_heads=2, d_qk=4, d_v=6, chunk_len=8, n_chunks_before=1,
        n_hashes=2, n_buckets=4, causal=True, attention_dropout=0.2,
        output_dropout=0.1), (2, 32, 7), None),
    'masked_factorised_eval': ('eval', dict(
        n_heads=2, d_qk=5, d_v=3, chunk_len=4, n_chunks_before=1,
        n_chunks_after=1, n_hashes=3, n_buckets=[2, 4], masked=True,
        attention_dropout=0.3, n_parallel_heads=None), (3, 24, 6),
                               (20, 24, 17)),
    'auto_buckets_8_hashes': ('train', dict(
        n_heads=1, d_qk=4, d_v=4, chunk_len=4, n_chunks_before=2,
        n_hashes=8, n_buckets=None, causal=True, max_length_for_buckets=24),
                              (2, 16, 5), None),
    'one_hash_heads_in_pairs': ('eval', dict(
        n_heads=4, d_qk=6, d_v=2, chunk_len=8, n_chunks_before=0,
        n_chunks_after=2, n_hashes=1, n_buckets=6, n_parallel_heads=2),
                                (2, 24, 3), None),
}


def make_inputs(shape, padded_lengths, seed=0):
  x = jax.random.normal(jax.random.PRNGKey(seed), shape)
  if padded_lengths is None:
    return x, np.ones(shape[:2], bool)
  mask = np.arange(shape[1])[None, :] < np.asarray(padded_lengths)[:, None]
  mask[0, 5] = False  # one padded position inside a sequence
  return (x, jnp.asarray(mask)), mask


@pytest.mark.parametrize('case', list(CASES))
def test_matches_trax_outputs_state_and_gradients(trax_env, case):
  mode, kwargs, shape, padded_lengths = CASES[case]
  inputs, valid = make_inputs(shape, padded_lengths)
  trax_layer, our_layer = init_pair(trax_env, 'LSHSelfAttention',
                                    dict(kwargs, mode=mode), inputs)
  assert_trees_equal(our_layer.weights, trax_layer.weights)
  assert_trees_equal(our_layer.state, trax_layer.state)

  rng = jax.random.PRNGKey(3)
  # Padded outputs differ by design: give them no gradient either.
  cotangent = jax.random.normal(jax.random.PRNGKey(4), shape) * valid[..., None]
  expected = run_with_grads(trax_layer, inputs, rng, cotangent)
  got = run_with_grads(our_layer, inputs, rng, cotangent)
  np.testing.assert_allclose(np.asarray(got[0])[valid],
                             np.asarray(expected[0])[valid], rtol=0,
                             atol=OUT_ATOL)
  assert_trees_equal(got[1], expected[1])  # buckets and next hash keys
  assert_trees_close(got[2:], expected[2:], rtol=GRAD_RTOL, atol=GRAD_ATOL)


def test_lab_example_prints_the_lab_output(trax_env, old_threefry):
  """The lab's OurLSHSelfAttention cell (In[18]-[20]); expected values are
  the numbers the lab printed (collected in the project's lab notes)."""
  layer = trax_env.ours.LSHSelfAttention(
      n_heads=3, d_qk=3, d_v=4, causal=False, chunk_len=8, n_chunks_before=0,
      n_chunks_after=0, n_hashes=5, n_buckets=4, use_reference_code=True,
      attention_dropout=0.0, mode='train')
  x = jax.random.uniform(jax.random.PRNGKey(0), (1, 8, 5), dtype=jnp.float32)
  layer.init(trax_env.shapes.signature(x),
             rng=trax_env.fastmath.random.get_prng(1))
  expected = [
      [6.6842824e-01, -1.1364323e-01, -5.4430610e-01, 2.1126242e-01,
       -1.0988623e-02],
      [7.0949769e-01, -1.5455185e-01, -5.9923315e-01, 2.2719440e-01,
       1.3833776e-02],
      [7.1442688e-01, -1.2046628e-01, -5.3956544e-01, 1.7320301e-01,
       -1.6552269e-02],
      [6.7178929e-01, -7.6611102e-02, -5.9399861e-01, 2.1236290e-01,
       7.9482794e-04],
      [7.1518433e-01, -1.1359170e-01, -5.7821894e-01, 2.1304411e-01,
       3.0598268e-02],
      [6.8235350e-01, -9.3979925e-02, -5.5341840e-01, 2.1608177e-01,
       -6.6673756e-04],
      [6.1286640e-01, -8.1027031e-02, -4.8148823e-01, 1.9373313e-01,
       3.1555295e-02],
      [7.2203505e-01, -1.0199660e-01, -5.5215168e-01, 1.7872262e-01,
       -2.2289157e-02]]
  np.testing.assert_allclose(layer(x)[0], expected, rtol=0, atol=1e-6)
  # NumPy inputs work too (Trax's own fast path fails on them under JAX
  # 0.10); a second call hashes with the next key, so compare with Trax.
  trax_layer = trax_env.tl.LSHSelfAttention(
      n_heads=3, d_qk=3, d_v=4, chunk_len=8, n_chunks_before=0,
      n_chunks_after=0, n_hashes=5, n_buckets=4, use_reference_code=True)
  trax_layer.init(trax_env.shapes.signature(x),
                  rng=trax_env.fastmath.random.get_prng(1))
  trax_layer(x)
  np.testing.assert_allclose(layer(np.asarray(x)), trax_layer(x), rtol=0,
                             atol=OUT_ATOL)


def test_per_head_methods_match_trax(trax_env):
  """`hash_vectors` (flat ids with round offsets) and `forward_unbatched`
  (one example, one head) give Trax's values; they are public methods of
  Trax's layer that subclasses such as the lab's override."""
  kwargs = dict(n_heads=1, d_qk=4, d_v=3, chunk_len=4, n_hashes=3,
                n_buckets=[2, 4], causal=True, masked=True,
                attention_dropout=0.2, output_dropout=0.1)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 16, 5))
  mask = jnp.arange(16) % 6 != 5
  trax_layer, layer = init_pair(trax_env, 'LSHSelfAttention', kwargs,
                                (x, mask[None]))
  vecs, key = x[0, :, :4], jax.random.PRNGKey(8)
  assert_trees_equal(layer.hash_vectors(vecs, key, mask),
                     trax_layer.hash_vectors(vecs, key, mask))
  weights = tuple(w[0] for w in layer.weights)
  state = tuple(s[0] for s in layer.state)
  call = lambda l: l.forward_unbatched(x[0], mask, weights=weights,
                                       state=state, rng=jax.random.PRNGKey(2),
                                       update_state=True)
  (got, got_state), (expected, expected_state) = call(layer), call(trax_layer)
  np.testing.assert_allclose(np.asarray(got)[np.asarray(mask)],
                             np.asarray(expected)[np.asarray(mask)], rtol=0,
                             atol=OUT_ATOL)
  assert_trees_equal(got_state, expected_state)


def test_constructor_matches_trax_signature(trax_env):
  from trax.layers.research import efficient_attention  # pylint: disable=import-outside-toplevel
  for name in ('LSHSelfAttention', 'SelfAttention'):
    ours = inspect.signature(getattr(trax_env.ours, name).__init__)
    theirs = inspect.signature(getattr(efficient_attention, name).__init__)
    ours = [(p.name, p.default) for p in ours.parameters.values()]
    theirs = [(p.name, p.default) for p in theirs.parameters.values()]
    # Trax 1.4.1's arguments in its order, then (LSH only) the two of the
    # paper's exact attention that Trax 1.4.1 lacks, defaulting to its
    # behaviour (tests/test_trax_duplicates.py).
    extra = ([('allow_duplicate_attention', True),
              ('attend_across_buckets', True)]
             if name == 'LSHSelfAttention' else [])
    assert ours == theirs + extra


def test_heads_in_blocks_and_autodiff_agree(trax_env):
  """n_parallel_heads only schedules the work, and the custom backward pass
  (recompute from stored buckets) equals plain JAX autodiff
  (use_reference_code=True): expected values are our layer's own, with
  n_parallel_heads=None and the custom backward."""
  kwargs = dict(n_heads=2, d_qk=4, d_v=3, chunk_len=4, n_hashes=2,
                n_buckets=4, causal=True, attention_dropout=0.1)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 5))
  cotangent = jax.random.normal(jax.random.PRNGKey(1), x.shape)
  results = []
  for extra in [dict(n_parallel_heads=None),
                dict(n_parallel_heads=1, use_python_loop=True),
                dict(n_parallel_heads=None, use_reference_code=True)]:
    layer = trax_env.ours.LSHSelfAttention(**kwargs, **extra)
    layer.init(trax_env.shapes.signature(x),
               rng=trax_env.fastmath.random.get_prng(2))
    assert layer.has_backward == (not extra.get('use_reference_code'))
    results.append(run_with_grads(layer, x, jax.random.PRNGKey(3), cotangent))
  for result in results[1:]:
    assert_trees_close(result, results[0], rtol=1e-4, atol=1e-5)


def test_bias_weights_as_trax_and_value_bias_shifts_output(trax_env):
  """bias=True: Trax creates (w_q, w_v, w_o, b_q, b_v) but its forward pass
  cannot run them (it unpacks three weights). Independent derivation: each
  query's attention weights sum to 1, so v + b_v gives o + b_v and the
  output moves by sum over heads of b_v @ w_o."""
  kwargs = dict(n_heads=2, d_qk=3, d_v=4, chunk_len=4, n_hashes=2,
                n_buckets=2, bias=True)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 8, 5))
  trax_layer, layer = init_pair(trax_env, 'LSHSelfAttention', kwargs, x)
  assert_trees_equal(layer.weights, trax_layer.weights)
  assert len(layer.weights) == 5
  state = layer.state
  plain = layer(x)
  w_q, w_v, w_o, b_q, b_v = layer.weights
  b_v = jax.random.normal(jax.random.PRNGKey(9), b_v.shape)
  layer.weights, layer.state = (w_q, w_v, w_o, b_q, b_v), state
  shifted = layer(x)
  np.testing.assert_allclose(shifted - plain,
                             jnp.broadcast_to(jnp.einsum('hv,hvd->d', b_v, w_o),
                                              plain.shape),
                             rtol=0, atol=1e-5)


@pytest.mark.parametrize('kwargs,message', [
    (dict(mode='predict'), "mode='predict' needs causal=True"),
    (dict(mode='training'),
     "mode must be one of 'train', 'eval', 'predict', got 'training'"),
    (dict(n_buckets=5), 'n_buckets must be an even int'),
    (dict(n_buckets=[4, 3]), 'every n_buckets factor'),
    (dict(n_hashes=0), 'n_hashes must be >= 1'),
    (dict(chunk_len=None), 'chunk_len must be a positive int'),
    (dict(n_chunks_before=-1), 'n_chunks_before must be >= 0'),
    (dict(n_heads=4, n_parallel_heads=3), 'n_parallel_heads must be a '
     'multiple or a divisor of n_heads=4'),
    (dict(attention_dropout=1.0), r'attention_dropout must be in \[0, 1\)'),
    (dict(output_dropout='x'), 'output_dropout must be a float'),
    (dict(max_length_for_buckets=0), 'max_length_for_buckets must be >= 1'),
])
def test_constructor_errors(trax_env, kwargs, message):
  with pytest.raises(ValueError, match=message):
    trax_env.ours.LSHSelfAttention(**kwargs)


def test_input_errors(trax_env):
  layer = trax_env.ours.LSHSelfAttention(n_heads=1, d_qk=2, d_v=2,
                                         chunk_len=4, masked=True,
                                         max_length_for_buckets=8)
  x = jnp.ones((2, 8, 3))
  layer.init(trax_env.shapes.signature((x, jnp.ones((2, 8), bool))))
  weights, state, rng = layer.weights, layer.state, layer.rng
  call = lambda inputs: layer.forward_and_or_backward(inputs, weights, state,
                                                      rng)
  with pytest.raises(ValueError, match=r'takes 2 input\(s\), got 1'):
    call(x)
  with pytest.raises(ValueError, match=r'mask must have shape \(2, 8\)'):
    call((x, jnp.ones((2, 7), bool)))
  with pytest.raises(ValueError, match='mask must be boolean'):
    call((x, jnp.ones((2, 8), jnp.float32)))
  with pytest.raises(ValueError, match='x must be a float array'):
    call((jnp.ones((2, 8), jnp.float32), jnp.ones((2, 8), bool)))
  with pytest.raises(ValueError, match='exceeds max_length_for_buckets=8'):
    call((jnp.ones((2, 12, 3)), jnp.ones((2, 12), bool)))
  layer = trax_env.ours.LSHSelfAttention(n_heads=1, d_qk=2, d_v=2,
                                         chunk_len=8,
                                         max_length_for_buckets=10)
  layer.init(trax_env.shapes.signature(x))
  with pytest.raises(ValueError, match=r'input length 9 \(padded to 16, a '
                     r'multiple of chunk_len=8\) exceeds max_length_for_'
                     r'buckets=10'):
    layer.forward_and_or_backward(jnp.ones((2, 9, 3)), layer.weights,
                                  layer.state, layer.rng)


# name: (kwargs, (batch, length, d_model), mask of the unpadded input or None)
ANY_LENGTH_CASES = {
    'causal_13': (dict(n_heads=2, d_qk=4, d_v=3, chunk_len=4,
                       n_chunks_before=1, n_hashes=2, n_buckets=4,
                       causal=True), (2, 13, 5), None),
    'masked_auto_buckets_10': (dict(
        n_heads=1, d_qk=3, d_v=4, chunk_len=8, n_chunks_before=0,
        n_chunks_after=1, n_hashes=3, n_buckets=None, masked=True,
        n_parallel_heads=None), (1, 10, 6), [True] * 7 + [False] + [True] * 2),
}


@pytest.mark.parametrize('case', list(ANY_LENGTH_CASES))
def test_any_length_is_padded_with_masked_positions(trax_env, case):
  """A length that is not a multiple of chunk_len: expected values are
  Trax's masked layer on the input padded to the next multiple, with the
  padding masked (its padding sits at the end, away from positions 0-1):
  outputs, new state (buckets for the padded length) and gradients of the
  real positions."""
  kwargs, shape, valid = ANY_LENGTH_CASES[case]
  batch, length, d_model = shape
  padded = -(-length // kwargs['chunk_len']) * kwargs['chunk_len']
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  x_padded = jnp.pad(x, ((0, 0), (0, padded - length), (0, 0)))
  mask = jnp.asarray([valid or [True] * length] * batch)
  mask_padded = jnp.pad(mask, ((0, 0), (0, padded - length)))
  ours = trax_env.ours.LSHSelfAttention(**kwargs)
  ours.init(trax_env.shapes.signature((x, mask) if valid else x),
            rng=trax_env.fastmath.random.get_prng(1))
  theirs = trax_env.tl.LSHSelfAttention(**dict(kwargs, masked=True))
  theirs.init(trax_env.shapes.signature((x_padded, mask_padded)),
              rng=trax_env.fastmath.random.get_prng(1))
  assert_trees_equal(ours.weights, theirs.weights)
  rng = jax.random.PRNGKey(3)
  cotangent = jax.random.normal(jax.random.PRNGKey(4), shape) * np.asarray(
      mask)[..., None]
  got = run_with_grads(ours, (x, mask) if valid else x, rng, cotangent)
  expected = run_with_grads(
      theirs, (x_padded, mask_padded), rng,
      jnp.pad(cotangent, ((0, 0), (0, padded - length), (0, 0))))
  real = np.asarray(mask)
  assert got[0].shape == shape
  np.testing.assert_allclose(np.asarray(got[0])[real],
                             np.asarray(expected[0])[:, :length][real],
                             rtol=0, atol=OUT_ATOL)
  assert_trees_equal(got[1], expected[1])
  np.testing.assert_allclose(got[2], expected[2][:, :length], rtol=GRAD_RTOL,
                             atol=GRAD_ATOL)
  assert_trees_close(got[3], expected[3], rtol=GRAD_RTOL, atol=GRAD_ATOL)


def test_length_one(trax_env):
  """One token attends only to itself: derivation, the output is
  sum over heads of (x @ w_v) @ w_o, to docs/algorithm.md §5's 1e-2 for a
  query that sees only itself (relative: the round weights of logits near
  -1e5 sum to 1 only to float32's 2**-7 there; 4e-3 seen)."""
  layer = trax_env.ours.LSHSelfAttention(n_heads=2, d_qk=3, d_v=4,
                                         chunk_len=4, n_hashes=2,
                                         n_buckets=2, causal=True)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 1, 5))
  layer.init(trax_env.shapes.signature(x))
  w_q, w_v, w_o = layer.weights
  del w_q
  expected = jnp.einsum('bld,hdv,hvm->blm', x, w_v, w_o)
  np.testing.assert_allclose(layer(x), expected, rtol=1e-2, atol=1e-5)
