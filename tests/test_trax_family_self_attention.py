"""lsh_jax.trax.SelfAttention with separate keys and chunks against Trax.

Expected values come from Trax 1.4.1's own `SelfAttention` (same
arguments, init key, inputs and rng; `pure_fn` jitted, gradients through
its backward pass). With separate keys lsh_jax computes padded queries as
Trax does, so every position is compared, padding included, as long as no
padding sits at positions 0-1 (the one deliberate difference, tested in
tests/test_trax_family_differences.py).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trax_testing import assert_trees_close
from trax_testing import assert_trees_equal
from trax_testing import init_pair
from trax_testing import run_with_grads
from trax_testing import trax_env  # noqa: F401  (fixture)

OUT_ATOL = 1e-5
GRAD_RTOL = 1e-4  # relative to the largest entry of each gradient

CASES = {
    # enwik8's SelfAttention: causal, chunks, one chunk before.
    'chunked_causal': dict(n_heads=2, d_qk=3, d_v=4, causal=True,
                           chunk_len=4, n_chunks_before=1),
    # Non-causal windows wrap around (chunk 0 sees the last chunk).
    'chunked_before_after': dict(n_heads=2, d_qk=4, d_v=3, chunk_len=4,
                                 n_chunks_before=1, n_chunks_after=1),
    # A window longer than the sequence: chunks seen twice, as in Trax.
    'window_wraps_twice': dict(n_heads=1, d_qk=4, d_v=3, chunk_len=6,
                               n_chunks_before=2, n_chunks_after=1),
    # Padding (not at positions 0-1), causal, chunks, bias.
    'chunked_masked_causal_bias': dict(
        n_heads=3, d_qk=4, d_v=2, causal=True, masked=True, chunk_len=3,
        n_chunks_before=1, bias=True),
    # Both dropouts, examples in blocks of heads (n_parallel_heads).
    'chunked_dropout': dict(n_heads=2, d_qk=4, d_v=3, chunk_len=4,
                            n_chunks_before=1, n_chunks_after=1,
                            attention_dropout=0.3, output_dropout=0.2,
                            n_parallel_heads=1),
    # Dropout rates are ignored in eval mode.
    'chunked_eval': dict(n_heads=2, d_qk=4, d_v=3, causal=True, chunk_len=4,
                         n_chunks_before=1, attention_dropout=0.3,
                         output_dropout=0.2, mode='eval'),
    # Unchunked, masked, separate keys: padded queries as in Trax.
    'masked_unchunked': dict(n_heads=2, d_qk=3, d_v=4, masked=True),
}


def _inputs(kwargs, shape=(2, 12, 5)):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  if not kwargs.get('masked'):
    return x
  valid = np.ones(shape[:2], bool)
  valid[0, 9:] = False
  valid[1, 4] = False
  valid[1, 7] = False
  return (x, jnp.asarray(valid))


def _random_biases(trax_layer, our_layer):
  """Biases are zeros at init: give both layers the same random values."""
  weights = tuple(w if w.ndim == 3 else
                  jax.random.normal(jax.random.PRNGKey(10 + i), w.shape)
                  for i, w in enumerate(trax_layer.weights))
  trax_layer.weights = our_layer.weights = weights


def assert_grads_close(got, expected):
  """Each gradient leaf within GRAD_RTOL of its largest entry."""
  for g, e in zip(jax.tree_util.tree_leaves(got),
                  jax.tree_util.tree_leaves(expected)):
    scale = float(np.max(np.abs(np.asarray(e))))
    np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=0,
                               atol=GRAD_RTOL * max(scale, 1e-30))


@pytest.mark.parametrize('case', list(CASES))
def test_matches_trax_outputs_and_gradients(trax_env, case):
  kwargs = CASES[case]
  inputs = _inputs(kwargs)
  trax_layer, our_layer = init_pair(trax_env, 'SelfAttention', kwargs, inputs)
  assert_trees_equal(our_layer.weights, trax_layer.weights)
  if kwargs.get('bias'):
    _random_biases(trax_layer, our_layer)
  x = inputs[0] if isinstance(inputs, tuple) else inputs
  rng = jax.random.PRNGKey(3)
  cotangent = jax.random.normal(jax.random.PRNGKey(4), x.shape)
  expected = run_with_grads(trax_layer, inputs, rng, cotangent)
  got = run_with_grads(our_layer, inputs, rng, cotangent)
  np.testing.assert_allclose(got[0], expected[0], rtol=0, atol=OUT_ATOL)
  assert_grads_close(got[2:], expected[2:])


def test_any_length_equals_trax_on_the_padded_input(trax_env):
  """L=10 with chunk_len=4: lsh_jax pads to 12 with masked positions; the
  expected values are Trax's masked layer on the input padded by hand."""
  kwargs = dict(n_heads=2, d_qk=3, d_v=4, causal=True, chunk_len=4,
                n_chunks_before=1)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 10, 5))
  ours = trax_env.ours.SelfAttention(**kwargs)
  ours.init(trax_env.shapes.signature(x),
            rng=trax_env.fastmath.random.get_prng(1))
  padded = jnp.pad(x, ((0, 0), (0, 2), (0, 0)))
  valid = jnp.arange(12)[None, :].repeat(2, 0) < 10
  theirs = trax_env.tl.SelfAttention(masked=True, **kwargs)
  theirs.init(trax_env.shapes.signature((padded, valid)),
              rng=trax_env.fastmath.random.get_prng(1))
  assert_trees_equal(ours.weights, theirs.weights)
  rng = jax.random.PRNGKey(3)
  expected, _ = theirs.pure_fn((padded, valid), theirs.weights, theirs.state,
                               rng)
  got, _ = ours.pure_fn(x, ours.weights, ours.state, rng)
  np.testing.assert_allclose(got, expected[:, :10], rtol=0, atol=OUT_ATOL)
