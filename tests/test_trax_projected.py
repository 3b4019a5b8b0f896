"""The LSH layer's projections outside the pair loop (`lsh_jax.trax.projected`).

Expected values come from the per-pair form, `trax_testing.lsh_head` run by
`heads.forward_and_or_backward` (project, attend and project back inside
the loop, as Trax's layer does; that form is itself checked against Trax in
test_trax_layer.py through the layer before this change, and the layer now
runs the projected form against Trax there). Both use the same attention
function, so they differ only in the order of the projection sums: float32
rounding, ~1e-6 seen.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsh_jax.trax import heads
from lsh_jax.trax import kernels
from lsh_jax.trax import projected
import trax_testing

RTOL, ATOL = 1e-5, 1e-5

SPEC = dict(kind='lsh', causal=True, chunk_len=4, n_chunks_before=1,
            n_chunks_after=0, attention_dropout=0.0, output_dropout=0.0,
            n_hashes=2, n_buckets=4)


def _inputs(batch, length, d_model, n_heads, d_qk, d_v, bias, seed=0):
  keys = iter(jax.random.split(jax.random.PRNGKey(seed), 8))
  normal = lambda *shape: jax.random.normal(next(keys), shape)
  x = normal(batch, length, d_model)
  weights = (normal(n_heads, d_model, d_qk), normal(n_heads, d_model, d_v),
             normal(n_heads, d_v, d_model))
  if bias:
    weights += (normal(n_heads, d_qk), normal(n_heads, d_v))
  hash_keys = jax.random.split(next(keys), batch * n_heads)
  state = (jnp.zeros((batch * n_heads, SPEC['n_hashes'] * length),
                     jnp.int32), hash_keys)
  return x, weights, state, normal(batch, length, d_model)


# One pair per block (Trax's default: the squeezed, unbatched path), and
# two blocks of two heads; bias and padding on one of them each.
@pytest.mark.parametrize('n_parallel_heads,bias,masked', [
    (1, True, True), (2, False, False)])
def test_projected_equals_per_pair_heads(n_parallel_heads, bias, masked):
  batch, length, d_model, n_heads = 2, 16, 5, 2
  spec = kernels.Spec(n_heads=n_heads, bias=bias,
                      n_parallel_heads=n_parallel_heads, **SPEC)
  x, weights, state, g = _inputs(batch, length, d_model, n_heads, 3, 4, bias)
  mask = None
  if masked:
    mask = jnp.asarray(np.arange(length)[None, :] < np.array([[16], [11]]))
  rng = jax.random.PRNGKey(3)
  common = dict(n_heads=n_heads, n_parallel_heads=n_parallel_heads)
  # Forward: hash anew, the new state must agree bit for bit.
  per_pair = heads.forward_and_or_backward(
      functools.partial(trax_testing.lsh_head, spec=spec, dropout_key=rng,
                        update_state=True),
      x, mask, weights, state, **common)
  ours = projected.run(
      functools.partial(kernels.pure_head, spec=spec, dropout_key=rng,
                        update_state=True),
      x, mask, weights, state, bias=bias, **common)
  np.testing.assert_allclose(ours[0], per_pair[0], rtol=RTOL, atol=ATOL)
  for a, b in zip(jax.tree_util.tree_leaves(ours[1]),
                  jax.tree_util.tree_leaves(per_pair[1])):
    np.testing.assert_array_equal(a, b)
  # Backward from the stored buckets: output, input and weight gradients.
  new_state = per_pair[1]
  per_pair = heads.forward_and_or_backward(
      functools.partial(trax_testing.lsh_head, spec=spec, dropout_key=rng,
                        update_state=False),
      x, mask, weights, new_state, output_grad=g, update_state=False,
      **common)
  ours = projected.run(
      functools.partial(kernels.pure_head, spec=spec, dropout_key=rng,
                        update_state=False),
      x, mask, weights, new_state, bias=bias, output_grad=g,
      update_state=False, **common)
  for name, a, b in [('out', ours[0], per_pair[0]),
                     ('x_grad', ours[2], per_pair[2])] + [
                         (f'w_grad[{i}]', a, b)
                         for i, (a, b) in enumerate(zip(ours[3], per_pair[3]))]:
    scale = float(jnp.max(jnp.abs(b)))
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL * scale,
                               err_msg=name)
  assert len(ours[3]) == len(weights)


def test_projected_rejects_a_bad_block_size():
  spec = kernels.Spec(n_heads=4, bias=False, n_parallel_heads=3, **SPEC)
  x, weights, state, _ = _inputs(2, 8, 5, 4, 3, 3, False)
  with pytest.raises(ValueError, match='n_parallel_heads'):
    projected.run(functools.partial(kernels.pure_head, spec=spec,
                                    dropout_key=jax.random.PRNGKey(0),
                                    update_state=True),
                  x, None, weights, state, n_heads=4, n_parallel_heads=3,
                  bias=False)
