"""lsh_jax.trax.LSHSelfAttention with the paper's exact attention flags.

Expected values: the defaults are Trax 1.4.1's layer (its own output, same
weights and state); with `allow_duplicate_attention=False` each head is
dense softmax attention over the union of its candidate sets, derived in
float64 from the buckets the layer stored in its state
(`tests/test_duplicates.py`'s `candidate_union`), projected by the layer's
weights. Tolerance 1e-4 on outputs of order 1 (float32 projections).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_duplicates import candidate_union
from tests.test_duplicates import self_only
from tests.test_duplicates import union_attention
from trax_testing import init_pair
from trax_testing import trax_env  # noqa: F401  (fixture)

KWARGS = dict(n_heads=2, d_qk=4, d_v=3, causal=True, chunk_len=4,
              n_chunks_before=1, n_chunks_after=0, n_hashes=3, n_buckets=4)


def _heads_reference(x, weights, state, *, across):
  """Per (example, head) union attention, summed over heads.

  Returns:
    (float64 [B, L, Dm], bool [B, L]: positions where some head's query
    sees only itself, the float32 caveat).
  """
  w_q, w_v, w_o = (np.asarray(w, np.float64) for w in weights)
  batch, length, _ = x.shape
  n_heads, n_rounds = w_q.shape[0], KWARGS['n_hashes']
  flat_buckets = np.asarray(state[0]).reshape(batch, n_heads, -1)
  out = np.zeros(x.shape)
  special = np.zeros((batch, length), bool)
  for b in range(batch):
    for h in range(n_heads):
      q = np.asarray(x[b], np.float64) @ w_q[h]
      v = np.asarray(x[b], np.float64) @ w_v[h]
      # The state's flat ids carry round offsets; only the order in a round
      # and equality within a round matter.
      buckets = flat_buckets[b, h, :n_rounds * length].reshape(n_rounds,
                                                               length)
      union = candidate_union(buckets, chunk_len=KWARGS['chunk_len'],
                              n_chunks_before=1, n_chunks_after=0,
                              across_buckets=across)
      out[b] += union_attention(q, v, union, causal=True, mask=None) @ w_o[h]
      special[b] |= self_only(q, union, causal=True, mask=None)
  return out, special


@pytest.mark.parametrize('across', [True, False])
def test_exact_layer_is_union_attention(trax_env, across):  # noqa: F811
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 6))
  layer = trax_env.ours.LSHSelfAttention(
      allow_duplicate_attention=False, attend_across_buckets=across,
      **KWARGS)
  layer.init(trax_env.shapes.signature(x),
             rng=trax_env.fastmath.random.get_prng(1))
  out = np.asarray(layer(x))
  expected, special = _heads_reference(np.asarray(x), layer.weights,
                                       layer.state, across=across)
  # Queries that see only themselves (causal position 0; with the bucket
  # restriction also tokens alone in their bucket so far): float32 caveat.
  np.testing.assert_allclose(out[~special], expected[~special], rtol=1e-4,
                             atol=1e-4)
  np.testing.assert_allclose(out[special], expected[special], rtol=1e-2,
                             atol=1e-2)


def test_defaults_are_trax(trax_env):  # noqa: F811
  """Explicit True flags compute Trax 1.4.1's layer, as the defaults do."""
  x = jax.random.normal(jax.random.PRNGKey(1), (1, 16, 6))
  trax_layer, layer = init_pair(trax_env, 'LSHSelfAttention', KWARGS, x)
  flagged = trax_env.ours.LSHSelfAttention(
      allow_duplicate_attention=True, attend_across_buckets=True, **KWARGS)
  flagged.init(trax_env.shapes.signature(x),
               rng=trax_env.fastmath.random.get_prng(1))
  expected = np.asarray(trax_layer(x))
  np.testing.assert_allclose(np.asarray(flagged(x)), expected, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(np.asarray(layer(x)), expected, rtol=1e-5,
                             atol=1e-5)


def test_exact_layer_trains(trax_env):  # noqa: F811
  """Gradients through the layer's own backward pass (reversible layers
  call it) equal autodiff of its forward pass."""
  x = jax.random.normal(jax.random.PRNGKey(2), (1, 16, 6))
  layer = trax_env.ours.LSHSelfAttention(allow_duplicate_attention=False,
                                         **KWARGS)
  layer.init(trax_env.shapes.signature(x),
             rng=trax_env.fastmath.random.get_prng(1))
  cotangent = jax.random.normal(jax.random.PRNGKey(3), x.shape)
  out, state, _, _ = layer.forward_and_or_backward(
      x, layer.weights, layer.state, layer.rng, compute_output=True,
      update_state=True)
  _, _, x_grad, w_grad = layer.forward_and_or_backward(
      x, layer.weights, state, layer.rng, output_grad=cotangent,
      compute_output=False, update_state=False)

  def loss(x, weights):
    out, _, _, _ = layer.forward_and_or_backward(
        x, weights, state, layer.rng, update_state=False)
    return jnp.sum(out * cotangent)
  expected_x, expected_w = jax.grad(loss, argnums=(0, 1))(x, layer.weights)
  np.testing.assert_allclose(x_grad, expected_x, rtol=2e-3, atol=2e-3)
  for got, want in zip(w_grad, expected_w):
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)
  assert np.all(np.isfinite(np.asarray(out)))


def test_bad_flags(trax_env):  # noqa: F811
  with pytest.raises(ValueError, match='allow_duplicate_attention must be '
                     'True or False'):
    trax_env.ours.LSHSelfAttention(allow_duplicate_attention='no')
  with pytest.raises(ValueError, match="mode='predict' .* must be True"):
    trax_env.ours.LSHSelfAttention(causal=True, mode='predict',
                                   attend_across_buckets=False)
