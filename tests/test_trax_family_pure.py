"""lsh_jax's PureLSHSelfAttention, its Wrapper and MixedLSHSelfAttention
against Trax 1.4.1's.

Expected values come from Trax's own layers (same arguments, init key,
state, inputs and rng; `pure_fn` jitted; gradients through each layer's
backward pass). Padding is kept away from positions 0-1 and padded query
outputs are not compared (the deliberate differences, docs/trax_family.md).
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
GRAD_RTOL = 1e-4  # relative to the largest entry of each gradient

# Trax sizes its output [B * H, L, d_qk]: it needs d_v == d_qk.
BATCH, LENGTH, D_QK, D_V = 2, 16, 4, 4

CASES = {
    'causal_two_rounds': dict(n_heads=2, causal=True, chunk_len=4,
                              n_hashes=2, n_buckets=4),
    'masked_before_after': dict(n_heads=2, masked=True, chunk_len=4,
                                n_chunks_after=1, n_buckets=4),
    'dropout': dict(n_heads=1, causal=True, chunk_len=4, n_buckets=[2, 2],
                    n_hashes=2, attention_dropout=0.3),
    'eval_ignores_dropout': dict(n_heads=2, chunk_len=8, n_buckets=2,
                                 attention_dropout=0.3, mode='eval'),
}


@pytest.fixture(scope='module')
def modules(trax_env):  # pylint: disable=redefined-outer-name,unused-argument
  # pylint: disable=import-outside-toplevel
  from trax.layers.research import efficient_attention

  from lsh_jax.trax import pure  # pylint: disable=import-outside-toplevel
  return efficient_attention, pure


def _valid():
  valid = np.ones((BATCH, LENGTH), bool)
  valid[0, 11:] = False
  valid[1, 5] = False
  return valid


def _pair_inputs(kwargs):
  pairs = BATCH * kwargs['n_heads']
  qk = jax.random.normal(jax.random.PRNGKey(0), (pairs, LENGTH, D_QK))
  v = jax.random.normal(jax.random.PRNGKey(1), (pairs, LENGTH, D_V))
  if kwargs.get('masked'):
    return (qk, v, jnp.asarray(_valid()))
  return (qk, v)


def _init(layer, env, inputs):
  layer.init(env.shapes.signature(inputs), rng=env.fastmath.random.get_prng(1))
  return layer


def _run_pure(layer, inputs, rng, cotangent):
  """(output, state, (d qk, d v)) of sum(output * cotangent), jitted."""
  def loss(qk, v):
    out, state = layer.pure_fn((qk, v) + tuple(inputs[2:]), layer.weights,
                               layer.state, rng)
    return jnp.sum(out * cotangent), (out, state)
  grad_fn = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
  (_, (out, state)), grads = jax.jit(grad_fn)(inputs[0], inputs[1])
  return out, state, grads


def assert_grads_close(got, expected):
  for g, e in zip(jax.tree_util.tree_leaves(got),
                  jax.tree_util.tree_leaves(expected)):
    scale = float(np.max(np.abs(np.asarray(e))))
    np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=0,
                               atol=GRAD_RTOL * max(scale, 1e-30))


@pytest.mark.parametrize('case', list(CASES))
def test_pure_matches_trax(trax_env, modules, case):
  efficient_attention, pure = modules
  kwargs = dict(CASES[case], d_qk=D_QK, d_v=D_V)
  inputs = _pair_inputs(kwargs)
  theirs = _init(efficient_attention.PureLSHSelfAttention(**kwargs),
                 trax_env, inputs)
  ours = _init(pure.PureLSHSelfAttention(**kwargs), trax_env, inputs)
  assert_trees_equal(ours.state, theirs.state)
  rng = jax.random.PRNGKey(3)
  shape = inputs[1].shape
  valid = np.repeat(_valid(), kwargs['n_heads'], axis=0) if kwargs.get(
      'masked') else np.ones(shape[:2], bool)
  cotangent = jax.random.normal(jax.random.PRNGKey(4), shape) * valid[
      ..., None]
  expected = _run_pure(theirs, inputs, rng, cotangent)
  got = _run_pure(ours, inputs, rng, cotangent)
  np.testing.assert_allclose(np.asarray(got[0])[valid],
                             np.asarray(expected[0])[valid], rtol=0,
                             atol=OUT_ATOL)
  assert_trees_equal(got[1], expected[1])
  assert_grads_close(got[2], expected[2])


def test_pure_any_length_and_blocks(trax_env, modules):
  """L=14 (not a multiple of chunk_len=4) and 2 pairs per block: equal to
  the same layer on the input padded by hand with a mask (positions 14-15
  padded; the padded layer's own path is checked against Trax above)."""
  _, pure = modules
  kwargs = dict(n_heads=2, d_qk=D_QK, d_v=D_V, causal=True, chunk_len=4,
                n_buckets=4, n_parallel_heads=2)
  qk, v = _pair_inputs(kwargs)
  short = _init(pure.PureLSHSelfAttention(**kwargs), trax_env,
                (qk[:, :14], v[:, :14]))
  padded = _init(pure.PureLSHSelfAttention(masked=True, **kwargs), trax_env,
                 (qk, v, jnp.ones((BATCH, LENGTH), bool)))
  valid = jnp.arange(LENGTH)[None].repeat(BATCH, 0) < 14
  rng = jax.random.PRNGKey(3)
  got, _ = short.pure_fn((qk[:, :14], v[:, :14]), (), short.state, rng)
  expected, _ = padded.pure_fn((qk, v, valid), (), padded.state, rng)
  np.testing.assert_allclose(got, expected[:, :14], rtol=0, atol=OUT_ATOL)


def test_wrapper_matches_trax(trax_env, modules):
  efficient_attention, pure = modules
  kwargs = dict(n_heads=2, d_qk=4, d_v=4, causal=True, chunk_len=4,
                n_hashes=2, n_buckets=4)
  x = jax.random.normal(jax.random.PRNGKey(0), (BATCH, LENGTH, 8))
  theirs = _init(efficient_attention.PureLSHSelfAttentionWrapper(
      pure_lsh_implementation=efficient_attention.PureLSHSelfAttention,
      **kwargs), trax_env, x)
  ours = _init(pure.PureLSHSelfAttentionWrapper(**kwargs), trax_env, x)
  assert isinstance(ours.sublayers[1], pure.PureLSHSelfAttention)
  assert_trees_equal(ours.weights, theirs.weights)
  rng = jax.random.PRNGKey(3)
  cotangent = jax.random.normal(jax.random.PRNGKey(4), x.shape)

  def run(layer):
    def loss(x, weights):
      out, _ = layer.pure_fn(x, weights, layer.state, rng)
      return jnp.sum(out * cotangent), out
    grad_fn = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
    (_, out), grads = jax.jit(grad_fn)(x, layer.weights)
    return out, grads

  expected, got = run(theirs), run(ours)
  np.testing.assert_allclose(got[0], expected[0], rtol=0, atol=OUT_ATOL)
  assert_grads_close(got[1], expected[1])


@pytest.mark.parametrize('length', [12, 16])
def test_mixed_matches_trax_sublayers(trax_env, modules, length,
                                      monkeypatch):
  """std_length=8: above it the class runs the pure LSH layer, ours (up to
  8 it runs Trax's inherited dense attention: nothing of ours to test).
  Expected values: Trax's MixedLSHSelfAttention with our LSH state (its
  init draws other hash keys)."""
  efficient_attention, pure = modules
  kwargs = dict(n_heads=2, d_qk=D_QK, d_v=D_V, causal=True, chunk_len=4,
                n_buckets=4)
  pairs = BATCH * 2
  qk = jax.random.normal(jax.random.PRNGKey(0), (pairs, length, D_QK))
  v = jax.random.normal(jax.random.PRNGKey(1), (pairs, length, D_V))
  theirs = _init(efficient_attention.MixedLSHSelfAttention(std_length=8,
                                                         **kwargs),
                 trax_env, (qk, v))
  ours = _init(pure.MixedLSHSelfAttention(std_length=8, **kwargs), trax_env,
               (qk, v))
  lsh_layer = ours._lsha  # pylint: disable=protected-access
  assert isinstance(lsh_layer, pure.PureLSHSelfAttention)
  assert_trees_equal(ours.weights, theirs.weights)
  state = (ours.state[0], theirs.state[1])
  rng = jax.random.PRNGKey(3)
  expected, _ = jax.jit(theirs.pure_fn)((qk, v), (), state, rng)
  ran = []  # our LSH sublayer runs at this length
  lsh_forward = pure.PureLSHSelfAttention.pure_fn
  monkeypatch.setattr(pure.PureLSHSelfAttention, 'pure_fn',
                      lambda *args, **kw: ran.append(1) or lsh_forward(
                          *args, **kw))
  got, _ = jax.jit(ours.pure_fn)((qk, v), (), state, rng)
  assert ran
  np.testing.assert_allclose(got, expected, rtol=0, atol=OUT_ATOL)


@pytest.mark.parametrize('kwargs,inputs,message', [
    (dict(n_heads=2), ((3, 8, 4), (3, 8, 3)),
     r'qk and v must be float arrays \[batch \* n_heads, length, depth\]'),
    (dict(n_heads=1, masked=True), ((2, 8, 4), (2, 8, 3), (2, 7)),
     r'mask must have shape \(2, 8\)'),
    (dict(n_heads=1), ((2, 8, 4),), 'takes 2 inputs'),
])
def test_pure_input_errors(trax_env, modules, kwargs, inputs, message):
  _, pure = modules
  layer = pure.PureLSHSelfAttention(chunk_len=4, **kwargs)
  arrays = tuple(jnp.ones(s, bool if len(s) == 2 else jnp.float32)
                 for s in inputs)
  with pytest.raises(ValueError, match=message):
    layer.forward_and_or_backward(arrays, ((), ()), jax.random.PRNGKey(0))


# Decoding: a prefix in one call, then one token per call, through the
# memory (mem 8, drop 4: it rolls over several times). Explicit n_buckets
# (with None, Trax hashes a decoded token with 2 buckets: the deliberate
# difference of lsh_jax.trax.predict).
PREDICT_CASES = {
    'short_prefix_rolls_over': (dict(
        n_heads=2, chunk_len=4, n_chunks_before=1, n_hashes=2, n_buckets=4,
        predict_mem_len=8, predict_drop_len=4), 3),
    'long_prefix_heads_together': (dict(
        n_heads=2, chunk_len=2, n_chunks_before=2, n_hashes=3,
        n_buckets=[2, 2], predict_mem_len=8, predict_drop_len=2,
        n_parallel_heads=4), 10),  # Trax's own layer: 1 (its only one)
}


@pytest.mark.parametrize('case', list(PREDICT_CASES))
def test_pure_predict_matches_trax_step_by_step(trax_env, trax_decoding,
                                                modules, case):
  """Trax's own pure-layer decoding (through the test-only old-JAX shim):
  every step's output within 1e-5, the whole state (memory, buckets,
  indices, keys) identical."""
  _, pure = modules
  kwargs, prefix_len = PREDICT_CASES[case]
  kwargs = dict(kwargs, causal=True, mode='predict')
  pairs = BATCH * kwargs['n_heads']
  qk = jax.random.normal(jax.random.PRNGKey(0), (pairs, LENGTH, D_QK))
  v = jax.random.normal(jax.random.PRNGKey(1), (pairs, LENGTH, D_V))
  layers = []
  for cls in (trax_decoding.PureLSHSelfAttention, pure.PureLSHSelfAttention):
    ours = cls is pure.PureLSHSelfAttention
    layer = cls(d_qk=D_QK, d_v=D_V, **dict(
        kwargs, n_parallel_heads=kwargs.get('n_parallel_heads', 1) if ours
        else 1))
    layer.init((trax_env.shapes.signature(qk[:, :1]),
                trax_env.shapes.signature(v[:, :1])),
               rng=trax_env.fastmath.random.get_prng(3))
    layers.append(layer)
  theirs, ours = layers
  assert_trees_equal(ours.state, theirs.state)
  (expected_outs, expected_states), (outs, states) = (
      decode(layer, (qk, v), prefix_len) for layer in layers)
  for expected, expected_state, got, state in zip(
      expected_outs, expected_states, outs, states):
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=OUT_ATOL)
    assert_trees_equal(state, expected_state)
  mem_end, (qk_mem, v_mem), _ = states[-1]
  assert qk_mem.shape == (pairs, kwargs['predict_mem_len'], D_QK)
  np.testing.assert_array_equal(v_mem[:, int(mem_end) - 1], v[:, -1])


@pytest.mark.parametrize('kwargs, message', [
    (dict(causal=False), "mode='predict' needs causal=True"),
    (dict(causal=True, masked=True), "mode='predict' needs masked=False"),
])
def test_pure_predict_arguments_are_checked(trax_env, modules, kwargs,
                                            message):
  _, pure = modules
  with pytest.raises(ValueError, match=message):
    pure.PureLSHSelfAttention(chunk_len=4, mode='predict', **kwargs)
