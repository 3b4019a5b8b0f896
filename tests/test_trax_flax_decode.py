"""The Flax modules' decode=True against the project's Trax decoding.

Expected values: `lsh_jax.trax.LSHSelfAttention(mode='predict')` and the
dense `lsh_jax.trax.SelfAttention(mode='predict')` (shared QK against the
Flax `SelfAttention`, separate keys and chunks against `LocalSelfAttention`;
tests/test_trax_predict.py checks the LSH layer against Trax 1.4.1's own
decoding and the NumPy oracle), given the Flax module's weights (with
biases: the Trax layer's memory of zero inputs projects to them) and, per
(example, head), the hash keys the Flax module draws
(`lsh_jax.core.head_keys` of its `hash_key`). Both see the same tokens:
a prefix in one call, then one token per call; every call's outputs within
1e-5, and the cache's bucket ids equal to the Trax state's.

Needs Trax and Flax (tests/conftest.py collects test_trax_flax_*.py only
when both are installed).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import helpers
from lsh_jax.core import multihead
from lsh_jax.flax import LocalSelfAttention
from lsh_jax.flax import LSHSelfAttention
from lsh_jax.flax import SelfAttention
from trax_testing import decode
from trax_testing import trax_env  # noqa: F401  (fixture)

OUT_ATOL = helpers.DECODE_ATOL
B, F, N, H, HV = 2, 6, 2, 4, 3

# name: (kind, its settings, cache length Lm, drop_len, total length,
# prefix length)
CASES = {f'lsh_{name}': ('lsh',) + case
         for name, case in helpers.DECODE_CASES.items()}
# Dense (shared QK), a long prefix (> Lm), then steps rolling the cache over.
CASES['dense_long_prefix'] = ('dense', {}, 12, 5, 22, 15)
# LocalSelfAttention (separate keys): the long prefix attended in chunks.
CASES['local_chunked_long_prefix'] = (
    'local', dict(chunk_len=4, n_chunks_before=1), 12, 4, 22, 15)

_FLAX = dict(lsh=LSHSelfAttention, dense=SelfAttention,
             local=LocalSelfAttention)


def _projections(module):
  """The module's input projections, in Trax's order (q, [k,] v)."""
  keys = getattr(module, 'key', None)
  return ((module.qk, module.value) if keys is None else
          (module.qk, keys, module.value))


def _flax_module(kind, settings):
  module = _FLAX[kind](N, F, qk_features=N * H, v_features=N * HV,
                       causal=True, rngs=nnx.Rngs(params=0, default=1),
                       **settings)
  # Random biases (their defaults are zeros): unwritten cache positions hold
  # the projections of zero inputs, which must match Trax's zero inputs.
  projections = _projections(module)
  keys = jax.random.split(jax.random.PRNGKey(5), len(projections))
  for key, projection in zip(keys, projections):
    projection.bias[...] = jax.random.normal(key, projection.bias.shape)
  return module


def _trax_layer(env, kind, settings, mem_len, drop_len):
  common = dict(n_heads=N, d_qk=H, d_v=HV, causal=True, bias=True,
                mode='predict', predict_mem_len=mem_len,
                predict_drop_len=drop_len)
  if kind == 'lsh':
    layer = env.ours.LSHSelfAttention(
        **dict(settings, n_buckets=list(settings['n_buckets']) if isinstance(
            settings['n_buckets'], tuple) else settings['n_buckets']),
        **common)
  else:
    layer = env.ours.SelfAttention(share_qk=kind == 'dense', **settings,
                                   **common)
  layer.init(env.shapes.ShapeDtype((B, 1, F), jnp.float32),
             rng=env.fastmath.random.get_prng(1))
  return layer


def _give_trax_the_flax_weights(layer, module):
  """Flax [F, N, H] kernels -> Trax's per-head [N, F, H]; the output bias
  (Trax has none) is set to zero in the Flax module instead."""
  projections = _projections(module)
  module.out.bias[...] = jnp.zeros(module.out.bias.shape)
  layer.weights = (
      tuple(jnp.transpose(p.kernel[...], (1, 0, 2)) for p in projections) +
      (module.out.kernel[...],) + tuple(p.bias[...] for p in projections))


@pytest.mark.parametrize('case', list(CASES))
def test_every_decoding_step_equals_trax(trax_env, case):
  kind, settings, mem_len, drop_len, length, prefix_len = CASES[case]
  module = _flax_module(kind, settings)
  layer = _trax_layer(trax_env, kind, settings, mem_len, drop_len)
  _give_trax_the_flax_weights(layer, module)
  lsh = kind == 'lsh'
  if lsh:  # the Flax module's per-(example, head) hash keys
    keys = multihead.head_keys(module.hash_key[...], B, N)
    mem_end, mem, (buckets, buckets_idx, _) = layer.state
    layer.state = (mem_end, mem, (buckets, buckets_idx, jax.random.key_data(
        keys).reshape(B * N, 2)))
  x = jax.random.normal(jax.random.PRNGKey(0), (B, length, F))
  expected, states = decode(layer, x, prefix_len)

  module.init_cache((B, mem_len, F), drop_len=drop_len)
  step = nnx.jit(lambda m, tokens: m(tokens, decode=True))
  calls = [(0, prefix_len)] + [(t, t + 1) for t in range(prefix_len, length)]
  errors = []
  for (start, stop), want, state in zip(calls, expected, states):
    got = step(module, x[:, start:stop])
    np.testing.assert_allclose(got, want, rtol=0, atol=OUT_ATOL,
                               err_msg=f'call {start}:{stop}')
    errors.append(float(np.max(np.abs(np.asarray(got) - want))))
    assert int(module.cache.index[...]) == int(state[0])
    if lsh:  # Trax's flat [P, R * Lm] vs the cache's [B, N, R, Lm]
      np.testing.assert_array_equal(
          np.asarray(module.cache.buckets[...]).reshape(B * N, -1),
          state[2][0])
  print(f'{case}: max |Flax decode - Trax predict| = {max(errors):.2e} over '
        f'{len(calls)} calls')
