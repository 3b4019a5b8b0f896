"""lsh_jax.equinox.LSHSelfAttention against the Flax module.

Expected values: `lsh_jax.flax.LSHSelfAttention` (tests/test_flax_attention.py
checks it against `lsh_jax.lsh_self_attention` of its projections) on the
same weights, copied into the Equinox module's `eqx.nn.Linear` layout, and
the same hash key, one sequence at a time (Flax's [T, F] call): within
1e-6. Sizes differ from each other (B=3, T=20, F=10, N=2, H=4, Hv=3,
out 7) so a swapped axis cannot pass. (Without Equinox, importing
lsh_jax.equinox names the extra: tests/test_extras.py.)
"""
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

# The equinox tier (tests/conftest.py) guarantees Equinox; the comparison
# also needs Flax.
nnx = pytest.importorskip('flax.nnx')

from lsh_jax.equinox import LSHSelfAttention  # noqa: E402
from lsh_jax.flax import LSHSelfAttention as FlaxLSHSelfAttention  # noqa: E402

B, T, F, N = 3, 20, 10, 2
SETTINGS = dict(qk_features=8, v_features=6, out_features=7, n_hashes=2,
                n_buckets=4, chunk_len=4)
ATOL = 1e-6


def _pair(**kwargs):
  """(Flax module, Equinox module with its weights and hash key)."""
  flax_module = FlaxLSHSelfAttention(N, F, **SETTINGS, **kwargs,
                                     rngs=nnx.Rngs(0))
  module = LSHSelfAttention(N, F, **SETTINGS, **kwargs,
                            key=jax.random.PRNGKey(1))
  # eqx.nn.Linear's weight is [out, in]: Flax's [F, N, H] -> [N * H, F],
  # [N, Hv, out] -> [out, N * Hv].
  as_linear = lambda kernel: kernel.reshape(kernel.shape[0], -1).T
  out_linear = lambda kernel: kernel.reshape(-1, kernel.shape[-1]).T
  flat = lambda bias: bias.reshape(-1)
  leaves = lambda m: (m.qk_proj.weight, m.qk_proj.bias, m.value_proj.weight,
                      m.value_proj.bias, m.output_proj.weight,
                      m.output_proj.bias, m.hash_key)
  qk, value, out = flax_module.qk, flax_module.value, flax_module.out
  module = eqx.tree_at(leaves, module, (
      as_linear(qk.kernel[...]), flat(qk.bias[...]),
      as_linear(value.kernel[...]), flat(value.bias[...]),
      out_linear(out.kernel[...]), out.bias[...],
      flax_module.hash_key[...]))
  return flax_module, module


def _x(seed=2):
  return jax.random.normal(jax.random.PRNGKey(seed), (B, T, F))


@pytest.mark.parametrize('causal,masked', [(False, False), (True, True)])
def test_equals_the_flax_module_per_sequence(causal, masked):
  flax_module, module = _pair(causal=causal)
  x = _x()
  mask = (jnp.arange(T)[None] < jnp.array([[T], [T - 3], [T - 9]])
          if masked else jnp.ones((B, T), bool))
  want = np.stack([np.asarray(flax_module(x[b], mask[b], deterministic=True))
                   for b in range(B)])
  got = eqx.filter_jit(lambda m, x, mask: jax.vmap(m)(x, mask))(module, x,
                                                                 mask)
  np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
  print(f'causal={causal}, masked={masked}: max |Equinox - Flax| = '
        f'{np.max(np.abs(np.asarray(got) - want)):.2e}')


def test_a_key_rehashes_as_the_flax_training_call():
  """key= draws the hash key (its first split), as Flax's rngs= does."""
  flax_module, module = _pair(causal=True)
  x, key = _x()[0], jax.random.PRNGKey(9)
  got = module(x, key=key)
  want = flax_module(x, rngs=jax.random.split(key, 3)[0],
                     deterministic=False)
  np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
  assert np.max(np.abs(np.asarray(got) - np.asarray(module(x)))) > 1e-3


def test_training_step_vmaps_over_keys_and_grad_leaves_the_hash_key():
  """Equinox's batch idiom: one key per example, jax.vmap over both."""
  _, module = _pair(causal=True)
  x, keys = _x(), jax.random.split(jax.random.PRNGKey(4), B)
  loss = lambda m: jnp.sum(jax.vmap(lambda xb, k: m(xb, key=k))(x, keys)**2)
  grads = eqx.filter_grad(loss)(module)
  assert grads.hash_key is None  # not an inexact array: not a parameter
  assert float(jnp.abs(grads.qk_proj.weight).sum()) > 0


def test_dropout_needs_a_key_and_inference_turns_it_off():
  _, module = _pair(causal=True, attention_dropout=0.3, dropout_rate=0.2)
  x = _x()[0]
  with pytest.raises(ValueError, match=r'dropout is on .* pass key='):
    module(x)
  np.testing.assert_array_equal(module(x, inference=True),
                                eqx.nn.inference_mode(module)(x))
  key = jax.random.PRNGKey(3)
  assert not np.allclose(module(x, key=key), module(x, key=key,
                                                    inference=True))


@pytest.mark.parametrize('call,match', [
    (lambda m: m(jnp.ones((2, T, F))), r'x must have shape \[length, 10\] '
     r'\(in_features\): one sequence, jax.vmap for batches; got '
     r'\(2, 20, 10\)'),
    (lambda m: m(jnp.ones((T, F + 1))), r'got \(20, 11\)'),
])
def test_bad_inputs_raise_clear_errors(call, match):
  _, module = _pair()
  with pytest.raises(ValueError, match=match):
    call(module)


def test_bad_arguments_raise_clear_errors():
  with pytest.raises(ValueError, match=r'qk_features \(9\) must be divisible '
                     r'by num_heads \(2\)'):
    LSHSelfAttention(2, F, qk_features=9, key=jax.random.PRNGKey(0))
