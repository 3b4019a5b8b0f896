"""lsh_jax.trax.EncDecAttention against Trax 1.4.1's EncDecAttention.

Expected values: Trax's own layer (same arguments, init key, inputs and
rng; `pure_fn` jitted, gradients through its backward pass) without a
mask. With a mask lsh_jax deliberately differs (docs/trax_family.md):
Trax's masked layer gives every real key weight 1 (its output is the sum of
the real keys' values), shown here against a float64 NumPy derivation,
while lsh_jax's equals Trax's unmasked layer run on the real keys only.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trax_testing import assert_trees_equal
from trax_testing import trax_env  # noqa: F401  (fixture)

OUT_ATOL = 1e-5
GRAD_RTOL = 1e-4  # relative to the largest entry of each gradient
BATCH, LQ, LK, DM, DK = 2, 6, 8, 5, 7


@pytest.fixture(scope='module')
# pylint: disable-next=redefined-outer-name,unused-argument
def ours_module(trax_env):
  # pylint: disable-next=import-outside-toplevel
  from lsh_jax.trax import encdec
  return encdec


def _init(layer, env, inputs):
  layer.init(env.shapes.signature(inputs), rng=env.fastmath.random.get_prng(1))
  return layer


def _activations():
  q_in = jax.random.normal(jax.random.PRNGKey(0), (BATCH, LQ, DM))
  kv_in = jax.random.normal(jax.random.PRNGKey(1), (BATCH, LK, DK))
  return q_in, kv_in


def _run(layer, inputs, rng, cotangent):
  """(output, (d q_in, d kv_in), d weights) of sum(output * cotangent)."""
  def loss(q_in, kv_in, weights):
    out, _ = layer.pure_fn((q_in, kv_in) + tuple(inputs[2:]), weights,
                           layer.state, rng)
    return jnp.sum(out * cotangent), out
  grad_fn = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
  (_, out), grads = jax.jit(grad_fn)(inputs[0], inputs[1], layer.weights)
  return out, grads


def assert_grads_close(got, expected):
  for g, e in zip(jax.tree_util.tree_leaves(got),
                  jax.tree_util.tree_leaves(expected)):
    scale = float(np.max(np.abs(np.asarray(e))))
    np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=0,
                               atol=GRAD_RTOL * max(scale, 1e-30))


@pytest.mark.parametrize('kwargs', [
    dict(n_heads=2, d_qk=3, d_v=4),
    dict(n_heads=3, d_qk=4, d_v=2, attention_dropout=0.3, output_dropout=0.2,
         n_parallel_heads=1),
    dict(n_heads=2, d_qk=3, d_v=4, attention_dropout=0.3, mode='eval'),
], ids=['plain', 'dropout_blocks', 'eval'])
def test_unmasked_matches_trax(trax_env, ours_module, kwargs):
  inputs = _activations()
  kwargs = dict(kwargs, masked=False)
  theirs = _init(trax_env.tl.EncDecAttention(**kwargs), trax_env, inputs)
  ours = _init(ours_module.EncDecAttention(**kwargs), trax_env, inputs)
  assert_trees_equal(ours.weights, theirs.weights)
  rng = jax.random.PRNGKey(3)
  cotangent = jax.random.normal(jax.random.PRNGKey(4), (BATCH, LQ, DM))
  expected, got = (_run(layer, inputs, rng, cotangent)
                   for layer in (theirs, ours))
  np.testing.assert_allclose(got[0], expected[0], rtol=0, atol=OUT_ATOL)
  assert_grads_close(got[1], expected[1])


def test_masked_differs_from_trax_on_purpose(trax_env, ours_module):
  """Keys 5-7 are padding in both examples."""
  q_in, kv_in = _activations()
  valid = jnp.arange(LK)[None].repeat(BATCH, 0) < 5
  kwargs = dict(n_heads=2, d_qk=3, d_v=4)
  theirs = _init(trax_env.tl.EncDecAttention(**kwargs), trax_env,
                 (q_in, kv_in, valid))
  ours = _init(ours_module.EncDecAttention(**kwargs), trax_env,
               (q_in, kv_in, valid))
  assert_trees_equal(ours.weights, theirs.weights)
  rng = jax.random.PRNGKey(3)

  # Trax: every real key's logit rounds to -1e9 and so does their
  # logsumexp (-1e9 + log 5; float32 spacing there is 64), so each real key
  # gets weight exactly 1: the *sum* of the real values (float64 derivation).
  _, _, w_v, w_o = (np.asarray(w, np.float64) for w in theirs.weights)
  kv = np.asarray(kv_in, np.float64)[:, :5]
  uniform = sum(np.sum(kv @ w_v[h], axis=1, keepdims=True) @ w_o[h]
                for h in range(2))
  trax_out, _ = theirs.pure_fn((q_in, kv_in, valid), theirs.weights,
                               theirs.state, rng)
  np.testing.assert_allclose(
      trax_out, np.broadcast_to(uniform, trax_out.shape), rtol=0,
      atol=OUT_ATOL)

  # lsh_jax: Trax's unmasked layer on the real keys only.
  plain = _init(trax_env.tl.EncDecAttention(masked=False, **kwargs),
                trax_env, (q_in, kv_in[:, :5]))
  plain.weights = theirs.weights
  cotangent = jax.random.normal(jax.random.PRNGKey(4), (BATCH, LQ, DM))
  expected = _run(plain, (q_in, kv_in[:, :5]), rng, cotangent)
  got = _run(ours, (q_in, kv_in, valid), rng, cotangent)
  np.testing.assert_allclose(got[0], expected[0], rtol=0, atol=OUT_ATOL)
  (q_grad, kv_grad), w_grad = got[1][:2], got[1][2]
  assert_grads_close((q_grad, kv_grad[:, :5], w_grad),
                     (expected[1][0], expected[1][1], expected[1][2]))
  np.testing.assert_array_equal(kv_grad[:, 5:], 0.0)
  assert float(np.max(np.abs(np.asarray(got[0]) - np.asarray(trax_out)))) \
      > 1e-3


@pytest.mark.parametrize('inputs,message', [
    (((2, 6, 5), (2, 8, 7)), 'takes 3 inputs'),
    (((2, 6, 5), (3, 8, 7), (3, 8)), 'with one batch size'),
    (((2, 6, 5), (2, 8, 7), (2, 6)), r'mask must have the encoder shape'),
])
def test_input_errors(trax_env, ours_module, inputs, message):
  layer = ours_module.EncDecAttention(n_heads=1, d_qk=2, d_v=2)
  arrays = tuple(jnp.ones(s, bool if len(s) == 2 else jnp.float32)
                 for s in inputs)
  with pytest.raises(ValueError, match=message):
    layer.forward_and_or_backward(arrays, (), (), jax.random.PRNGKey(0))
