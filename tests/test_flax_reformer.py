"""lsh_jax.flax.ReformerLM: shapes, causality, padding, reversibility.

Expected values are derived independently: causality and padding by
perturbing tokens the logits must not depend on (the model's own output on
unperturbed tokens is the reference), the reversible gradients by plain
autodiff of the same model (`reversible=False`, the same blocks and keys),
the positional tables from their formulas written out here, the chunked
feed-forward by the unchunked one. Sizes are small and differ from each
other (V=11, Dm=16, Dff=24, N=2, H=4, Hv=3, T=20) so a swapped axis fails.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lsh_jax.flax import LocalSelfAttention
from lsh_jax.flax import LSHSelfAttention
from lsh_jax.flax import ReformerLM
from lsh_jax.flax import SelfAttention
from lsh_jax.flax import positional

V, DM, DFF, N, H, HV, T = 11, 16, 24, 2, 4, 3, 20
LSH = functools.partial(LSHSelfAttention, n_hashes=2, chunk_len=4)
LOCAL = functools.partial(LocalSelfAttention, chunk_len=4, n_chunks_before=1)


def _model(attention_type=LOCAL, n_layers=2, seed=0, **kwargs):
  config = dict(d_model=DM, d_ff=DFF, d_attention_key=H,
                d_attention_value=HV, n_layers=n_layers, n_heads=N,
                dropout=0.0, max_len=32, attention_type=attention_type)
  config.update(kwargs)
  return ReformerLM(V, **config, rngs=nnx.Rngs(seed))


def _tokens(seed=1, shape=(2, T)):
  return jax.random.randint(jax.random.PRNGKey(seed), shape, 0, V)


@nnx.jit
def _eval(model, tokens, mask):
  return model(tokens, mask, deterministic=True)


def test_parameter_tree_is_the_documented_one():
  model = _model([LSH, LOCAL, SelfAttention], n_layers=3, ff_chunk_size=8)
  tree = jax.tree.map(jnp.shape, nnx.to_pure_dict(nnx.state(model,
                                                             nnx.Param)))
  norm = lambda d: {'scale': (d,), 'bias': (d,)}
  attention = {'qk': {'kernel': (DM, N, H)}, 'value': {'kernel': (DM, N, HV)},
               'out': {'kernel': (N, HV, DM)}}
  ff = {'w1': {'kernel': (DM, DFF), 'bias': (DFF,)},
        'w2': {'kernel': (DFF, DM), 'bias': (DM,)}}
  block = lambda att: {'attention_norm': norm(DM), 'attention': att,
                       'ff_norm': norm(DM), 'ff': ff}
  assert tree == {
      'embed': {'embedding': (V, DM)},
      'positional': {'embedding': (32, DM)},
      'blocks': {0: block(attention),
                 1: block(dict(attention, key={'kernel': (DM, N, H)})),
                 2: block(attention)},
      'final_norm': norm(2 * DM),
      'logits': {'kernel': (2 * DM, V), 'bias': (V,)}}
  axial = _model(pos_type='axial', pos_axial_shape=(4, 8),
                 pos_d_axial_embs=(6, 10))
  assert jax.tree.map(jnp.shape, nnx.to_pure_dict(
      nnx.state(axial.positional, nnx.Param))) == {
          'axes': {0: (4, 6), 1: (8, 10)}}
  assert 'positional' not in nnx.to_pure_dict(
      nnx.state(_model(pos_type='sin-cos'), nnx.Param))


@pytest.mark.parametrize('attention_type', [
    [LOCAL, SelfAttention],
    # LSH with one chunk covering the sequence: with several chunks a
    # later token's hash moves the sorted chunk boundaries, so an earlier
    # query's candidate set (never its visibility of the future) can change.
    functools.partial(LSHSelfAttention, n_hashes=2, chunk_len=32,
                      n_chunks_before=0)])
def test_logits_at_t_do_not_depend_on_tokens_from_t_on(attention_type):
  model = _model(attention_type, ff_chunk_size=8)
  tokens = _tokens()
  reference = _eval(model, tokens, None)
  assert reference.shape == (2, T, V)
  changed = _tokens(seed=2)
  for t in (0, 1, 7, 13, T - 1):
    perturbed = tokens.at[:, t:].set(changed[:, t:])
    got = _eval(model, perturbed, None)
    np.testing.assert_array_equal(got[:, :t + 1], reference[:, :t + 1])
    if t < T - 1:  # the check can fail: later logits do move
      assert np.max(np.abs(got[:, t + 1:] - reference[:, t + 1:])) > 1e-3


def test_padded_tokens_are_seen_by_no_position():
  model = _model([LOCAL, SelfAttention])
  tokens = _tokens()
  mask = np.ones((2, T), bool)
  mask[0, :3] = False  # left padding
  mask[1, 8:11] = False  # a gap
  reference = _eval(model, tokens, mask)
  perturbed = jnp.where(mask, tokens, (tokens + 5) % V)
  got = _eval(model, perturbed, mask)
  # Position t reads token t - 1: positions after a padded token differ.
  reads_padding = np.zeros((2, T), bool)
  reads_padding[:, 1:] = ~mask[:, :-1]
  np.testing.assert_allclose(got[~reads_padding], reference[~reads_padding],
                             rtol=1e-5, atol=1e-5)
  assert np.max(np.abs(got[reads_padding] - reference[reads_padding])) > 1e-3
  unmasked = _eval(model, perturbed, None)  # without the mask they are seen
  assert np.max(np.abs(unmasked[1, 12:] - reference[1, 12:])) > 1e-3
  lsh = _eval(_model(LSH), tokens, mask)
  assert lsh.shape == (2, T, V) and np.all(np.isfinite(lsh))


def test_any_length_and_chunked_feed_forward_equals_unchunked():
  tokens = _tokens(shape=(2, 13))  # not a multiple of any chunk
  # The same seed gives the same weights; dropout everywhere. The masks are
  # drawn once per call, not per chunk, so chunking does not change the
  # function, in training or evaluation.
  chunked = _model(LOCAL, ff_chunk_size=4, dropout=0.3)
  whole = _model(LOCAL, ff_chunk_size=0, dropout=0.3)
  for deterministic in (True, False):
    run = nnx.jit(lambda m: m(tokens, rngs=nnx.Rngs(hash=1, dropout=2),
                              deterministic=deterministic))
    got, expected = run(chunked), run(whole)
    assert got.shape == (2, 13, V)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_positional_tables_follow_their_formulas():
  x = jnp.zeros((1, 10, 6))
  sincos = positional.SinCosPositionalEncoding()(x)[0]
  pos, dim = np.arange(10)[:, None], np.arange(3)[None]
  angle = pos / 10000.0 ** (2 * dim / 6)  # Trax: [sin | cos]
  np.testing.assert_allclose(sincos, np.concatenate(
      [np.sin(angle), np.cos(angle)], -1), rtol=1e-5, atol=1e-5)
  learned = positional.PositionalEncoding(16, 6)(x, start=2)[0]
  interleaved = np.zeros((10, 6))  # Trax: sin, cos, sin, cos, ...
  interleaved[:, 0::2] = np.sin((pos + 2) / 10000.0 ** (2 * dim / 6))
  interleaved[:, 1::2] = np.cos((pos + 2) / 10000.0 ** (2 * dim / 6))
  np.testing.assert_allclose(learned, interleaved, rtol=1e-5, atol=1e-5)
  axial = positional.AxialPositionalEncoding((3, 4), (2, 4), 6,
                                             rngs=nnx.Rngs(0))
  table = axial(x)[0]  # position p = 4 i + j: [axes0[i], axes1[j]]
  for p in range(10):
    np.testing.assert_array_equal(table[p], np.concatenate(
        [axial.axes[0][p // 4], axial.axes[1][p % 4]]))


@nnx.jit
def _grads(model, tokens):
  def loss(model):
    logits = model(tokens, rngs=nnx.Rngs(hash=5, dropout=6))
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0])
  return nnx.grad(loss)(model)


def test_reversible_gradients_equal_plain_autodiff():
  # LSH (several chunks, fresh hashes) and dropout everywhere: the keys
  # drawn before the stack are replayed by the backward's recomputation.
  model = _model(LSH, n_layers=3, dropout=0.2, ff_chunk_size=8)
  tokens = _tokens()
  reversible = jax.tree.leaves(_grads(model, tokens))
  model.reversible = False
  plain = jax.tree.leaves(_grads(model, tokens))
  largest = max(float(jnp.max(jnp.abs(g))) for g in plain)
  worst = max(float(jnp.max(jnp.abs(a - b)))
              for a, b in zip(reversible, plain))
  # Measured 8.7e-8 of the largest entry (reconstruction rounding); 2.8e-7
  # for [LSH, local, dense] x 2 with dropout 0.2.
  assert worst <= 1e-4 * largest, (worst, largest)
  assert largest > 0


@pytest.mark.parametrize('make,message', [
    (lambda: _model()(jnp.zeros((2, T))), r'tokens must be an int array'),
    (lambda: _model()(jnp.zeros((T,), jnp.int32)),
     r'tokens must be an int array \[batch, length\]'),
    (lambda: _model()(_tokens(), jnp.ones((2, 3), bool)),
     r'mask must be a bool array'),
    (lambda: _model()(_tokens(shape=(1, 40))),
     r'longer than max_len \(32\)'),
    (lambda: _model([LSH, LOCAL], n_layers=3),
     r'n_layers \(3\) must be a multiple of the number of attention types'),
    (lambda: _model(pos_type='fixed-base'), r'pos_type must be one of'),
    (lambda: _model(pos_type='axial', pos_axial_shape=(4, 8),
                    pos_d_axial_embs=(6, 6)), r'must sum to d_model \(16\)'),
    (lambda: _model(pos_axial_shape=(4, 8)),
     r"used only with pos_type='axial'"),
    (lambda: _model(ff_activation='Swish'), r'ff_activation must be'),
    (lambda: _model(ff_chunk_size=-1), r'ff_chunk_size must be an int'),
    (lambda: _model(dropout=1.0), r'dropout must be in \[0, 1\)'),
    (lambda: _model(n_heads=0), r'n_heads'),
    (lambda: _model('lsh'), r'attention_type must be an attention module'),
    (lambda: _model(nnx.Linear), r'attention_type .* must accept'),
    (lambda: LocalSelfAttention(2, 8, n_chunks_before=1, rngs=nnx.Rngs(0)),
     r'n_chunks_before and n_chunks_after need chunk_len'),
])
def test_bad_arguments_raise_clear_errors(make, message):
  with pytest.raises(ValueError, match=message):
    make()


def _step_temp_bytes(n_layers, reversible):
  """Compiled temp memory of loss + gradients (compiled, not run)."""
  model = _model(SelfAttention, n_layers=n_layers, dropout=0.1, max_len=256,
                 reversible=reversible)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def grads(params, rest, tokens):
    model = nnx.merge(graphdef, params, rest)
    return nnx.grad(lambda m: jnp.mean(m(tokens)))(model)
  tokens = jax.ShapeDtypeStruct((2, 256), jnp.int32)
  compiled = jax.jit(grads).lower(params, rest, tokens).compile()
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  return compiled.memory_analysis().temp_size_in_bytes, param_bytes


def test_reversible_step_memory_does_not_grow_with_depth():
  rev2, params2 = _step_temp_bytes(2, True)
  rev4, params4 = _step_temp_bytes(4, True)
  plain2, _ = _step_temp_bytes(2, False)
  plain4, _ = _step_temp_bytes(4, False)
  # Two more layers add their weights' stacked copies and gradients (about
  # twice their bytes) and no activations to the reversible step; the
  # plain step keeps two more layers' activations (2 x 256 positions x a
  # few Dm- and Dff-wide arrays: MBs, far above the weights' KBs).
  extra_weights = params4 - params2
  assert rev4 - rev2 <= 2 * extra_weights, (rev2, rev4, extra_weights)
  assert plain4 - plain2 > 20 * extra_weights, (plain2, plain4)
