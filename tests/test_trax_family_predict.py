"""Decoding: lsh_jax.trax.SelfAttention(mode='predict').

Expected values:
  * Trax 1.4.1's own `SelfAttention` decoding (`_use_predict_mem`,
    `_incremental_forward_unbatched`, its batched path, jitted) run through
    `trax_testing.old_jax_shim` (the JAX calls it needs that JAX removed):
    same weights, state and inputs; every step's output within 1e-5 and the
    state (memory, mem_end) identical.
  * Full recomputation: with a memory that holds the whole sequence, a
    decoded token attends to every earlier token, which is the same layer's
    causal attention without chunks in eval mode (an independent
    derivation: no decoding code involved).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trax_testing import assert_trees_equal
from trax_testing import decode
from trax_testing import trax_decoding  # noqa: F401  (fixture)
from trax_testing import trax_env  # noqa: F401  (fixture)

OUT_ATOL = 1e-5

# name: (layer kwargs, (batch, total length, d_model), prefix length)
CASES = {
    # Separate keys (Trax's default), a short prefix, the memory of two
    # chunks rolls over several times; heads one at a time.
    'separate_keys_rolls_over': (dict(
        n_heads=2, d_qk=4, d_v=3, chunk_len=4, n_chunks_before=1,
        n_parallel_heads=1), (2, 22, 5), 3),
    # Shared QK, a long prefix (> predict_drop_len) attended in chunks.
    'shared_qk_long_prefix': (dict(
        n_heads=2, d_qk=4, d_v=3, share_qk=True, chunk_len=4,
        n_chunks_before=1, predict_mem_len=12, predict_drop_len=4),
                              (1, 20, 5), 8),
}


def make_layer(env, cls, kwargs, d_model, batch, seed=1):
  layer = cls(**dict(kwargs, causal=True, mode='predict'))
  layer.init(env.shapes.ShapeDtype((batch, 1, d_model), jnp.float32),
             rng=env.fastmath.random.get_prng(seed))
  return layer


@pytest.mark.parametrize('case', list(CASES))
def test_matches_trax_decoding(trax_env, trax_decoding, case):
  kwargs, (batch, length, d_model), prefix_len = CASES[case]
  x = jax.random.normal(jax.random.PRNGKey(0), (batch, length, d_model))
  theirs = make_layer(trax_env, trax_decoding.SelfAttention, kwargs, d_model,
                      batch)
  ours = make_layer(trax_env, trax_env.ours.SelfAttention, kwargs, d_model,
                    batch)
  assert_trees_equal(ours.weights, theirs.weights)
  assert_trees_equal(ours.state, theirs.state)
  expected_outs, expected_states = decode(theirs, x, prefix_len)
  got_outs, got_states = decode(ours, x, prefix_len)
  for got, expected in zip(got_outs, expected_outs):
    np.testing.assert_allclose(got, expected, rtol=0, atol=OUT_ATOL)
  for got, expected in zip(got_states, expected_states):
    assert_trees_equal(got, expected)


def test_decoding_equals_causal_attention_recomputed(trax_env):
  kwargs = dict(n_heads=2, d_qk=4, d_v=3, chunk_len=4, n_chunks_before=1,
                predict_mem_len=16, predict_drop_len=4)
  x = jax.random.normal(jax.random.PRNGKey(5), (2, 14, 5))
  ours = make_layer(trax_env, trax_env.ours.SelfAttention, kwargs, 5, 2)
  outs, states = decode(ours, x, 2)
  full = trax_env.ours.SelfAttention(n_heads=2, d_qk=4, d_v=3, causal=True,
                                     mode='eval')
  full.init(trax_env.shapes.signature(x),
            rng=trax_env.fastmath.random.get_prng(1))
  full.weights = ours.weights
  expected = np.asarray(full(x))
  np.testing.assert_allclose(np.concatenate(outs, axis=1), expected, rtol=0,
                             atol=OUT_ATOL)
  assert int(states[-1][0]) == 14
  np.testing.assert_array_equal(states[-1][1][0][:, :14], x)


@pytest.mark.parametrize('kwargs,message', [
    (dict(mode='predict'), "mode='predict' needs causal=True"),
    (dict(mode='predict', causal=True, masked=True, chunk_len=4),
     "mode='predict' needs masked=False"),
    (dict(mode='predict', causal=True),
     'without chunk_len needs predict_mem_len and predict_drop_len'),
    (dict(mode='predict', causal=True, chunk_len=4, predict_drop_len=9),
     r'predict_drop_len must be <= predict_mem_len=4'),
])
def test_predict_constructor_errors(trax_env, kwargs, message):
  with pytest.raises(ValueError, match=message):
    trax_env.ours.SelfAttention(**kwargs)


def test_predict_has_no_backward_pass(trax_env):
  layer = make_layer(trax_env, trax_env.ours.SelfAttention,
                     dict(chunk_len=4, d_qk=2, d_v=2), 3, 1)
  with pytest.raises(ValueError, match="mode='predict' has no backward"):
    layer.forward_and_or_backward(jnp.ones((1, 1, 3)), layer.weights,
                                  layer.state, jax.random.PRNGKey(0),
                                  output_grad=jnp.ones((1, 1, 3)))
