"""lsh_jax.flax: decoding with a cache (decode=True, init_cache).

Expected values, per test:
  * The float64 NumPy oracle of Trax's decoding (`lsh_jax.oracle.
    predict_prefix` / `predict_step`), per example and head with the
    module's projection kernels (no biases: the oracle has none) and the
    rotations drawn from the module's per-(example, head) hash keys: every
    call's outputs within 1e-5 (prefix queries that saw only themselves:
    1e-2, docs/algorithm.md §5). (tests/test_trax_flax_decode.py compares
    with the Trax layers' decoding, biases included.)
  * The module's own full call in evaluation mode on the whole sequence,
    where decoding and full attention compute the same thing: the dense
    module whenever the cache holds the whole sequence (both are exact
    causal attention); the LSH module when besides one chunk spans the
    cache (chunk_len >= Lm, n_chunks_before=0): every round of the full call
    then sees every earlier token, and a decoded token's
    n_hashes * chunk_len >= Lm candidates are the whole cache. Otherwise the
    two differ by design: a decoded token hashes alone and attends to the
    positions sharing its buckets, not to its sorted chunk's neighbours.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import helpers
from lsh_jax.core import multihead
from lsh_jax.flax import LSHSelfAttention
from lsh_jax.flax import SelfAttention

B, F, N, H, HV = 2, 6, 2, 4, 3
SIZES = dict(qk_features=N * H, v_features=N * HV)

def _tokens(length, seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), (B, length, F))


def _decode(module, x, prefix_len):
  """The prefix in one call, then one token per call: float[B, T, out]."""
  step = nnx.jit(lambda m, tokens: m(tokens))
  outs = [step(module, x[:, :prefix_len])]
  outs += [step(module, x[:, t:t + 1]) for t in range(prefix_len,
                                                      x.shape[1])]
  return np.concatenate([np.asarray(o) for o in outs], axis=1)


@pytest.mark.parametrize('case', list(helpers.DECODE_CASES))
def test_lsh_decoding_equals_the_oracle(case):
  lsh, mem_len, drop_len, length, prefix_len = helpers.DECODE_CASES[case]
  module = LSHSelfAttention(N, F, **SIZES, **lsh, causal=True, use_bias=False,
                            decode=True, rngs=nnx.Rngs(params=0, default=3))
  module.init_cache((B, mem_len, F), drop_len=drop_len)
  x = _tokens(length)
  got = _decode(module, x, prefix_len)
  weights = (jnp.transpose(module.qk.kernel[...], (1, 0, 2)),
             jnp.transpose(module.value.kernel[...], (1, 0, 2)),
             module.out.kernel[...])
  hash_keys = jax.random.key_data(multihead.head_keys(
      module.hash_key[...], B, N)).reshape(B * N, 2)
  error, only_self_error = helpers.assert_close_to_oracle(
      got, helpers.oracle_decode(weights, hash_keys, x, prefix_len,
                                 mem_len=mem_len, drop_len=drop_len, **lsh))
  print(f'{case}: max |Flax decode - oracle| = {error:.2e} (queries that '
        f'saw only themselves: {only_self_error:.2e})')


@pytest.mark.parametrize('lsh', [False, True], ids=['dense', 'lsh'])
def test_decoding_equals_the_full_causal_call_where_they_coincide(lsh):
  """Module docstring: one chunk spanning the cache makes LSH exact."""
  length, prefix_len, mem_len = 12, 5, 16
  kwargs = dict(SIZES, causal=True, rngs=nnx.Rngs(params=1, default=2))
  if lsh:
    module = LSHSelfAttention(N, F, chunk_len=mem_len, n_chunks_before=0,
                              n_hashes=2, n_buckets=4, **kwargs)
  else:
    module = SelfAttention(N, F, **kwargs)
  module.eval()
  x = _tokens(length, seed=4)
  full = np.asarray(module(x))
  module.init_cache((B, mem_len, F))
  module.set_attributes(decode=True)
  got = _decode(module, x, prefix_len)
  # Every round sees the same candidates, so position 0 (itself only) has
  # none of docs/algorithm.md §5's round-weight rounding either.
  np.testing.assert_allclose(got, full, rtol=0, atol=1e-5)
  print(f'{"lsh" if lsh else "dense"}: max |decode - full call| = '
        f'{np.max(np.abs(got - full)):.2e}')


def test_the_cache_is_nnx_cache_state_and_unbatched_inputs_work():
  module = SelfAttention(N, F, **SIZES, causal=True, rngs=nnx.Rngs(0))
  module.init_cache((7, F))
  assert module.cache.settings.drop_len == 3  # Lm // 2 for the dense module
  shapes = jax.tree.map(jnp.shape, nnx.to_pure_dict(nnx.state(module,
                                                              nnx.Cache)))
  assert shapes == {'cache': {'index': (), 'qk': (1, 7, N, H),
                              'value': (1, 7, N, HV)}}
  x = _tokens(3)[0]
  assert module(x[:2], decode=True).shape == (2, F)
  assert module(x[2:], decode=True).shape == (1, F)
  assert int(module.cache.index[...]) == 3


def _lsh(**kwargs):
  return LSHSelfAttention(N, F, **dict(dict(SIZES, causal=True, chunk_len=4),
                                       **kwargs), rngs=nnx.Rngs(0))


@pytest.mark.parametrize('make,shape,match', [
    (lambda: _lsh(causal=False), (B, 8, F), 'needs causal=True'),
    (lambda: _lsh(n_chunks_after=1), (B, 8, F), 'needs n_chunks_after=0'),
    (lambda: _lsh(attend_across_buckets=False), (B, 8, F),
     'attend_across_buckets must be True'),
    (_lsh, (B, 8, F + 1), r'input_shape must be \(batch, cache length, 6\)'),
    (_lsh, (8,), 'input_shape must be'),
])
def test_init_cache_errors(make, shape, match):
  with pytest.raises(ValueError, match=match):
    make().init_cache(shape)


def test_decode_call_errors():
  module = _lsh()
  x = _tokens(2)
  with pytest.raises(ValueError, match='call module.init_cache'):
    module(x, decode=True)
  module.init_cache((B, 8, F))
  with pytest.raises(ValueError, match='decode=True takes no mask'):
    module(x, jnp.ones((B, 2), bool), decode=True)
  with pytest.raises(ValueError, match=r'x must have shape \[batch, length, '
                     r'features\] with batch 2'):
    module(x[0], decode=True)
  with pytest.raises(ValueError, match='drop_len must be >= 1, got 0'):
    module.init_cache((B, 8, F), drop_len=0)
  with pytest.raises(ValueError, match=r'drop_len must be <= 3 \(the cache '
                     r'length, input_shape\[-2\]\), got 4'):
    module.init_cache((B, 3, F), drop_len=4)
  module.init_cache((B, 3, F))  # the default drop_len, chunk_len 4, is 3
  assert module.cache.settings.drop_len == 3
